"""Pictures written into run folders: training curves and confusion matrices (matplotlib)."""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from pathlib import Path

from .files import write_bytes


def pyplot():
    """matplotlib's pyplot, drawing into files (no screen), with ``$`` read as text: every plot cnnzoo makes."""
    # lazy: pyplot costs ~0.5 s to import; nothing that only predicts or reads configs needs it
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a screen
    # class names, run names and grid values are text: `cost_$1_$2` is not a formula (mathtext
    # would refuse to draw it), in every plot cnnzoo makes
    matplotlib.rcParams["text.parse_math"] = False
    import matplotlib.pyplot as plt  # lazy: see above; after use("Agg")

    return plt


def save_figure(fig, path: str | Path, dpi: int = 100) -> None:
    """``fig`` written to ``path`` in the format its suffix names, through :func:`cnnzoo.files.write_bytes`
    (atomic; a link at ``path`` is replaced, never written through), then closed."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format=Path(path).suffix.lstrip(".").lower() or "png", dpi=dpi)
    pyplot().close(fig)
    write_bytes(path, buffer.getvalue())


def _stage_two_start(rows: list[dict]) -> int | None:
    """The first epoch of stage 2 (the backbone unfrozen), if the run has one."""
    for row in rows:
        if str(row.get("stage", "")).strip() == "2":
            return int(row["epoch"])
    return None


def plot_history(rows: list[dict], path: str | Path, best_epoch: int | None = None) -> None:
    """history.png: :func:`history_figure`, written to ``path``."""
    save_figure(history_figure(rows, best_epoch), path)


def history_figure(rows: list[dict], best_epoch: int | None = None):
    """Loss and accuracy per epoch, training and validation, side by side.

    ``best_epoch`` is the epoch best.pt holds (ties on accuracy go to a lower loss); without it
    the first epoch with the highest validation accuracy is marked. A dashed line marks where
    stage 2 (the unfrozen backbone) starts.
    """
    plt = pyplot()
    epochs = [int(r["epoch"]) for r in rows]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    for key, label in (("train_loss", "train"), ("val_loss", "validation")):
        ax_loss.plot(epochs, [float(r[key]) for r in rows], marker="o", label=label)
    for key, label in (("train_acc", "train"), ("val_acc", "validation")):
        ax_acc.plot(epochs, [100 * float(r[key]) for r in rows], marker="o", label=label)
    ax_loss.set(title="loss", xlabel="epoch")
    ax_acc.set(title="accuracy (%)", xlabel="epoch")
    best = next((r for r in rows if int(r["epoch"]) == best_epoch), None) or max(
        rows, key=lambda r: float(r["val_acc"])
    )
    ax_acc.scatter(
        [int(best["epoch"])],
        [100 * float(best["val_acc"])],
        s=160,
        facecolors="none",
        edgecolors="black",
        zorder=3,
        label=f"best.pt: {100 * float(best['val_acc']):.1f}% (epoch {best['epoch']})",
    )
    stage_two = _stage_two_start(rows)
    if stage_two is not None and stage_two > epochs[0]:
        for ax in (ax_loss, ax_acc):
            ax.axvline(
                stage_two - 0.5,
                color="gray",
                linestyle="--",
                linewidth=1,
                label=f"stage 2 (backbone unfrozen) from epoch {stage_two}",
            )
    for ax in (ax_loss, ax_acc):
        ax.xaxis.set_major_locator(plt.MaxNLocator(integer=True))  # epochs are whole numbers
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    return fig


def plot_confusion(
    matrix: Sequence[Sequence[int]], classes: Sequence[str], path: str | Path, *, title: str = "confusion matrix"
) -> None:
    """Counts, and each true class's row as shares, true class down the side, predicted along the bottom."""
    save_figure(confusion_figure(matrix, classes, title), path)


def row_shares(matrix: Sequence[Sequence[int]]) -> list[list[float]]:
    """Each row divided by its sum (a class without images stays all zero): the recall view."""
    return [[v / sum(row) if sum(row) else 0.0 for v in row] for row in matrix]


def _matrix_panel(
    fig,
    ax,
    values: Sequence[Sequence[float]],
    *,
    classes: Sequence[str],
    title: str,
    peak: float,
    text: Callable[[float], str],
) -> None:
    n = len(classes)
    image = ax.imshow(values, cmap="Blues", vmin=0, vmax=peak)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    ax.set_xticks(range(n), labels=classes, rotation=45, ha="right")
    ax.set_yticks(range(n), labels=classes)
    ax.set(xlabel="predicted", ylabel="true", title=title)
    for i in range(n):
        for j in range(n):
            ax.text(
                j,
                i,
                text(values[i][j]),
                ha="center",
                va="center",
                fontsize=8,
                color="white" if values[i][j] > peak / 2 else "black",
            )


def confusion_figure(matrix: Sequence[Sequence[int]], classes: Sequence[str], title: str = "confusion matrix"):
    """The matplotlib figure of :func:`plot_confusion` (TensorBoard takes figures): counts on the
    left; on the right each row as shares of its true class, so a rare class's errors show as
    clearly as the largest class's."""
    plt = pyplot()
    size = max(4.0, 0.6 * len(classes) + 2)
    fig, (ax_counts, ax_shares) = plt.subplots(1, 2, figsize=(2 * (size + 1), size))
    peak = max((max(row) for row in matrix), default=0) or 1
    _matrix_panel(fig, ax_counts, matrix, classes=classes, title="counts", peak=peak, text=lambda v: str(int(v)))
    _matrix_panel(
        fig,
        ax_shares,
        row_shares(matrix),
        classes=classes,
        title="share of each true class (rows sum to 100%)",
        peak=1.0,
        text=lambda v: f"{100 * v:.0f}%",
    )
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_pr_curves(
    curves: dict[str, tuple[Sequence[float], Sequence[float]]],
    points: dict[str, tuple[float, float]],
    path: str | Path,
    title: str,
) -> None:
    """A multi-label model's precision-recall curve per class (``curves[name] = (recall, precision)``),
    each class's operating point at its threshold marked (``points[name] = (recall, precision)``)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    for name, (recall, precision) in curves.items():
        (line,) = ax.step(recall, precision, where="post", label=name)
        if name in points:
            ax.plot(*points[name], "o", color=line.get_color())
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1.01), ylim=(0, 1.05), title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", loc="lower left", ncol=max(1, len(curves) // 12))
    fig.tight_layout()
    save_figure(fig, path)
