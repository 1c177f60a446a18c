"""Where and how torch runs: the device and precision (:mod:`~cnnzoo.runtime.device`), several
processes (:mod:`~cnnzoo.runtime.distributed`), and whether the installed torch and torchvision
fit together (:mod:`~cnnzoo.runtime.versions`, torch-free).

Floor 3: imports floors 0-2 only (errors, console, files; config, plots; checkpoint, runs).
"""
