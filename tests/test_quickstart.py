"""The README's main job, end to end as a user runs it: train the quickstart, then predict and
evaluate with no other arguments (the newest run's best.pt is the default)."""

from __future__ import annotations

import json

import pytest

from support.cli import run_cnnzoo

pytestmark = pytest.mark.slow  # trains the quickstart for real


def test_quickstart_trains_to_95_percent_then_predict_and_evaluate_need_no_arguments(quickstart_run):
    # the run itself is the session fixture (conftest): the README's train command, shared with explain
    base, home = quickstart_run.base, str(quickstart_run.home)
    assert "Generating the shapes data set" in quickstart_run.stdout
    assert (quickstart_run.run_dir / "best.pt").is_file()
    rows = (quickstart_run.run_dir / "metrics.csv").read_text().splitlines()
    best = max(float(row.split(",")[5]) for row in rows[1:])
    assert best >= 0.95, f"quickstart reached only {best:.3f} validation accuracy"

    evaluated = run_cnnzoo(["evaluate", "--json"], base, timeout=900, CNNZOO_HOME=home)
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    report = json.loads(evaluated.stdout)
    assert abs(report["accuracy"] - best) < 1e-6  # evaluate rebuilds exactly the validation split

    stars = quickstart_run.home / "shapes-v1" / "validation" / "star"
    # --no-unknown: the class it names, even for the few stars past the unknown threshold
    predicted = run_cnnzoo(["predict", stars, "--json", "--no-unknown"], base, timeout=900, CNNZOO_HOME=home)
    assert predicted.returncode == 0, predicted.stderr[-2000:]
    assert "best.pt" in predicted.stderr  # it says which checkpoint it used
    records = json.loads(predicted.stdout)
    assert len(records) == 60
    assert sum(r["label"] == "star" for r in records) >= 0.9 * len(records)
