"""The ``cnnzoo`` command line: a thin Typer layer over the Python API.

:mod:`~cnnzoo.cli.app` holds the Typer app, the error contract (a
:class:`cnnzoo.errors.UserError` becomes one line on stderr and exit code 2; ``--debug`` shows
the traceback instead) and :func:`main`; one module per group of commands registers them on the
app. They are imported in the order ``cnnzoo --help`` lists the commands.

Floor 9: the CLI may import anything; nothing imports it. Importing it does not import torch
(``cnnzoo --help`` answers at once, and a bad config is refused before torch loads): the
commands import the parts that need torch when they run.
"""

# each module registers its commands on the app, in the order --help lists them
from . import train, summary, predict, deploy, explain, tuning, data  # noqa: F401  # isort: skip
from .app import app, main

__all__ = ["app", "main"]
