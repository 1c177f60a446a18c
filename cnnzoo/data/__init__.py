"""Data: where images and classes come from, what the model sees, the decoded-pixel cache, batches.

In the order training meets them:

* :mod:`~cnnzoo.data.sources` (``data.source``): one module and ``Source`` class per kind, and
  the registry that names them: a folder in ImageFolder layout (``train/`` + ``validation/`` or
  ``val/``, optional ``test/``; or one folder of class folders split by ``data.val_fraction``),
  the built-in ``shapes`` set (:mod:`~cnnzoo.data.shapes`), torchvision's MNIST, Fashion-MNIST
  and CIFAR-10, a manifest, a Hugging Face dataset or shards; each split becomes a ``Samples``
  list, and the whole section a ``DataSpec``.
* :mod:`~cnnzoo.data.manifest` (torch-free): a CSV, TSV, JSON Lines or Parquet table naming each
  image and its label(s) (``data.source: manifest``, detected from a ``data.root`` file), read
  into rows that :mod:`~cnnzoo.data.sources` turns into splits.
* :mod:`~cnnzoo.data.hf` (``data.source: hf``): a local Hugging Face dataset (``save_to_disk``,
  Parquet files, ``imagefolder``) through the ``datasets`` library.
* :mod:`~cnnzoo.data.shard_files` and :mod:`~cnnzoo.data.shards` (``data.source: webdataset``):
  WebDataset tar shards, written from any source and streamed (decoded in the loader workers
  each epoch, never cached), with the same number of steps on every process;
  :mod:`~cnnzoo.data.shard_output` puts the folder ``cnnzoo data shards`` writes in place whole.
* :mod:`~cnnzoo.data.check`: ``cnnzoo data check``'s report (counts, missing, unreadable and
  duplicate files, sizes, imbalance).
* :mod:`~cnnzoo.data.preprocess` (torch-free): decoding, orientation, mode and resizing, the one
  definition of "what the model sees", shared by training, evaluation and every model format.
* :mod:`~cnnzoo.data.cache` (``data.cache``): every image decoded and resized once into a uint8
  ``[N, C, H, W]`` array in RAM or in a checked, memory-mapped ``.npy`` file (the feature cache
  of :mod:`cnnzoo.training.feature_cache` is built the same way).
* :mod:`~cnnzoo.data.augment`: per-image ``torchvision.transforms.v2`` augmentation.
* :mod:`~cnnzoo.data.batch_augment` (``data.augment.where``): the same augmentation on a whole
  cached uint8 batch on the training device (one ``grid_sample`` for the geometry).
* :mod:`~cnnzoo.data.loaders`: datasets that return whole uint8 batches, and batch orders that
  depend only on (seed, epoch, batch), so a run is reproducible whatever the worker count.

Floor 5: data may import floors 0-4 (errors, console, files; config; checkpoint, runs;
runtime; model); a backbone's preprocessing comes from the caller (:mod:`cnnzoo.training.inputs`)
as plain numbers, so the data never reads ``model.layers``. :mod:`~cnnzoo.data.preprocess` is
torch-free and imports floors 0-2 only; this ``__init__`` imports nothing, so importing the preprocessing
does not import torch.
"""
