"""Scoring a model: the metrics training and ``evaluate`` share (:mod:`~cnnzoo.evaluation.metrics`),
and ``cnnzoo evaluate`` (:mod:`~cnnzoo.evaluation.evaluate`), with its report.html: where the model
fails, computed from plain arrays (:mod:`~cnnzoo.evaluation.analysis`: calibration, confused pairs,
top losses, precision-recall curves) and drawn (:mod:`~cnnzoo.evaluation.page`); both torch-free.

Floor 6: may import floors 0-5 (data, inference, model, runtime and below); training imports it.
"""
