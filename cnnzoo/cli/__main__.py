"""``python -m cnnzoo.cli``: the same as the ``cnnzoo`` command."""

from . import main

main()
