"""Pictures written into run folders: training curves and confusion matrices (matplotlib)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a screen
    import matplotlib.pyplot as plt

    return plt


def plot_history(rows: list[dict], path: str | Path) -> None:
    """Loss and accuracy per epoch, training and validation, side by side."""
    plt = _pyplot()
    epochs = [int(r["epoch"]) for r in rows]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    for key, label in (("train_loss", "train"), ("val_loss", "validation")):
        ax_loss.plot(epochs, [float(r[key]) for r in rows], marker="o", label=label)
    for key, label in (("train_acc", "train"), ("val_acc", "validation")):
        ax_acc.plot(epochs, [100 * float(r[key]) for r in rows], marker="o", label=label)
    ax_loss.set(title="loss", xlabel="epoch")
    ax_acc.set(title="accuracy (%)", xlabel="epoch")
    best = max(rows, key=lambda r: float(r["val_acc"]))
    ax_acc.scatter([int(best["epoch"])], [100 * float(best["val_acc"])], s=160, facecolors="none",
                   edgecolors="black", zorder=3, label=f"best: {100 * float(best['val_acc']):.1f}% "
                                                        f"(epoch {best['epoch']})")
    from matplotlib.ticker import MaxNLocator

    for ax in (ax_loss, ax_acc):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_confusion(matrix: Sequence[Sequence[int]], classes: Sequence[str], path: str | Path,
                   title: str = "confusion matrix") -> None:
    """Counts in cells, true class down the side, predicted class along the bottom."""
    fig = confusion_figure(matrix, classes, title)
    fig.savefig(path, dpi=100)
    _pyplot().close(fig)


def confusion_figure(matrix: Sequence[Sequence[int]], classes: Sequence[str], title: str = "confusion matrix"):
    """The matplotlib figure of :func:`plot_confusion` (TensorBoard takes figures)."""
    plt = _pyplot()
    n = len(classes)
    size = max(4.0, 0.6 * n + 2)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    image = ax.imshow(matrix, cmap="Blues")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    ax.set_xticks(range(n), labels=classes, rotation=45, ha="right")
    ax.set_yticks(range(n), labels=classes)
    ax.set(xlabel="predicted", ylabel="true", title=title)
    peak = max((max(row) for row in matrix), default=0) or 1
    for i in range(n):
        for j in range(n):
            value = matrix[i][j]
            ax.text(j, i, str(value), ha="center", va="center", fontsize=8,
                    color="white" if value > peak / 2 else "black")
    fig.tight_layout()
    return fig
