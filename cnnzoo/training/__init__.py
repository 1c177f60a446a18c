"""Training: from a config to a run folder.

Read it from :func:`cnnzoo.training.run.train` down:

* :mod:`~cnnzoo.training.run`: :func:`~cnnzoo.training.run.prepare` resolves the config, builds
  the parts and opens the run folder into a ``Job``; :func:`~cnnzoo.training.run.fit` runs the
  epochs and hands each one to the callbacks; resuming from a ``last.pt``.
* :mod:`~cnnzoo.training.setup`: what training and lr-find start from (data, model on its
  device, loss, optimizer), built from one config.
* :mod:`~cnnzoo.training.facts`: the run's resolved facts (classes, input shape, name), kept
  apart from the config, and the config as the run folder saves it.
* :mod:`~cnnzoo.training.recipe`: optimizer, learning-rate schedule, class weights, loss.
* :mod:`~cnnzoo.training.mixing`: MixUp and CutMix with their soft targets.
* :mod:`~cnnzoo.training.ema`: the moving average of the weights that validation and best.pt use.
* :mod:`~cnnzoo.training.loop`: one optimizer step, one epoch, validation, the best epoch.
* :mod:`~cnnzoo.training.events`: what callbacks and loggers are told (the epoch's record).
* :mod:`~cnnzoo.training.callbacks`: what happens when an epoch ends (metrics.csv,
  checkpoints, history.png, the console line), then the loggers ``train.loggers`` names, looked
  up in :mod:`~cnnzoo.training.loggers`' table: :mod:`~cnnzoo.training.tensorboard` and
  :mod:`~cnnzoo.training.tracking` (MLflow).
* :mod:`~cnnzoo.training.transfer`: the two training stages of transfer learning, and
  :mod:`~cnnzoo.training.feature_cache`: the frozen-feature cache they read.
* :mod:`~cnnzoo.training.lr_find`: ``lr-find``, the learning-rate range test.
* :mod:`~cnnzoo.training.sweep`: ``sweep``, grid or random sweeps and their comparison.
* :mod:`~cnnzoo.training.crossval`: ``train --folds K``, k-fold cross-validation (a run per fold,
  cv.json, oof.csv, the final model on all the images).
* :mod:`~cnnzoo.training.defaults`: what ``train --data X`` trains with no config, and ``--model``.

Under torchrun the same code runs in every process; :mod:`cnnzoo.runtime.distributed` holds
what differs (sharded data, reduced metrics, rank 0 alone writing).

Reproducibility: every epoch reseeds torch/NumPy/Python from ``(seed, epoch)`` and the data
order and augmentation depend only on ``(seed, epoch, batch)``, so on CPU the same config gives
the same metrics, and a resumed run continues exactly where the uninterrupted one would have been.

Floor 7: may import floors 0-6; only deploy, explanation and the CLI are above it.
"""
