"""``data issues``: rank the likely problems of a labelled data set from a backbone's features.

Four kinds, each row of ``issues.csv`` one image (:data:`COLUMNS`):

- ``label``: a label that looks wrong. K heads (multinomial logistic regression, scikit-learn)
  are fitted on the features of K-1 folds (:func:`cnnzoo.data.folds.assign_folds`, the folds
  ``train --folds`` uses) and predict the held-out fold, so every image gets probabilities from
  a head that never saw its label. Each head learns from the image and its horizontal flip, and
  predicts the mean of the two. cleanlab's confident learning
  (:func:`cleanlab.filter.find_label_issues`) estimates how many labels of each class are wrong
  and flags that many with the lowest self-confidence (the probability of the given label),
  ranked by it (score: 1 - self-confidence); the suggested label is the head's most probable class.
- ``duplicate``: two images whose features point the same way (cosine similarity at least
  :data:`DUPLICATE_SIMILARITY`): a resized, re-encoded or slightly cropped copy, not only the
  byte-identical files ``data check`` finds. The row names the second image; its twin is in
  :attr:`Issue.other` and on the page; suggested_label is the twin's label.
- ``leak``: a duplicate pair whose images sit in two splits (the validation score is then
  measured on images training saw).
- ``outlier``: an image far from all others: its mean cosine distance to its
  :data:`NEIGHBOURS` nearest images is past the upper far-out fence (Q3 + 3 IQR) of all the
  images' distances; score: that distance.

Rows are ordered by kind (label, leak, duplicate, outlier), each kind by score, highest first.

The ranking reads NumPy arrays only (features and labels), so the tests plant issues in small
arrays; :func:`data_issues` is the whole command (data, model, features, ranking, files). On
the training floor with :mod:`.issue_features`; cleanlab (``cnnzoo[cleanlab]``) and scikit-learn
(its dependency) are imported when the labels are ranked.
"""

from __future__ import annotations

import csv
import io
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..config import load_config
from ..data.folds import assign_folds, check_folds
from ..errors import ConfigError, UserError
from ..files import write_text

if TYPE_CHECKING:
    from .issue_features import PooledImages

KINDS = ("label", "leak", "duplicate", "outlier")  # the order of the rows
COLUMNS = ("image", "kind", "given_label", "suggested_label", "score")
DEFAULT_FOLDS = 5
DUPLICATE_SIMILARITY = 0.97  # cosine of the pooled features: a resized JPEG copy scores ~0.99
NEIGHBOURS = 5  # outlier: mean distance to this many nearest images
FENCE = 3.0  # outlier: past Q3 + FENCE * IQR of the nearest-neighbour distances
# the heads' L2 penalty per training row (scikit-learn's C = 1 / (HEAD_PENALTY * rows), so that the
# penalty weighs the same against the data at any size): C = 0.001 on clothing-small's 5,454 rows
# (4 folds of 3,409 images, each with its flip), the best of 0.0003 to 1 measured (docs/data-issues.md)
HEAD_PENALTY = 0.18
CLEANLAB_MISSING = "data issues ranks labels with cleanlab, which is not installed: pip install 'cnnzoo[cleanlab]'"


@dataclass
class Issue:
    """One row of issues.csv, plus what the page shows beside it."""

    image: str
    kind: str
    given_label: str
    suggested_label: str
    score: float
    split: str = ""
    row: int = -1  # the image's position in the pooled data
    other: int | None = None  # a duplicate's or leak's twin (position in the pooled data)
    other_image: str = ""

    def csv_row(self) -> list[str]:
        return [self.image, self.kind, self.given_label, self.suggested_label, f"{self.score:.4f}"]


@dataclass
class IssuesReport:
    """What ``data issues`` found and where it wrote it."""

    issues: list[Issue]
    counts: dict[str, int]
    images: int
    folds: int
    backbone: str
    out: Path | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    probabilities: np.ndarray | None = None  # out-of-fold, [N, classes]


def require_cleanlab() -> Any:
    """cleanlab's filter module, or the one line that says how to install it."""
    try:
        from cleanlab import filter as cleanlab_filter  # lazy: the cleanlab extra, optional
    except ImportError:
        raise ConfigError(CLEANLAB_MISSING) from None
    return cleanlab_filter


