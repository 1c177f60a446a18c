"""Deployment: a checkpoint exported to ONNX, TorchScript or TFLite and checked
(:mod:`~cnnzoo.deploy.export`), an ONNX export quantized to INT8 and compared with FP32
(:mod:`~cnnzoo.deploy.quantize`; whether it is measurably worse: :mod:`~cnnzoo.deploy.paired`), every
format of a checkpoint scored and timed in one table (:mod:`~cnnzoo.deploy.benchmark`), and a model
served over HTTP with a page to try it (:mod:`~cnnzoo.deploy.serve`, torch-free with an ONNX, TFLite
or OpenVINO model).

Floor 8: may import floors 0-7 (in practice inference, data.preprocess, checkpoint, runs);
only the CLI is above it. This ``__init__`` holds the defaults the CLI shows (torch-free).
"""

DEFAULT_OPSET = 17  # ONNX opset of an export
PARITY_TOLERANCE = 1e-4  # largest probability difference from the checkpoint an export may show
DEFAULT_MAX_BYTES = 10 * 2**20  # largest request body serve accepts
DEFAULT_CALIBRATION = 256  # training images that calibrate an INT8 export
DEFAULT_MAX_DROP = 1.0  # validation accuracy points an INT8 export may lose against FP32
