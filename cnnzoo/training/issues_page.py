"""issues.html, which ``data issues`` writes beside issues.csv: the ranked issues with thumbnails.

One section per kind (wrong labels, leaks, duplicates, outliers), the first :data:`SHOWN` rows
of each with the image as the model sees it (a duplicate or a leak beside its twin), its split,
the given and suggested labels and the score. Pictures are embedded (:mod:`cnnzoo.pages`) and
the page forbids itself any network request, so it opens offline as one file; its style is
report.html's.

Imports files, pages and the data samples only; NumPy.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import TYPE_CHECKING

from ..files import write_text
from ..pages import OFFLINE_POLICY, ZOOM_SCRIPT, array_png, embedded_img

if TYPE_CHECKING:
    from .issue_features import PooledImages
    from .issues import Issue, IssuesReport

THUMBNAIL = 96
SHOWN = 40  # rows per kind on the page (issues.csv has them all)
TITLES = {
    "label": ("Labels that look wrong", "Out-of-fold probabilities disagree with the given label (cleanlab); "
              "score: 1 - self-confidence (the probability of the given label)."),
    "leak": ("The same image in two splits", "Feature twins in different splits; score: cosine similarity."),
    "duplicate": ("Near-duplicates", "Feature twins in one split (a resized or re-encoded copy counts); "
                  "score: cosine similarity."),
    "outlier": ("Outliers", "Far from every other image; score: mean cosine distance to the nearest images."),
}  # fmt: skip

_STYLE = """\
body { font-family: system-ui, sans-serif; margin: 1.5rem; color: #222; max-width: 70rem; }
h1 { font-size: 1.4rem; } h2 { font-size: 1.15rem; margin-top: 2rem; }
table { border-collapse: collapse; } td, th { padding: .2rem .6rem; text-align: left; vertical-align: top;
border-bottom: 1px solid #eee; } td.num { text-align: right; }
.name { font-size: .8rem; color: #555; word-break: break-all; }
.grid { display: flex; flex-wrap: wrap; gap: .4rem; }
figure { margin: 0; } figcaption { font-size: .75rem; color: #666; }
img { cursor: zoom-in; border-radius: .2rem; } .thumb img { width: 6rem; }
img.big, .thumb img.big { width: 32rem; cursor: zoom-out; }
.summary { font-size: 1.05rem; }
"""


def _thumbnail(pooled: PooledImages, row: int, caption: str) -> str:
    split, i = pooled.samples[row]
    try:
        pixels = split.read(i, (THUMBNAIL, THUMBNAIL), 3)
    except Exception:  # an image that changed since: the row stays, without its picture
        return f'<span class="name">({html.escape(caption)}: unreadable now)</span>'
    return embedded_img(array_png(pixels, THUMBNAIL), alt=pooled.names[row], caption=caption, css_class="thumb")


def _row(issue: Issue, pooled: PooledImages) -> str:
    pictures = _thumbnail(pooled, issue.row, issue.split)
    names = f'<div class="name">{html.escape(issue.image)}</div>'
    if issue.other is not None:
        pictures += _thumbnail(pooled, issue.other, f"twin, {pooled.splits[issue.other]}")
        names += f'<div class="name">twin: {html.escape(issue.other_image)}</div>'
    return (
        f'<tr><td><div class="grid">{pictures}</div></td><td>{names}</td>'
        f"<td>{html.escape(issue.given_label)}</td><td>{html.escape(issue.suggested_label)}</td>"
        f'<td class="num">{issue.score:.3f}</td></tr>'
    )


def _section(kind: str, issues: list[Issue], pooled: PooledImages) -> str:
    title, note = TITLES[kind]
    rows = [issue for issue in issues if issue.kind == kind]
    shown = "" if len(rows) <= SHOWN else f" The first {SHOWN} of {len(rows)} (issues.csv has them all)."
    if not rows:
        return f'<h2 id="{kind}">{title}: none</h2>'
    table = "".join(_row(issue, pooled) for issue in rows[:SHOWN])
    return (
        f'<h2 id="{kind}">{title}: {len(rows)}</h2><p>{html.escape(note)}{shown}</p>'
        f"<table><tr><th>image</th><th>file</th><th>given</th><th>suggested</th><th>score</th></tr>{table}</table>"
    )


def render_issues(report: IssuesReport, pooled: PooledImages) -> str:
    """The page's HTML, every picture embedded."""
    counts = ", ".join(f"{n} {kind}" for kind, n in report.counts.items())
    sections = "\n".join(_section(kind, report.issues, pooled) for kind in TITLES)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">{OFFLINE_POLICY}<title>cnnzoo data issues</title>
<style>
{_STYLE}</style></head><body>
<h1>Data issues</h1>
<p class="summary" id="summary">{report.images} images ({", ".join(sorted(set(pooled.splits)))}) compared by
{html.escape(report.backbone)}'s features, labels checked by {report.folds}-fold out-of-fold probabilities:
{counts}.</p>
{sections}
<script>
{ZOOM_SCRIPT}</script>
</body></html>
"""


def write_issues_html(path: str | Path, report: IssuesReport, pooled: PooledImages) -> Path:
    """Write :func:`render_issues` to ``path`` (atomically); returns the path."""
    path = Path(path)
    write_text(path, render_issues(report, pooled))
    return path