def _standardised(train: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    mean, std = train.mean(0), train.std(0) + 1e-6
    return [(a - mean) / std for a in (train, *others)]


def out_of_fold_probabilities(
    features: np.ndarray, labels: np.ndarray, *, folds: np.ndarray, classes: int
) -> np.ndarray:
    """Each image's class probabilities from a logistic head fitted on the other folds' images
    (every version of each: the image and its flip), averaged over the image's versions."""
    from sklearn.linear_model import LogisticRegression  # lazy: cleanlab's dependency, the extra's

    probs = np.zeros((len(labels), classes))
    versions = features.shape[1]
    for fold in np.unique(folds):
        fit, held = folds != fold, folds == fold
        x = features[fit].reshape(-1, features.shape[2])
        y = np.repeat(labels[fit], versions)
        x, held_x = _standardised(x, features[held].reshape(-1, features.shape[2]))
        head = LogisticRegression(C=1.0 / (HEAD_PENALTY * len(x)), max_iter=1000).fit(x, y)
        found = np.zeros((len(held_x), classes))
        found[:, head.classes_] = head.predict_proba(held_x)
        probs[held] = found.reshape(-1, versions, classes).mean(1)
    return probs


def label_issues(probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(positions cleanlab flags, ranked most likely wrong first; their scores, 1 - label quality)."""
    cleanlab_filter = require_cleanlab()
    from cleanlab.rank import get_label_quality_scores  # lazy: the cleanlab extra

    quality = get_label_quality_scores(labels, probs, method="self_confidence")
    # cleanlab estimates how many labels of each class are wrong (the confident joint) and flags
    # that many of the class's images with the lowest self-confidence: on clothing-small's flipped
    # copy this kept more of the flips among the first N rows than its default, prune_by_noise_rate
    flagged = cleanlab_filter.find_label_issues(
        labels, probs, filter_by="low_self_confidence", return_indices_ranked_by="self_confidence"
    )
    return np.asarray(flagged, dtype=np.int64), 1.0 - quality[flagged]


def _unit(features: np.ndarray) -> np.ndarray:
    """Each image's direction from the data set's mean feature (the image and its flip averaged):
    centred, since what all images share (a backbone's features are all positive after a ReLU)
    would make every pair look alike."""
    mean = features.mean(1)
    mean = mean - mean.mean(0)
    return mean / (np.linalg.norm(mean, axis=1, keepdims=True) + 1e-12)


def neighbours(features: np.ndarray, *, similarity: float, k: int = NEIGHBOURS, chunk: int = 1024):
    """(pairs (i, j, cosine) with i < j and cosine >= ``similarity``; each image's mean cosine
    distance to its ``k`` nearest others), in chunks so memory stays chunk x N."""
    unit = _unit(features).astype(np.float32)
    n = len(unit)
    k = max(1, min(k, n - 1))
    pairs, knn = [], np.zeros(n)
    for begin in range(0, n, chunk):
        sims = unit[begin : begin + chunk] @ unit.T
        rows = np.arange(begin, begin + len(sims))
        sims[np.arange(len(sims)), rows] = -np.inf  # not its own neighbour
        nearest = -np.partition(-sims, k - 1, axis=1)[:, :k] if n > 1 else np.ones((len(sims), 1))
        knn[rows] = 1.0 - nearest.mean(1)
        i, j = np.nonzero(sims >= similarity)
        keep = rows[i] < j
        pairs += [(int(a), int(b), float(s)) for a, b, s in zip(rows[i][keep], j[keep], sims[i[keep], j[keep]])]
    return pairs, knn


def outliers(knn: np.ndarray, fence: float = FENCE) -> np.ndarray:
    """Positions whose nearest-neighbour distance is past Q3 + ``fence`` IQR, farthest first."""
    if len(knn) < 4:
        return np.zeros(0, dtype=np.int64)
    q1, q3 = np.percentile(knn, [25, 75])
    found = np.flatnonzero(knn > q3 + fence * (q3 - q1))
    return found[np.argsort(-knn[found], kind="stable")]


def rank_issues(pooled: PooledImages, *, folds: int = DEFAULT_FOLDS, seed: int = 0) -> IssuesReport:
    """Every issue of the pooled images, ranked (see the module docstring)."""
    classes, labels = pooled.classes, pooled.labels
    counts = {name: int((labels == i).sum()) for i, name in enumerate(classes) if (labels == i).any()}
    check_folds(folds, counts)
    require_cleanlab()  # before minutes of heads: the one line says how to install it
    start = time.perf_counter()
    probs = out_of_fold_probabilities(
        pooled.features, labels, folds=assign_folds(labels.tolist(), folds, seed), classes=len(classes)
    )
    flagged, scores = label_issues(probs, labels)
    heads = time.perf_counter() - start
    found = [
        _issue(pooled, int(i), "label", float(s), suggested=classes[int(probs[i].argmax())])
        for i, s in zip(flagged, scores)
    ]
    pairs, knn = neighbours(pooled.features, similarity=DUPLICATE_SIMILARITY)
    for i, j, similarity in sorted(pairs, key=lambda p: -p[2]):
        kind = "leak" if pooled.splits[i] != pooled.splits[j] else "duplicate"
        found.append(_issue(pooled, j, kind, similarity, suggested=classes[labels[i]], other=i))
    found += [_issue(pooled, int(i), "outlier", float(knn[i]), suggested="") for i in outliers(knn)]
    found.sort(key=lambda issue: KINDS.index(issue.kind))  # stable: each kind keeps its ranking
    return IssuesReport(
        issues=found,
        counts={kind: sum(issue.kind == kind for issue in found) for kind in KINDS},
        images=len(labels),
        folds=folds,
        backbone=pooled.backbone,
        seconds={"features": pooled.seconds, "heads": heads, "neighbours": time.perf_counter() - start - heads},
        probabilities=probs,
    )


def _issue(pooled: PooledImages, i: int, kind: str, score: float, *, suggested: str, other: int | None = None) -> Issue:
    return Issue(
        image=pooled.names[i],
        kind=kind,
        given_label=pooled.classes[pooled.labels[i]],
        suggested_label=suggested,
        score=score,
        split=pooled.splits[i],
        row=i,
        other=other,
        other_image=pooled.names[other] if other is not None else "",
    )


def issues_csv(issues: list[Issue]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(COLUMNS)
    writer.writerows(issue.csv_row() for issue in issues)
    return buffer.getvalue()


def default_out(base: Path | None = None) -> Path:
    """A new folder for the files: ``issues/``, else ``issues-2/``, ``issues-3/`` ... in the working folder."""
    base = Path.cwd() if base is None else base
    candidate, n = base / "issues", 1
    while candidate.exists():
        n += 1
        candidate = base / f"issues-{n}"
    return candidate


def check_out(out: Path) -> None:
    """``--out``: a folder, new or already there; a file there is refused in one line."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: a file is there; give a folder (new or existing) for issues.csv and issues.html")
    for name in ("issues.csv", "issues.html"):
        if (out / name).is_dir():
            raise UserError(f"--out {out}: {out / name} is a folder; give another --out")


def data_issues(
    config: Any = "clothing_transfer",
    data: str | Path | None = None,
    *,
    folds: int = DEFAULT_FOLDS,
    out: str | Path | None = None,
    overrides: list[str] | None = None,
) -> IssuesReport:
    """Rank the likely problems of ``data`` (or the config's data) and write issues.csv and issues.html.

    ``config``: a config file, a shipped recipe's name or a mapping; its backbone computes the
    features. Returns the :class:`IssuesReport` (``out``: where the files are).
    """
    from .issue_features import data_and_model, pooled_images  # lazy: torch; the ranking reads arrays
    from .issues_page import write_issues_html

    if folds < 2:
        check_folds(folds, {})
    target = Path(out) if out is not None else default_out()
    check_out(target)
    cfg = load_config(config, [*(overrides or []), *([f"data.root={data}"] if data is not None else [])])
    if cfg.data.source == "folder" and not cfg.data.root:
        raise ConfigError("data issues: give the data with --data FOLDER_OR_CSV (the config names none)")
    spec, model = data_and_model(cfg)
    pooled = pooled_images(spec, model, config_name=cfg.name or str(config))
    report = rank_issues(pooled, folds=folds, seed=cfg.seed)
    target.mkdir(parents=True, exist_ok=True)
    write_text(target / "issues.csv", issues_csv(report.issues))
    write_issues_html(target / "issues.html", report, pooled)
    report.out = target
    return report
