"""Scoring a model: the metrics training and ``evaluate`` share (:mod:`~cnnzoo.evaluation.metrics`),
and ``cnnzoo evaluate`` (:mod:`~cnnzoo.evaluation.evaluate`).

Floor 6: may import floors 0-5 (data, inference, model, runtime and below); training imports it.
"""
