"""wbcnet serve: a real uvicorn server on a free loopback port, real HTTP requests (urllib) and a
real browser, with the shipped model."""
import base64
import io
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi", reason="pip install -e .")
uvicorn = pytest.importorskip("uvicorn", reason="pip install -e .")

from wbcnet.models.checkpoint import load_model
from wbcnet.models.zoo import DEFAULT
from wbcnet.cli.main import main
from wbcnet.inference.count import count_fields
from wbcnet.core.errors import WbcnetError
from wbcnet.inference.predict import predict_paths
from wbcnet.data.cache import decode_images  # noqa: E402
from wbcnet.cells.preprocess import from_meta
from wbcnet.inference.runner import run_model
from wbcnet.serve.app import create_app, is_loopback, listen  # noqa: E402
from wbcnet.serve.worker import ModelWorker  # noqa: E402

from browser import chrome, console_errors, page_state  # noqa: E402
from conftest import REPO, SAMPLE, sample_paths, write_bad_files  # noqa: E402

FIELDS = Path(__file__).parent / "data" / "fields"
MAX_MB, MAX_FILES = 2, 8


@pytest.fixture(scope="module")
def shipped():
    return load_model(None)


@contextmanager
def live(app):
    """`app` on 127.0.0.1:<free port> in a background thread; yields its base URL, stops it after."""
    sock = listen("127.0.0.1", 0)
    srv = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        srv.should_exit = True
        thread.join(10)


@pytest.fixture(scope="module")
def server(shipped):
    """The app on 127.0.0.1:<free port> in a background thread; yields its base URL."""
    model, meta = shipped
    with live(create_app(model, meta, max_upload_mb=MAX_MB, max_files=MAX_FILES)) as url:
        yield url


def multipart(files, field="files") -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = b"".join(f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{name}"\r\n'
                    f"Content-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n"
                    for name, data in files) + f"--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def post(url, files, field="files", chunked=False) -> tuple[int, dict]:
    """POST files [(name, bytes)] as multipart; (status, JSON answer). `chunked`: no Content-Length."""
    body, ctype = multipart(files, field)
    data = (body[i:i + 65536] for i in range(0, len(body), 65536)) if chunked else body
    req = urllib.request.Request(url, data=data, headers={"Content-Type": ctype})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def get(url) -> dict:
    with urllib.request.urlopen(url, timeout=30) as r:
        return json.loads(r.read())


def as_files(paths):
    return [(p.name, p.read_bytes()) for p in paths]


def test_health_and_model_card(server, shipped):
    _, meta = shipped
    assert get(server + "/healthz")["status"] == "ok"
    card = get(server + "/v1/model")
    assert card["classes"] == meta.classes and card["temperature"] == meta.temperature
    assert card["img_size"] == meta.img_size and card["preprocess"]["crop"] == "cell"
    assert [s["name"] for s in card["sources"]] == [s["name"] for s in meta.sources] and "version" in card
    assert {"raabin", "pbc"} <= {s["name"] for s in card["sources"]}  # the shipped model's labs
    assert card["limits"] == {"max_upload_mb": MAX_MB, "max_files": MAX_FILES}
    assert card["name"] == card["zoo"] == DEFAULT  # the server started with the default zoo model
    assert get(server + "/openapi.json")["paths"].keys() >= {"/v1/classify", "/v1/count", "/v1/model",
                                                             "/v1/explain", "/healthz"}


def test_classify_gives_what_predict_gives(server, shipped):
    model, meta = shipped
    paths = sample_paths(per_class=1) + sample_paths(per_class=2)[1::2]  # 2 of each class, in 2 requests
    rows = predict_paths(model, meta, [str(p) for p in paths], progress=False)
    answers = []
    for part in (paths[:MAX_FILES], paths[MAX_FILES:]):
        status, body = post(server + "/v1/classify", as_files(part))
        assert status == 200
        answers += body["results"]
    assert [a["name"] for a in answers] == [p.name for p in paths]
    for a, row in zip(answers, rows):
        assert a["error"] is None and a["cell_found"] is True
        assert ("refer" if a["refer"] else a["class"]) == row["predicted"]
        assert abs(a["confidence"] - float(row["confidence"])) < 0.02
        assert abs(sum(a["probabilities"].values()) - 1) < 1e-3 and a["unfamiliar"] in (True, False)
    assert sum(a["class"] == p.parent.name for a, p in zip(answers, paths)) >= 8  # sample cells are easy


