"""``cnnzoo explain``: what a trained network does to one image, layer by layer, in one HTML file.

In the spirit of CNN Explainer, but for the user's own model: the input as the network
sees it, then every layer in order with its summary row (type, arguments, output shape
and, for conv and pool layers, the ``(W − K + 2P)/S + 1`` arithmetic) and its output:
feature maps as a grid (the most active first, capped), the flattened vector and dense
activations as strips, the class probabilities as bars. Conv → ReLU → pool runs sit side
by side. Also the first conv layer's learned filters, and a Grad-CAM heat map (which
parts of the image raised the score of the predicted class, or of ``--target``).

* :mod:`~cnnzoo.explanation.report`: running the network layer by layer and every picture;
* :mod:`~cnnzoo.explanation.page`: the HTML page, and :func:`~cnnzoo.explanation.page.explain`,
  which writes it (``cnnzoo.explain``).

The package is not called ``explain``: ``cnnzoo.explain`` is the public function, and a
submodule of that name would replace it on the package once imported.

Floor 8: may import floors 0-7 (in practice inference, model, checkpoint, runs).
"""
