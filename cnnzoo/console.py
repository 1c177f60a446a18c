"""The console: the one place cnnzoo prints while it works.

Log lines go to stdout, warnings and progress bars to stderr. ``--quiet`` silences log
lines and bars but never warnings; in a multi-process (DDP) run only rank 0 prints,
so N processes do not print every line N times. Log lines go through ``tqdm.write``
so that they never tear a progress bar.

Every line it prints goes through :func:`~cnnzoo.errors.terminal_safe`: a name cnnzoo echoes (a file, a class)
may hold control characters, and an escape sequence that reached the terminal would retitle the
window, move the cursor or hide text. The CLI's error line goes through it too.

There is one console per process (:data:`console`); training scopes its quiet setting
with :meth:`Console.scoped`, and :mod:`cnnzoo.runtime.distributed` tells it the rank.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

from tqdm import tqdm

from .errors import terminal_safe


class Console:
    def __init__(self) -> None:
        self.quiet = False
        self.rank = 0
        self.debug = False  # the CLI's --debug: libraries' own log lines and bars stay on too

    @property
    def speaks(self) -> bool:
        """Whether log lines and bars show (warnings show unless this is not rank 0)."""
        return not self.quiet and self.rank == 0

    def log(self, message: str) -> None:
        if self.speaks:
            tqdm.write(terminal_safe(message), file=sys.stdout)
            sys.stdout.flush()

    def warn(self, message: str) -> None:
        if self.rank == 0:
            print(f"warning: {terminal_safe(message)}", file=sys.stderr, flush=True)

    def bar(self, total: int, desc: str, unit: str = "batch"):
        """A tqdm bar that vanishes when done; disabled when quiet, off rank 0, or not on a terminal."""
        return tqdm(
            total=total,
            desc=desc,
            unit=unit,
            leave=False,
            file=sys.stderr,
            disable=True if not self.speaks else None,
            dynamic_ncols=True,
        )

    @contextmanager
    def scoped(self, quiet: bool) -> Iterator[Console]:
        """``quiet`` for the length of a ``with`` block (a training run), then as before."""
        saved = self.quiet
        self.quiet = quiet or saved
        try:
            yield self
        finally:
            self.quiet = saved


console = Console()
log, warn = console.log, console.warn