def test_broken_images_get_an_error_and_the_rest_are_classified(server, tmp_path):
    kinds = write_bad_files(tmp_path)
    names = [n for n, kind in kinds.items() if kind != "hidden"][:MAX_FILES]
    status, body = post(server + "/v1/classify?thumbnails=true", as_files(tmp_path / n for n in names))
    assert status == 200
    for name, r in zip(names, body["results"]):
        assert r["name"] == name
        if kinds[name] == "bad":
            assert r["error"] and "class" not in r, r
        else:
            assert r["error"] is None and r["class"] in ("Basophil", "Eosinophil", "Lymphocyte", "Monocyte",
                                                         "Neutrophil")
            thumb = Image.open(io.BytesIO(base64.b64decode(r["input"].split(",", 1)[1])))
            assert thumb.size == (112, 112)
    assert "empty" in body["results"][names.index("empty.jpg")]["error"]


def test_not_an_image_is_415_naming_the_file(server):
    status, body = post(server + "/v1/classify", [("notes.txt", b"a shopping list\n"), ("../../etc/passwd", b"")])
    assert status == 415
    assert "notes.txt: not an image" in body["detail"] and "passwd: empty file" in body["detail"]
    assert "/etc" not in body["detail"]  # a client's path is a label, cut to its last part, never opened
    assert post(server + "/v1/count", [("notes.txt", b"hello")])[0] == 415
    assert post(server + "/v1/classify", [], field="files")[0] == 422  # no files at all


def test_oversized_upload_is_413(server):
    big = [("big.jpg", os.urandom(int(MAX_MB * 1e6) + 100_000))]
    for chunked in (False, True):  # with a Content-Length, and streamed without one
        status, body = post(server + "/v1/classify", big, chunked=chunked)
        assert status == 413 and "--max-upload-mb" in body["detail"], body
    assert get(server + "/healthz")["status"] == "ok"


def test_too_many_files_is_413(server):
    cell = sample_paths(1)[0]
    status, body = post(server + "/v1/classify", as_files([cell] * (MAX_FILES + 1)))
    assert status == 413 and f"at most {MAX_FILES}" in body["detail"]


def test_concurrent_requests_never_mix_answers(server):
    """50 requests from 8 threads, each a different cell, all answered as when sent alone."""
    cells = [p for d in sorted(SAMPLE.iterdir()) if d.is_dir() for p in sorted(d.glob("*.jpg"))[:10]][:50]
    alone = {p.name: post(server + "/v1/classify", as_files([p]))[1]["results"][0] for p in cells}

    def ask(p):
        return p.name, post(server + "/v1/classify", as_files([p]))

    before = get(server + "/healthz")["classified"]
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(ask, cells))
    after = get(server + "/healthz")["classified"]
    assert len(answers) == 50 and after["requests"] - before["requests"] == 50
    for name, (status, body) in answers:
        assert status == 200 and len(body["results"]) == 1
        got, want = body["results"][0], alone[name]
        assert got["name"] == name and got["class"] == want["class"] and got["refer"] == want["refer"]
        # bf16 sums may round differently in a batch of several requests than in one alone
        assert max(abs(got["probabilities"][c] - want["probabilities"][c]) for c in want["probabilities"]) < 0.02
    assert len({a["class"] for a in alone.values()}) == 5


def test_waiting_requests_share_one_forward_pass_and_get_their_own_rows(shipped):
    model, meta = shipped
    images = decode_images([str(p) for p in sample_paths(1)] + [str(sample_paths(2)[1])], from_meta(meta),
                           progress=False).images
    worker = ModelWorker(model, meta)
    try:
        gate = threading.Event()
        busy = worker.call(lambda m, _: gate.wait(30))  # hold the model's thread while the requests queue up
        parts = [images[0:1], images[1:2], images[2:5], images[5:6]]
        futures = [worker.classify(x) for x in parts]
        gate.set()
        assert busy.result(30) is True
        preds = [f.result(30) for f in futures]
        assert worker.stats == {"requests": 4, "batches": 1, "images": 6}
        assert [len(p.probs) for p in preds] == [1, 1, 3, 1]
        together = run_model(model, meta, images)  # the same batch in the same order: the same numbers
        assert np.array_equal(np.concatenate([p.probs for p in preds]), together.probs)
        assert np.array_equal(np.concatenate([p.unfamiliar for p in preds]), together.unfamiliar)
    finally:
        worker.close()


def test_explain_gives_a_grad_cam_overlay(server):
    cell = sample_paths(1)[2]
    status, body = post(server + "/v1/explain", as_files([cell]), field="file")
    assert status == 200 and body["class"] == post(server + "/v1/classify", as_files([cell]))[1]["results"][0]["class"]
    for key in ("input", "gradcam", "attention"):
        img = Image.open(io.BytesIO(base64.b64decode(body[key].split(",", 1)[1])))
        assert img.format == "PNG" and img.size == (224, 224)
    assert np.asarray(Image.open(io.BytesIO(base64.b64decode(body["gradcam"].split(",", 1)[1])))).std() > 10


