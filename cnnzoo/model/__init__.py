"""The model: a YAML layer list checked and built into a ``torch.nn.Sequential``.

* :mod:`~cnnzoo.model.layers`: the tracer and builder (shapes walked on the meta device, every
  refusal in words, the resolved layer records a checkpoint keeps);
* :mod:`~cnnzoo.model.blocks`: layers with layer lists of their own (``residual``, ``branches``,
  ``squeeze_excite``), traced by the same tracer: blocks <-> layers is the one documented import
  cycle (a block imports the tracer when it is built);
* :mod:`~cnnzoo.model.backbones`: pretrained feature extractors (torchvision, timm) as one layer;
* :mod:`~cnnzoo.model.summary`: ``cnnzoo summary``'s table.

Floor 4: may import floors 0-3 (errors, console, files; config; checkpoint, runs; runtime).
``summary`` alone sits on floor 5, beside data: a config's summary needs the data's class count
and input size when the config does not state them. This ``__init__`` imports nothing.
"""
