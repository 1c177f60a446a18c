"""Deployment: a checkpoint exported to ONNX or TorchScript and checked (:mod:`~cnnzoo.deploy.export`),
and a model served over HTTP with a page to try it (:mod:`~cnnzoo.deploy.serve`, torch-free with an
ONNX model).

Floor 8: may import floors 0-7 (in practice inference, data.preprocess, checkpoint, runs);
only the CLI is above it.
"""
