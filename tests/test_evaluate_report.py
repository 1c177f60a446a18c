"""report.html of ``cnnzoo evaluate`` (issue 21, part 2): the figures against hand-computed cases
(cnnzoo.evaluation.analysis), the page in headless Chromium (it renders, every picture is
embedded, nothing is requested), and evaluate writing it (or not, with --no-report)."""

from __future__ import annotations

import http.server
import json
import math
import re
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cnnzoo.cli import app
from cnnzoo.data.preprocess import load_image
from cnnzoo.evaluation import analysis
from cnnzoo.evaluation.evaluate import evaluate as run_evaluation
from cnnzoo.evaluation.page import ReportInputs, write_report_html
from cnnzoo.evaluation.scores import confusion_matrix, per_class_scores
from cnnzoo.pages import OFFLINE_POLICY

from support.browser import headless_chromium
from support.cli import run_script
from support.images import make_image_tree, write_class_folders
from support.runs import train_run

ROOT = Path(__file__).resolve().parents[1]

# five images, three classes: (probabilities, true label); worked by hand below
CASE = [
    ([0.90, 0.05, 0.05], 0),  # right, 90% sure
    ([0.70, 0.20, 0.10], 1),  # wrong (took 1 for 0), 70% sure
    ([0.10, 0.70, 0.20], 1),  # right, 70% sure
    ([0.20, 0.50, 0.30], 2),  # wrong (took 2 for 1), 50% sure
    ([0.05, 0.05, 0.90], 2),  # right, 90% sure
]
PROBS = np.array([p for p, _ in CASE])
LABELS = np.array([t for _, t in CASE])


def test_calibration_bins_and_ece_by_hand():
    confidence = PROBS.max(axis=1)
    bins = analysis.calibration_bins(confidence, PROBS.argmax(axis=1) == LABELS, bins=5)
    assert [b.low for b in bins] == pytest.approx([0, 0.2, 0.4, 0.6, 0.8])
    assert [b.high for b in bins] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1])
    assert [b.count for b in bins] == [0, 0, 1, 2, 2]
    assert [b.confidence for b in bins] == pytest.approx([0, 0, 0.5, 0.7, 0.9])
    assert [b.accuracy for b in bins] == pytest.approx([0, 0, 0.0, 0.5, 1.0])
    # (1·|0 − 0.5| + 2·|0.5 − 0.7| + 2·|1 − 0.9|) / 5 = (0.5 + 0.4 + 0.2) / 5
    assert analysis.expected_calibration_error(bins) == pytest.approx(0.22)


def test_a_bin_holds_its_upper_edge_and_zero_sits_in_the_first():
    bins = analysis.calibration_bins([0.0, 0.5, 0.5000001, 1.0], [True, True, False, True], bins=2)
    assert [b.count for b in bins] == [2, 2]
    assert analysis.expected_calibration_error([]) == 0.0


def test_a_calibrated_model_has_no_calibration_error():
    confidence = [0.75] * 4
    bins = analysis.calibration_bins(confidence, [True, True, True, False])
    assert analysis.expected_calibration_error(bins) == pytest.approx(0.0)


def test_most_confused_pairs_largest_first_ties_in_class_order():
    matrix = [[5, 3, 0], [0, 4, 1], [3, 0, 2]]
    assert analysis.most_confused(matrix) == [(0, 1, 3), (2, 0, 3), (1, 2, 1)]
    assert analysis.most_confused(matrix, limit=1) == [(0, 1, 3)]
    assert analysis.most_confused([[4, 0], [0, 3]]) == []
    case = confusion_matrix(LABELS.tolist(), PROBS.argmax(axis=1).tolist(), 3)
    assert analysis.most_confused(case) == [(1, 0, 1), (2, 1, 1)]


def test_top_losses_by_hand():
    # −log p(true): 0.105, 1.609, 0.357, 1.204, 0.105
    assert analysis.losses(PROBS, LABELS) == pytest.approx([-math.log(p) for p in (0.9, 0.2, 0.7, 0.3, 0.9)])
    assert analysis.top_losses(PROBS, LABELS) == [1, 3, 2, 0, 4]
    assert analysis.top_losses(PROBS, LABELS, limit=2) == [1, 3]
    assert np.isfinite(analysis.losses(np.array([[1.0, 0.0]]), np.array([1]))).all()


def test_precision_recall_curve_by_hand():
    curve = analysis.precision_recall_curve([0.9, 0.8, 0.7, 0.6, 0.5], [True, False, True, False, False])
    assert curve.precision == pytest.approx([1, 1 / 2, 2 / 3, 2 / 4, 2 / 5])
    assert curve.recall == pytest.approx([0.5, 0.5, 1, 1, 1])
    assert curve.average_precision == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    assert curve.positives == 2


def test_tied_scores_cross_a_threshold_together():
    curve = analysis.precision_recall_curve([0.9, 0.9, 0.1], [False, True, True])
    assert curve.precision == pytest.approx([1 / 2, 2 / 3])
    assert curve.recall == pytest.approx([1 / 2, 1])
    assert curve.average_precision == pytest.approx(0.5 * 0.5 + 0.5 * 2 / 3)


