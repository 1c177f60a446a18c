"""The pictures: history.png (best.pt's epoch, where stage 2 starts) and the confusion matrices."""

from __future__ import annotations

from pathlib import Path

import pytest

import cnnzoo
from cnnzoo.plots import confusion_figure, history_figure, plot_confusion

from support.images import make_image_tree
from support.runs import tiny_config


def _row(epoch: int, acc: float, loss: float, stage: int) -> dict:
    return {
        "epoch": str(epoch),
        "train_loss": str(loss + 0.1),
        "val_loss": str(loss),
        "train_acc": str(acc),
        "val_acc": str(acc),
        "stage": str(stage),
    }


def test_history_marks_best_pt_and_where_stage_two_starts():
    rows = [_row(1, 0.8, 0.6, 1), _row(2, 0.9, 0.5, 1), _row(3, 0.9, 0.4, 2), _row(4, 0.9, 0.3, 2)]
    fig = history_figure(rows, best_epoch=4)
    ax_loss, ax_acc = fig.axes
    for ax in (ax_loss, ax_acc):
        starts = [line for line in ax.get_lines() if list(line.get_xdata()) == [2.5, 2.5]]
        assert len(starts) == 1, "a dashed line between epoch 2 and 3 on both panels"
        legend = [t.get_text() for t in ax.get_legend().get_texts()]
        assert "stage 2 (backbone unfrozen) from epoch 3" in legend
    (marker,) = ax_acc.collections
    assert marker.get_offsets().tolist() == [[4.0, 90.0]]  # the epoch best.pt holds, not epoch 2
    assert "best.pt: 90.0% (epoch 4)" in [t.get_text() for t in ax_acc.get_legend().get_texts()]
    one_stage = history_figure([_row(1, 0.8, 0.6, 1), _row(2, 0.9, 0.5, 1)])
    assert not any(list(line.get_xdata()) == [1.5, 1.5] for line in one_stage.axes[0].get_lines())


def test_confusion_matrix_has_a_row_normalised_panel():
    # the largest class takes all the colour of the counts; the shares show the rare class's errors
    fig = confusion_figure([[90, 10], [3, 1]], ["big", "rare"])
    counts, shares = [ax for ax in fig.axes if ax.images]
    assert counts.images[0].get_array().tolist() == [[90, 10], [3, 1]]
    assert shares.images[0].get_array().tolist() == [[0.9, 0.1], [0.75, 0.25]]
    assert [t.get_text() for t in shares.texts] == ["90%", "10%", "75%", "25%"]
    assert "rows sum to 100%" in shares.get_title()


def test_class_names_with_dollar_signs_are_drawn_as_text(tmp_path):
    # matplotlib reads `$...$` as a formula and refused `cost_$1_$2`: evaluate crashed
    names = ["cost_$1_$2", "$x^$"]
    plot_confusion([[1, 2], [3, 4]], names, tmp_path / "cm.png")
    fig = confusion_figure([[1, 2], [3, 4]], names)
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == names
    from cnnzoo.training.sweep import _plot_sweep

    _plot_sweep(
        [{"data.root": "/data/$1_$2", "best_val_acc": 0.5}],
        [([1, 2], [0.4, 0.5])],
        ["data.root"],
        tmp_path / "sweep.png",
    )
    assert (tmp_path / "sweep.png").stat().st_size > 0


@pytest.mark.slow
def test_evaluate_draws_classes_named_like_formulas(tmp_path):
    root = make_image_tree(tmp_path / "images", train={"cost_$1_$2a": 6, "b": 6}, validation={"cost_$1_$2a": 2, "b": 2})
    run = cnnzoo.train(tiny_config(root, epochs=1), out=tmp_path / "runs", quiet=True)
    report = cnnzoo.evaluate(run / "best.pt", progress=False)
    assert report["classes"] == ["b", "cost_$1_$2a"]
    assert Path(report["outputs"][1]).stat().st_size > 0
