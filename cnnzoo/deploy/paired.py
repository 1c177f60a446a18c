"""Whether one model is measurably worse than another on the same images: McNemar's exact test on
the images whose answer changed (the discordant pairs), the rule behind ``export --int8``'s
``--max-drop`` check for every quantized format.

Only the images that one model answers right and the other wrong carry information about which is
better; the images both answer alike do not. If the two models were equally good, each changed
image would be as likely to go one way as the other, so the number that went wrong among the
``m`` that changed follows Binomial(m, 1/2). The one-sided p-value is the chance of that many or
more going wrong by luck alone. Exact integer arithmetic (``math.comb``): no SciPy for one sum.

Imports nothing from cnnzoo; the standard library only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

SIGNIFICANCE = 0.05  # one-sided: a loss this unlikely under "as good" is taken as real


def worse_p_value(now_wrong: int, now_right: int) -> float:
    """McNemar's exact one-sided p-value: P(X >= now_wrong) for X ~ Binomial(now_wrong + now_right, 1/2),
    the chance that a model as good as the reference loses at least ``now_wrong`` of the changed
    images. 1.0 when nothing changed."""
    if now_wrong < 0 or now_right < 0:
        raise ValueError(f"counts must be >= 0, not {now_wrong} and {now_right}")
    changed = now_wrong + now_right
    tail = sum(math.comb(changed, k) for k in range(now_wrong, changed + 1))
    return float(Fraction(tail, 2**changed))


@dataclass(frozen=True, kw_only=True)
class Changes:
    """Two models on the same ``images``: ``now_wrong`` the reference answers right and the
    candidate wrong, ``now_right`` the other way round."""

    images: int
    now_wrong: int
    now_right: int

    @property
    def p_value(self) -> float:
        return worse_p_value(self.now_wrong, self.now_right)

    @property
    def measurably_worse(self) -> bool:
        return self.p_value < SIGNIFICANCE

    def describe(self) -> str:
        changed = self.now_wrong + self.now_right
        return (
            f"{changed} of {self.images} images changed: {self.now_wrong} now wrong, {self.now_right} now right "
            f"(McNemar's exact p = {self.p_value:.3g})"
        )