def test_count_gives_what_wbcnet_count_gives(server, shipped):
    model, meta = shipped
    paths = sorted(FIELDS.glob("*.jpg"))[:3]
    cells = [c for f in count_fields(model, meta, [str(p) for p in paths], progress=False) for c in f.cells]
    status, body = post(server + "/v1/count?drawn=true", as_files(paths) + [("broken.jpg", b"\xff\xd8\xff")])
    assert status == 200
    assert [f["name"] for f in body["fields"]] == [p.name for p in paths] + ["broken.jpg"]
    assert body["fields"][-1]["error"] and not body["fields"][-1]["cells"]
    got = [(c["box"], c["class"], c["edge"]) for f in body["fields"] for c in f["cells"]]
    want = [(list(c.box), c.class_name, c.edge) for c in cells]
    assert got == want and body["cells_found"] == len(cells)
    assert (body["model"], body["finder"]) == (DEFAULT, "shipped")  # which model counted, by its ?model= name
    d = body["differential"]
    assert d["counted"] == sum(c["counted"] for f in body["fields"] for c in f["cells"])
    assert list(d["classes"]) == meta.classes
    for f in body["fields"][:-1]:
        assert Image.open(io.BytesIO(base64.b64decode(f["picture"].split(",", 1)[1]))).size == (640, 480)



def test_count_searches_fields_off_the_model_thread(server, monkeypatch):
    """Reading and searching fields must not hold the model's thread (cell requests would wait)."""
    import wbcnet.serve.app as app_module

    threads = []
    real = app_module.find_fields

    def watched(*a, **kw):
        threads.append(threading.current_thread().name)
        return real(*a, **kw)

    monkeypatch.setattr(app_module, "find_fields", watched)
    status, body = post(server + "/v1/count", as_files(sorted(FIELDS.glob("*.jpg"))[:2]))
    assert status == 200 and body["cells_found"] >= 1
    assert threads and "wbcnet-model" not in threads

