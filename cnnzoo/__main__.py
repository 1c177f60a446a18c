"""``python -m cnnzoo``: the same as the ``cnnzoo`` command (torchrun starts processes this way)."""

from .cli import main

main()
