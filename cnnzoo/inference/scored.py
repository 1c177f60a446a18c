"""A network that answers its logits and its "unknown" score: the kNN score computed inside the graph.

The ``knn`` score (:mod:`cnnzoo.inference.unknown`) needs the image's penultimate features (the
input of the last ``Linear``) and a bank of training images' features. :class:`ScoredNetwork`
holds the bank as a buffer and answers ``(logits, score)``, so a checkpoint, an ONNX graph (a
second output, ``unknown_score``), a TorchScript file and a TFLite model all carry the same score,
and the torch-free readers only read it. The logit scores need none of this.

Floor 5 (inference, with torch): imports torch and :mod:`cnnzoo.inference.unknown`'s output name.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .unknown import SCORE_OUTPUT


def head_split(network: nn.Sequential) -> tuple[nn.Module, nn.Linear] | None:
    """(everything before the head, the head) when the network ends in a ``Linear`` (the features
    are its input); None otherwise (a feature score cannot be fitted there)."""
    if not isinstance(network, nn.Sequential) or len(network) < 2 or not isinstance(network[-1], nn.Linear):
        return None
    return network[:-1], network[-1]


__all__ = ["SCORE_OUTPUT", "ScoredNetwork", "head_split"]


class ScoredNetwork(nn.Module):
    """``network`` -> ``(logits [B, K], score [B])``: one minus the cosine similarity of the
    features to their ``k``-th nearest row of ``bank`` (rows L2-normalised, [N, D])."""

    def __init__(self, network: nn.Sequential, bank: torch.Tensor, k: int):
        super().__init__()
        split = head_split(network)
        if split is None:
            raise ValueError("the knn score needs a network that ends in a Linear head")
        self.body, self.head = split
        self.k = int(min(k, len(bank)))
        self.register_buffer("bank", bank.float().contiguous())

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.body(x).flatten(1)
        logits = self.head(features)
        similarity = F.normalize(features.float(), dim=1) @ self.bank.T
        kth = similarity.topk(self.k, dim=1).values[:, -1]
        return logits, 1.0 - kth
