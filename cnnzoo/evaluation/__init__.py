"""Scoring a model: ``cnnzoo evaluate`` (:mod:`~cnnzoo.evaluation.evaluate`, torch-free at import)
for a checkpoint (:mod:`~cnnzoo.evaluation.checkpoints`, torch, run as training validated) or an
ONNX / TFLite export (its own predict path, no torch); the images scored
(:mod:`~cnnzoo.evaluation.splits`); the scores every format and training share, from plain arrays
(:mod:`~cnnzoo.evaluation.scores`, NumPy); training's torch side of them
(:mod:`~cnnzoo.evaluation.metrics`); the multi-label scores (mAP, F1 at thresholds, tuned
thresholds; :mod:`~cnnzoo.evaluation.multilabel`, NumPy);
and report.html: where the model fails, computed from plain arrays (:mod:`~cnnzoo.evaluation.analysis`:
calibration, confused pairs, top losses, precision-recall curves) and drawn
(:mod:`~cnnzoo.evaluation.page`); both torch-free.

Floor 6: may import floors 0-5 (data, inference, model, runtime and below); training imports it.
"""