def test_only_loopback_without_allow_remote(capsys):
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5") and not is_loopback("lab-pc")
    with pytest.raises(WbcnetError, match="--allow-remote"):
        listen("0.0.0.0", 0)
    listen("0.0.0.0", 0, allow_remote=True).close()
    assert main(["serve", "--host", "10.1.2.3"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "not a loopback address" in err
    busy = listen("127.0.0.1", 0)
    busy.listen()
    try:
        assert main(["serve", "--port", str(busy.getsockname()[1])]) == 2
    finally:
        busy.close()
    assert "cannot listen on 127.0.0.1" in capsys.readouterr().err


def test_wbcnet_serve_command_serves_the_page_until_ctrl_c(tmp_path):
    with listen("127.0.0.1", 0) as probe:
        port = probe.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    data = tmp_path / "lab data"
    proc = subprocess.Popen([sys.executable, "-m", "wbcnet", "serve", "--port", str(port), "--data-dir", str(data)],
                            env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as r:
                    page, policy = r.read().decode(), r.headers["Content-Security-Policy"]
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    proc.kill()  # before reading its output: communicate() on a live server never returns
                    pytest.fail(f"wbcnet serve did not come up: {proc.communicate(timeout=10)[1][-2000:]}")
                time.sleep(0.2)
        assert "<title>wbcnet</title>" in page and "default-src 'none'" in policy
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/page.js", timeout=5) as r:
            assert "classifyAll" in r.read().decode()
        assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", page, re.I)  # nothing from elsewhere
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0 and f"http://127.0.0.1:{port}/" in err
        assert (data / "labs").is_dir() and (data / "models").is_dir()  # made on start, where it was told
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=30)  # a killed process's pipes close; never wait on a busy machine forever


def test_page_in_headless_chromium(server, shipped, tmp_path):
    """Upload two sample cells, see two rows with predict's classes, open a Grad-CAM map, count a
    field; every image loaded and no console error."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    model, meta = shipped
    cells = [sample_paths(1)[1], sample_paths(1)[3]]  # an eosinophil and a monocyte
    rows = predict_paths(model, meta, [str(p) for p in cells], progress=False)
    want = [max(meta.classes, key=lambda c: float(r[f"p_{c}"])) for r in rows]  # the class, referred or not
    with chrome(tmp_path / "profile") as driver:
        driver.get(server + "/")
        wait = WebDriverWait(driver, 30)
        wait.until(lambda d: "mhcnn" in d.find_element(By.ID, "model").text)
        driver.find_element(By.ID, "files").send_keys("\n".join(str(p) for p in cells))
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#cell-table tbody tr.cell")) == 2)
        rows = driver.find_elements(By.CSS_SELECTOR, "#cell-table tbody tr.cell")
        texts = [r.find_elements(By.TAG_NAME, "td")[2].text for r in rows]
        assert texts == want
        assert [r.find_elements(By.TAG_NAME, "td")[1].text for r in rows] == [p.name for p in cells]
        # Download CSV: catch what the page would save.
        driver.execute_script("window.download = (name, rows) => { window.saved = [name, rows]; };")
        driver.find_element(By.ID, "cells-csv").click()
        name, csv_rows = driver.execute_script("return window.saved;")
        assert name == "wbcnet-cells.csv" and csv_rows[0][:3] == ["file", "class", "confidence"]
        assert [(r[0], r[1]) for r in csv_rows[1:]] == [(p.name, c) for p, c in zip(cells, want)]
        rows[0].click()
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".detail img")) >= 2)
        wait.until(lambda d: d.execute_script("return Array.from(document.images).every(i => i.complete)"))
        state = page_state(driver)
        assert state["ready"] == "complete" and state["title"] == "wbcnet"
        assert len(state["images"]) >= 2 + 2  # two thumbnails, the crop and its Grad-CAM
        broken = [alt for alt, complete, width in state["images"] if not (complete and width > 0)]
        assert not broken, f"images that did not load: {broken}"
        if os.environ.get("WBCNET_SCREENSHOT"):
            driver.save_screenshot(str(REPO / "docs" / "serve.png"))

        driver.find_element(By.CSS_SELECTOR, "input[name=mode][value=fields]").click()
        fields = sorted(FIELDS.glob("*.jpg"))
        driver.find_element(By.ID, "files").send_keys("\n".join(str(p) for p in fields))
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#field-pictures img")) == len(fields))
        assert len(driver.find_elements(By.CSS_SELECTOR, "#diff-table tbody tr")) == len(meta.classes)
        assert "white cell" in driver.find_element(By.ID, "fields-summary").text
        assert driver.find_element(By.ID, "fields-model").text == f"Counted with {DEFAULT} ({meta.img_size} px)"
        wait.until(lambda d: d.execute_script("return Array.from(document.images).every(i => i.complete)"))
        broken = [alt for alt, complete, width in page_state(driver)["images"] if not (complete and width > 0)]
        assert not broken, f"images that did not load: {broken}"
        assert not console_errors(driver)
        if os.environ.get("WBCNET_SCREENSHOT"):
            driver.execute_script("document.getElementById('fields').scrollIntoView()")
            shot = Image.open(io.BytesIO(driver.get_screenshot_as_png())).convert("RGB")
            shot.save(REPO / "docs" / "serve_count.jpg", quality=85)  # photographs of fields: JPEG is a quarter the size


def test_openapi_describes_every_answer(server):
    spec = get(server + "/openapi.json")
    schemas = spec["components"]["schemas"]
    for path, method in (("/v1/classify", "post"), ("/v1/count", "post"), ("/v1/explain", "post"),
                         ("/v1/model", "get"), ("/healthz", "get")):
        answer = spec["paths"][path][method]["responses"]["200"]["content"]["application/json"]["schema"]
        assert "$ref" in answer, f"{path}: its answer has no model"
    cell = schemas["CellResult"]["properties"]
    assert {"name", "class", "confidence", "probabilities", "refer", "unfamiliar", "shift_score", "cell_found",
            "box", "edge", "counted", "flag", "error"} <= set(cell)
    assert cell["refer"]["description"]  # each field says what it is, from core/results.py
    count = schemas["CountResult"]["properties"]
    assert {"fields", "cells_found", "differential", "min_confidence"} <= set(count)
    assert {"count", "percent", "ci_low", "ci_high", "referred"} <= set(schemas["ClassCount"]["properties"])


def test_docs_load_nothing_from_elsewhere(server):
    with urllib.request.urlopen(server + "/docs", timeout=30) as r:
        html = r.read().decode()
    assert "swagger" in html.lower()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", html, re.I), html
    assert not re.search(r"https?://", html.replace(server, "")), "the page names an address elsewhere"
    for asset in re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)""", html):
        with urllib.request.urlopen(server + asset if asset.startswith("/") else asset, timeout=30) as r:
            assert r.status == 200 and len(r.read()) > 100, asset


def test_docs_render_swagger_ui_offline_in_headless_chromium(server, tmp_path):
    """The browser may reach nothing but the server: Swagger UI must come from it and list the API."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    with chrome(tmp_path / "profile") as driver:
        driver.get(server + "/docs")
        WebDriverWait(driver, 30).until(lambda d: d.find_elements(By.CSS_SELECTOR, ".opblock-summary-path"))
        shown = {e.text.replace("\u200b", "") for e in driver.find_elements(By.CSS_SELECTOR, ".opblock-summary-path")}
        assert {"/v1/classify", "/v1/count", "/v1/model", "/v1/explain"} <= shown
        loaded = driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
        assert all(u.startswith(server) for u in loaded), [u for u in loaded if not u.startswith(server)]
        assert not console_errors(driver)