def test_a_class_without_positives_has_no_curve_and_ap_zero():
    curve = analysis.precision_recall_curve([0.2, 0.1], [False, False])
    assert (curve.precision, curve.recall, curve.average_precision) == ([], [], 0.0)
    curves = analysis.per_class_curves(PROBS, LABELS)
    assert len(curves) == 3 and curves[0].average_precision == pytest.approx(1.0)


# ----------------------------------------------------------------------------- the page in a browser


def _inputs(folder: Path) -> ReportInputs:
    """The hand-worked case, each image a real file."""
    write_class_folders(folder, {"a": 2, "b": 2, "c": 1}, size=32)
    files = sorted(str(p) for p in folder.rglob("*.png"))
    matrix = confusion_matrix(LABELS.tolist(), PROBS.argmax(axis=1).tolist(), 3)
    scores = {"confusion_matrix": matrix, "accuracy": 0.6, "loss": 0.68, **per_class_scores(matrix, ["a", "b", "c"])}
    return ReportInputs(
        title="hand-worked case",
        classes=["a", "b", "c"],
        probabilities=PROBS,
        labels=LABELS,
        image_names=files,
        image_pixels=lambda row, size: load_image(files[row], size, 3),
        scores=scores,
        explain_model="runs/tiny/1/best.pt",
    )


def test_a_calibrated_models_page_draws_the_reliability_before_and_after(tmp_path):
    """With the probabilities before the temperature (``uncalibrated``), the page draws two diagrams
    and gives both errors; without them, one diagram, as before calibration existed."""
    inputs = _inputs(tmp_path / "images")
    sharper = np.exp(3 * np.log(PROBS))
    inputs.uncalibrated = sharper / sharper.sum(axis=1, keepdims=True)
    page = write_report_html(tmp_path / "calibrated.html", inputs).read_text()
    before = analysis.calibration_error(inputs.uncalibrated, LABELS)
    assert f'<span id="ece-uncalibrated">{100 * before:.2f}%</span> before, 22.00% after' in page
    assert 'alt="reliability before calibration"' in page and 'alt="reliability after calibration"' in page
    inputs.uncalibrated = None
    plain = write_report_html(tmp_path / "plain.html", inputs).read_text()
    assert "ece-uncalibrated" not in plain and plain.count('alt="reliability') == 1


def test_the_page_renders_with_every_picture_embedded_and_no_request(tmp_path):
    from selenium.webdriver.common.by import By

    page = write_report_html(tmp_path / "report.html", _inputs(tmp_path / "images"))
    browser = headless_chromium()
    try:
        browser.get(page.as_uri())
        images = browser.find_elements(By.TAG_NAME, "img")
        # confusion matrix, reliability, PR chart; 2 confused pairs x 1 image; 5 top losses
        assert len(images) == 3 + 2 + 5
        for img in images:
            assert img.get_attribute("src").startswith("data:image/png;base64,")
            assert browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth", img) > 0
        assert browser.execute_script("return performance.getEntriesByType('resource').length") == 0
        linked = browser.execute_script(
            "return [...document.querySelectorAll('[src],[href]')]"
            ".map(e => e.getAttribute('src') || e.getAttribute('href'))"
        )
        assert all(url.startswith("data:") for url in linked), linked
        assert browser.find_element(By.ID, "ece").text == "22.00%"
        rows = browser.find_elements(By.CSS_SELECTOR, "#top-losses tr.loss")
        assert len(rows) == 5 and "true b (20.0%), predicted a" in rows[0].text
        command = rows[0].find_element(By.CSS_SELECTOR, "code.explain").text
        assert command.startswith("cnnzoo explain ") and command.endswith("--model runs/tiny/1/best.pt")
        pairs = browser.find_elements(By.CSS_SELECTOR, "#confused .pair h3")
        assert [p.text for p in pairs] == ["b taken for a: 1 image", "c taken for b: 1 image"]
        table = browser.find_element(By.ID, "per-class").text
        assert "macro avg" in table and "weighted avg" in table
    finally:
        browser.quit()


class _Counting(http.server.BaseHTTPRequestHandler):
    hits: list[str] = []

    def do_GET(self):  # noqa: N802  (the name http.server calls)
        self.hits.append(self.path)
        self.send_response(404)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.mark.parametrize("policy", [True, False])
def test_the_page_policy_stops_a_request_that_would_leave(tmp_path, policy):
    """A picture pointing at a real local server is not fetched while the page's policy stands
    (and is fetched once the policy is cut out, which shows the test can see a request)."""
    from selenium.webdriver.common.by import By

    server = http.server.HTTPServer(("127.0.0.1", 0), _Counting)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _Counting.hits = []
    page = write_report_html(tmp_path / "report.html", _inputs(tmp_path / "images"))
    text = page.read_text().replace(
        "</body>", f'<img id="outside" src="http://127.0.0.1:{server.server_port}/x.png"></body>'
    )
    page.write_text(text if policy else text.replace(OFFLINE_POLICY, ""))
    browser = headless_chromium()
    try:
        browser.get(page.as_uri())
        browser.find_element(By.ID, "outside")
        browser.execute_script("return new Promise(r => setTimeout(r, 300))")
        assert _Counting.hits == ([] if policy else ["/x.png"])
    finally:
        browser.quit()
        server.shutdown()


