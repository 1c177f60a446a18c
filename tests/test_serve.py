"""``cnnzoo serve`` (issue #11): the real server on a free loopback port, called over HTTP.

The server runs as a subprocess (``cnnzoo serve``), once on an ONNX export and once on
the checkpoint; requests go through urllib. The page is driven in headless Chromium
(Debian's ``chromium`` + ``chromium-driver`` through Selenium) when they are installed.
"""

from __future__ import annotations

import io
import os
import shutil
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from PIL import Image

import cnnzoo

from servelib import Server, png_claiming
from support.browser import headless_chromium
from support.cli import one_error_line, run_cnnzoo
from support.images import make_image_tree
from support.runs import train_run

pytestmark = pytest.mark.slow  # every test here trains a model or uses one a module fixture trained


pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
pytest.importorskip("onnxruntime")


def _images(base: Path) -> Path:
    return make_image_tree(
        base / "images", train={"a": 16, "b": 16, "c": 16}, validation={"a": 6, "b": 6, "c": 6}, size=32, ext="jpg"
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return train_run(tmp_path_factory.mktemp("serve-run"), _images, epochs=3)


@pytest.fixture(scope="module")
def onnx_file(trained):
    from cnnzoo.deploy.export import export

    return export(trained.best, "onnx").path


@pytest.fixture(scope="module", params=["onnx", "checkpoint"])
def server(request, trained, onnx_file):
    model = onnx_file if request.param == "onnx" else trained.best
    srv = Server(model, trained.base, "--max-bytes", "200000")
    srv.kind = request.param
    yield srv
    srv.stop()


def validation_files(trained) -> list[Path]:
    return sorted((trained.root / "validation").rglob("*.jpg"))


def expected(trained, paths) -> list[dict]:
    return cnnzoo.load(trained.best).predict([str(p) for p in paths], top_k=3)


def test_health_and_info(server, trained):
    assert server.get("/health") == (200, {"status": "ok"})
    status, info = server.get("/info")
    assert status == 200
    assert info["classes"] == ["a", "b", "c"] and info["input"] == [3, 16, 16]
    assert info["format"] == server.kind and info["max_bytes"] == 200000


def test_the_page_is_served_from_the_package_data(server):
    """``GET /`` answers ``cnnzoo/deploy/serve/page.html`` as it is; the browser test below drives it."""
    from cnnzoo.deploy.serve import page_html

    status, page = server.get("/")
    assert status == 200 and page == page_html() and 'id="drop"' in page


def test_an_image_body_gets_the_records_of_predict_json(server, trained):
    path = validation_files(trained)[0]
    status, records = server.post_image("/predict", path.read_bytes(), "?top_k=3")
    assert status == 200 and len(records) == 1
    want = expected(trained, [path])[0]
    assert records[0]["image"] == "upload" and records[0]["label"] == want["label"]
    assert [e["label"] for e in records[0]["top_k"]] == [e["label"] for e in want["top_k"]]
    assert records[0]["probability"] == pytest.approx(want["probability"], abs=1e-4)


def test_multipart_upload_of_several_files(server, trained):
    paths = validation_files(trained)[:3]
    status, records = server.post_files([(p.name, p.read_bytes()) for p in paths], "?top_k=1")
    assert status == 200
    assert [r["image"] for r in records] == [p.name for p in paths]
    assert [r["label"] for r in records] == [r["label"] for r in expected(trained, paths)]
    assert all(len(r["top_k"]) == 1 for r in records)


def _png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (width, height)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_bad_requests_get_a_4xx_with_a_json_error(server, trained):
    good = validation_files(trained)[0].read_bytes()
    cases = [
        (server.post_image("/predict", b"this is not an image"), 415, "not an image cnnzoo can read"),
        (server.post_image("/predict", b""), 400, "empty upload"),
        (server.post_image("/predict", os.urandom(300_000)), 413, "the limit is 200,000"),
        (server.post_image("/predict", _png(8100, 8100)), 413, "pixels; the limit is 64,000,000"),
        (
            server.post_image("/predict", png_claiming(20000, 20000)),
            413,  # PIL's bomb error, was 415
            "upload: more than 178,956,970 pixels (a decompression bomb?); the limit is 64,000,000 pixels",
        ),
        (server.post_image("/predict", good, "?top_k=0"), 400, "top_k='0'"),
        (server.post_image("/predict", good, "?top_k=%C2%B2"), 400, "top_k='²': expected a positive whole number"),
        (server.post_image("/predict", good, "?top_k=" + "9" * 5000), 400, "top_k='999999999999999999999999...'"),
        (server.post_image("/predict", good, "?top_k=-1"), 400, "top_k='-1'"),
        (server.post_image("/predict", good, "?top_k=1.5"), 400, "top_k='1.5'"),
        (server.post_files([("big.jpg", os.urandom(250_000))]), 413, "big.jpg: more bytes than the limit"),
        (
            server.post_files([("a.jpg", good), ("b.jpg", os.urandom(110_000)), ("c.jpg", os.urandom(110_000))]),
            413,
            "c.jpg: more bytes than the limit; the limit is 200,000 per request (serve --max-bytes), several files",
        ),
        (server.post_files([("ok.jpg", good), ("text.jpg", b"hello")]), 415, "text.jpg: not an image"),
        (
            server.request("/predict", b"--x--\r\n", {"Content-Type": "multipart/form-data; boundary=x"}),
            400,
            "the form holds no file",
        ),
        (server.get("/predict"), 405, "Method Not Allowed"),
        (server.get("/nothing-here"), 404, "Not Found"),
    ]
    for (status, answer), want_status, fragment in cases:
        assert status == want_status, (fragment, status, answer)
        assert isinstance(answer, dict) and fragment in answer["error"], (fragment, answer)
    assert server.get("/health")[0] == 200 and server.process.poll() is None  # still up


def test_fifty_concurrent_requests_are_answered_correctly(server, trained):
    paths = validation_files(trained)
    jobs = [paths[i % len(paths)] for i in range(50)]
    want = {p: r["label"] for p, r in zip(paths, expected(trained, paths))}
    with ThreadPoolExecutor(max_workers=50) as pool:
        answers = list(pool.map(lambda p: server.post_image("/predict", p.read_bytes()), jobs))
    assert all(status == 200 for status, _ in answers)
    assert [records[0]["label"] for _, records in answers] == [want[p] for p in jobs]


def test_the_onnx_server_runs_without_torch(trained, onnx_file):
    srv = Server(onnx_file, trained.base)
    try:
        maps = Path(f"/proc/{srv.process.pid}/maps")
        if not maps.exists():
            pytest.skip("needs Linux /proc to list the server's libraries")
        libraries = maps.read_text()
        assert "onnxruntime" in libraries
        assert "libtorch" not in libraries
    finally:
        srv.stop()


def test_two_worker_processes_answer_like_one(trained, onnx_file):
    """``--workers 2``: uvicorn imports the application factory by its dotted name in each worker."""
    srv = Server(onnx_file, trained.base, "--workers", "2")
    try:
        paths = validation_files(trained)[:4]
        answers = [srv.post_image("/predict", p.read_bytes()) for p in paths]
        assert all(status == 200 for status, _ in answers)
        assert [records[0]["label"] for _, records in answers] == [r["label"] for r in expected(trained, paths)]
        assert srv.get("/")[0] == 200 and srv.get("/info")[1]["format"] == "onnx"
    finally:
        srv.stop()


def test_a_port_in_use_and_a_missing_model_are_one_line(trained):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = run_cnnzoo(["serve", trained.best, "--port", port], trained.base)
    assert f"--port {port}: cannot listen there" in one_error_line(done)
    assert "file not found" in one_error_line(run_cnnzoo(["serve", "missing.onnx"], trained.base))


def test_the_page_shows_the_predicted_class_as_bars(trained, onnx_file, tmp_path):
    browser = headless_chromium()
    srv = Server(onnx_file, trained.base)
    try:
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support import expected_conditions as ready
        from selenium.webdriver.support.ui import WebDriverWait

        image = validation_files(trained)[-1]
        want = expected(trained, [image])[0]
        browser.get(srv.url + "/")
        WebDriverWait(browser, 20).until(lambda b: "3 classes" in b.find_element(By.ID, "about").text)
        browser.find_element(By.ID, "file").send_keys(str(image))
        WebDriverWait(browser, 20).until(ready.presence_of_all_elements_located((By.CSS_SELECTOR, "#rows .row")))
        shown = "unknown (looks like none of the 3 classes)" if want.get("unknown") else want["label"]
        assert browser.find_element(By.ID, "label").text == shown
        rows = browser.find_elements(By.CSS_SELECTOR, "#rows .row")
        assert [r.find_element(By.CLASS_NAME, "name").text for r in rows] == [e["label"] for e in want["top_k"]]
        widths = [r.find_element(By.CLASS_NAME, "bar").size["width"] for r in rows]
        assert widths == sorted(widths, reverse=True) and widths[0] > 0
        assert browser.find_element(By.ID, "preview").size["width"] > 0
        shot = tmp_path / "serve-page.png"
        browser.save_screenshot(str(shot))
        picture = Image.open(shot).convert("L")
        assert picture.size[0] > 500 and len(picture.histogram()) - picture.histogram().count(0) > 10  # not blank
        if os.environ.get("CNNZOO_SCREENSHOT_DIR"):  # to look at it
            shutil.copy(shot, Path(os.environ["CNNZOO_SCREENSHOT_DIR"]) / shot.name)
    finally:
        browser.quit()
        srv.stop()


# ============================================================================ what one request may cost


def test_a_chunked_upload_is_counted_as_it_streams_and_never_spooled(server):
    """No Content-Length: the server must stop reading at --max-bytes (200,000 here), not take
    the 300 MB offered into a temporary file first (the old multipart parser did)."""
    multipart_head = (
        b'--XyZ\r\nContent-Disposition: form-data; name="file"; filename="huge.png"\r\nContent-Type: image/png\r\n\r\n'
    )
    for head, content_type, named in [
        (multipart_head, "multipart/form-data; boundary=XyZ", "huge.png"),
        (b"", "application/octet-stream", "upload"),
    ]:
        written = server.proc("wchar")
        sent, (status, answer) = server.stream(head, 300, content_type)
        assert sent < 64 * 2**20, f"the server read {sent:,} bytes before answering"  # socket buffers, not 300 MB
        assert server.proc("wchar") - written < 2**20  # nothing spooled to a file
        assert status == 413 and answer["error"].startswith(f"{named}: more bytes than the limit"), answer
    assert server.get("/health")[0] == 200


def _png_bytes(mode: str, size: tuple[int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size).save(buffer, format="PNG")
    return buffer.getvalue()


DECODE_MEMORY = 2**30  # cnnzoo.deploy.serve.DECODE_MEMORY, which /info reports


def test_decoding_memory_is_bounded_and_given_back(trained, onnx_file):
    """A 124 KB 16-bit 8000x8000 PNG used to cost 1.6 GB to decode, four at once 5.8 GB that
    stayed; now the decodes share one 1 GiB budget, and one that would pass it alone is 413."""
    deep = _png_bytes("I;16", (8000, 8000))
    srv = Server(onnx_file, trained.base, "--max-bytes", str(2**20))
    try:
        srv.post_image("/predict", validation_files(trained)[0].read_bytes())  # warm up: arenas, the session
        rss, peak = srv.proc("VmRSS"), srv.proc("VmHWM")
        with ThreadPoolExecutor(max_workers=4) as pool:
            answers = list(pool.map(lambda _: srv.post_image("/predict", deep), range(4)))
        assert [status for status, _ in answers] == [200] * 4, answers
        grown_peak = srv.proc("VmHWM") - max(peak, rss)
        assert grown_peak * 1024 < DECODE_MEMORY, f"peak grew by {grown_peak / 1024:.0f} MB"
        assert (srv.proc("VmRSS") - rss) * 1024 < 128 * 2**20, "decoding memory was not given back"
        status, answer = srv.post_image("/predict", _png_bytes("RGBA", (8000, 7999)))
        assert status == 413 and answer["error"] == (
            "upload: 8000x7999 pixels of mode RGBA take about 1,037 MiB "
            "to decode; the limit is 1,024 MiB; send it smaller"
        ), answer
        assert srv.get("/info")[1]["decode_memory"] == DECODE_MEMORY
    finally:
        srv.stop()


def _partial_post(port: int, sent: int, claimed: int) -> None:
    """POST /predict claiming ``claimed`` bytes, send ``sent`` of them, and hang up."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
        conn.sendall(
            f"POST /predict HTTP/1.1\r\nHost: test\r\nContent-Type: application/octet-stream\r\n"
            f"Content-Length: {claimed}\r\n\r\n".encode()
            + b"\0" * sent
        )
        time.sleep(0.2)  # the server has started reading the body


def test_a_long_boundary_is_400_and_a_client_that_leaves_mid_body_is_one_log_line(trained, onnx_file):
    """python-multipart refuses a boundary over 256 bytes as its parser is made: that was a 500
    text/plain; a client that hung up mid-body left an `Exception in ASGI application` traceback."""
    srv = Server(onnx_file, trained.base)
    try:
        boundary = "b" * 300
        part = 'Content-Disposition: form-data; name="file"; filename="a.png"'
        body = f"--{boundary}\r\n{part}\r\n\r\nxx\r\n--{boundary}--\r\n"
        status, answer = srv.request(
            "/predict", body.encode(), {"Content-Type": f"multipart/form-data; boundary={boundary}"}
        )
        assert status == 400 and isinstance(answer, dict), (status, answer)
        assert answer["error"].startswith("unreadable multipart form (Boundary length 300 exceeds"), answer
        for _ in range(3):
            _partial_post(srv.port, 1000, 50_000)
        time.sleep(1.0)
        assert srv.get("/health")[0] == 200
    finally:
        srv.stop()
    log = srv.process.stderr.read()
    assert "Traceback" not in log and "Exception in ASGI application" not in log, log
    lines = [line for line in log.splitlines() if line.strip()]
    assert len(lines) == 3, log
    assert all("disconnected before the body of its POST /predict was complete" in line for line in lines), log
