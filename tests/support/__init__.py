"""What the tests share, as plain functions (the fixtures are in tests/conftest.py):

* :mod:`support.images`: learnable pictures, class folders, ImageFolder trees, torchvision's raw files;
* :mod:`support.runs`: the tiny config and network, real training runs, what a run folder holds;
* :mod:`support.cli`: the ``cnnzoo`` command in a subprocess, and its one-error-line contract;
* :mod:`support.shared`: data beside the project (``../shared``), skipped cleanly where it is absent;
* :mod:`support.disk`: a real full disk (a private tmpfs);
* :mod:`support.browser`: headless Chromium (Selenium) for the pages cnnzoo serves or writes.

Nothing here mocks cnnzoo: these write real files in the formats cnnzoo reads, run the real
command, and read back the files a training run writes. The real ``cnnzoo serve`` runner is
``scripts/servelib.py``, which the benchmarks use too (pytest puts ``scripts/`` on the path).
"""