# ----------------------------------------------------------------------------- evaluate writes it


@pytest.fixture(scope="module")
def report_run(tmp_path_factory):
    return train_run(
        tmp_path_factory.mktemp("eval-report"),
        lambda base: make_image_tree(base / "images", validation={"a": 5, "b": 4}),
    )


@pytest.mark.slow
def test_evaluate_writes_report_html_beside_eval_json_and_no_report_skips_it(report_run, tmp_path):
    result = CliRunner().invoke(app, ["evaluate", str(report_run.best), "--json", "--out", str(tmp_path / "with")])
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    page = tmp_path / "with" / "report.html"
    assert report["outputs"][-1] == str(page)
    assert "outputs" not in json.loads((tmp_path / "with" / "eval.json").read_text())
    text = page.read_text()
    assert "Content-Security-Policy" in text and text.count("data:image/png;base64,") >= 3
    assert f"--model {report_run.best}" in text  # the explain command names the evaluated checkpoint
    without = ["evaluate", str(report_run.best), "--no-report", "--out", str(tmp_path / "without")]
    result = CliRunner().invoke(app, without)
    assert result.exit_code == 0, result.stderr
    assert sorted(p.name for p in (tmp_path / "without").iterdir()) == ["confusion_matrix.png", "eval.json"]
    assert "report.html" not in result.stdout


@pytest.mark.slow
def test_an_unreadable_image_is_left_out_and_every_row_keeps_its_own_file_and_label(report_run, tmp_path):
    data = write_class_folders(tmp_path / "data", {"a": 4, "b": 4}, seed=9)
    (data / "a" / "a_000_broken.png").write_bytes(b"not a picture")  # sorts first: shifts every row after it
    report = run_evaluation(report_run.best, data, out=tmp_path / "out", progress=False)
    assert report["num_images"] == 8
    text = (tmp_path / "out" / "report.html").read_text()
    shown = re.findall(r'<p class="name">([^<]+)</p><p>true <b>([^<]+)</b>', text)
    assert len(shown) == 8 and "broken" not in text
    assert all(Path(name).parent.name == true for name, true in shown)


@pytest.mark.slow
def test_bench_report_prints_both_timings_and_the_ratio(report_run, tmp_path):
    out = run_script([ROOT / "scripts" / "bench_report.py", "--checkpoint", report_run.best, "--repeat", 1], tmp_path)
    assert "evaluate --no-report" in out and "report.html: +" in out and "x the evaluation" in out


@pytest.mark.slow
def test_an_onnx_models_probabilities_make_the_page_without_torch(report_run, tmp_path):
    """What an ONNX evaluation hands the page: onnxruntime's probabilities (NumPy), torch unimportable."""
    pytest.importorskip("onnxruntime")
    from cnnzoo.deploy.export import export

    onnx_file = export(report_run.best, "onnx", out=tmp_path / "model.onnx").path
    files = sorted(str(p) for p in (report_run.root / "validation").rglob("*.png"))
    code = f"""
import sys
sys.modules["torch"] = None  # importing torch now fails: the page must not need it
import numpy as np
from pathlib import Path
from cnnzoo.data.preprocess import load_image
from cnnzoo.evaluation.page import ReportInputs, write_report_html
from cnnzoo.inference import load

files = {files!r}
model = load({str(onnx_file)!r})
probs = model.probabilities(np.stack([load_image(f, model.image_size, model.channels) for f in files]))
labels = np.array([model.classes.index(Path(f).parent.name) for f in files])
predicted = probs.argmax(axis=1)
k = len(model.classes)
matrix = [[int(((labels == t) & (predicted == p)).sum()) for p in range(k)] for t in range(k)]
m = np.array(matrix)
tp, predicted_n, support = np.diag(m), m.sum(axis=0), m.sum(axis=1)
precision, recall = tp / np.maximum(predicted_n, 1), tp / np.maximum(support, 1)
f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
per_class = {{
    c: {{"precision": precision[i], "recall": recall[i], "f1": f1[i], "support": int(support[i])}}
    for i, c in enumerate(model.classes)
}}
averages = {{
    name: {{"precision": np.average(precision, weights=w), "recall": np.average(recall, weights=w),
           "f1": np.average(f1, weights=w)}}
    for name, w in (("macro", None), ("weighted", support))
}}
scores = {{"confusion_matrix": matrix, "accuracy": float((predicted == labels).mean()), "loss": 0.0,
          "per_class": per_class, "averages": averages}}
inputs = ReportInputs(title="onnx", classes=model.classes, probabilities=probs, labels=labels, image_names=files,
                      image_pixels=lambda row, size: load_image(files[row], size, 3), scores=scores)
print(write_report_html({str(tmp_path / "report.html")!r}, inputs))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    text = (tmp_path / "report.html").read_text()
    assert text.count('<tr class="loss">') == len(files) and "data:image/png;base64," in text
