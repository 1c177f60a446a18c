"""The ``cnnzoo`` command line: a thin Typer layer over the Python API.

:mod:`~cnnzoo.cli.app` holds the Typer app, the error contract (a
:class:`cnnzoo.errors.UserError` becomes one line on stderr and exit code 2; ``--debug`` shows
the traceback instead) and :func:`main`; one module per group of commands registers them on the
app. They are imported in the order ``cnnzoo --help`` lists the commands.

A command parses its arguments, calls the Python API and prints what it answers; what a command
does beyond that (reading files, defaults, options applied to a model) belongs to the API, so
that Python users can do it too (``cnnzoo predict --tta --data test.csv`` is
``cnnzoo.load(path).predict_manifest("test.csv", tta=True)``).

Floor 9: the CLI may import anything; nothing imports it.

Why every command imports its parts inside the function (the one reason that the
``# lazy: see cnnzoo.cli`` comments in this package point to): importing the CLI must not import
torch, so ``cnnzoo --help`` answers at once and a bad config or option is refused before torch
loads (seconds); a command loads the parts it needs (torch, the engine) when it runs.
"""

# each module registers its commands on the app, in the order --help lists them
from . import train, summary, predict, deploy, explain, tuning, data, runs  # noqa: F401  # isort: skip
from .app import app, main

__all__ = ["app", "main"]
