"""wbcnet serve's "Teach it your lab": the models list and ?model=, a lab's uploads, suggested cells
and labels in the data folder, the suggest and adapt jobs (one at a time, reported after a
restart), and the page in a real browser. A real uvicorn server on a loopback port, as in
test_serve.py, with the shipped model and the bundled sample cells only.

The job tests stand in for adapt_lab with a function that waits until the test lets it go, to see
a job queued behind a running one; the lab test and the browser test run the real lab.suggest and
adapt_lab (budget tiny: seconds)."""
import dataclasses
import io
import json
import os
import re
import shutil
import threading
import time
import types
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest
from PIL import Image

pytest.importorskip("fastapi", reason="pip install -e .")
uvicorn = pytest.importorskip("uvicorn", reason="pip install -e .")

import wbcnet.lab.adapt  # noqa: E402
import wbcnet.lab.suggest  # noqa: E402
import wbcnet.models.zoo  # noqa: E402
from wbcnet.models import create_model
from wbcnet.models.checkpoint import SHIPPED, load_model, save_checkpoint
from wbcnet.models.zoo import DEFAULT, ZOO
from wbcnet.core.errors import WbcnetError
from wbcnet.serve.app import create_app  # noqa: E402
from wbcnet.serve.registry import default_name  # noqa: E402

from browser import chrome, console_errors, page_state  # noqa: E402
from conftest import REPO, sample_paths  # noqa: E402
from test_serve import as_files, live, post  # noqa: E402

CLASSES = ["Basophil", "Eosinophil", "Lymphocyte", "Monocyte", "Neutrophil"]


def own_models() -> list[str]:
    """What /v1/models lists before any adapted model, for a server started with the default zoo
    model: it, then the other zoo models this install has (accurate once it is shipped)."""
    return [DEFAULT, *(name for name, m in ZOO.items() if name != DEFAULT and m.installed)]


@pytest.fixture(scope="module")
def shipped():
    return load_model(None)


@contextmanager
def running(shipped, data: Path):
    """A server over `data` on 127.0.0.1:<free port>; yields its base URL, and stops it after."""
    model, meta = shipped
    with live(create_app(model, meta, max_upload_mb=4, max_files=16, data_dir=data, threads=1)) as url:
        yield url


def call(url: str, method: str = "GET", body=None) -> tuple[int, dict]:
    """(status, JSON answer) of a request with a JSON body."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def wait_job(url: str, job_id: str, states=("done", "failed"), timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        status, job = call(f"{url}/v1/jobs/{job_id}")
        assert status == 200, job
        if job["state"] in states:
            return job
        assert time.monotonic() < deadline, f"job still {job['state']}: {job}"
        time.sleep(0.05)


def one_line_404(status: int, body: dict, *words: str) -> None:
    assert status == 404, body
    assert isinstance(body["detail"], str) and "\n" not in body["detail"], body
    assert all(w in body["detail"] for w in words), body


def fake_suggest(parent, unlabelled, n, out, *, kind="auto", seed=0, on_progress=None, progress=True):
    """lab.suggest's contract, without a model: the first n pictures, as the sheet and cells/ it writes."""
    (out / "cells").mkdir(parents=True)
    rows = ["path,label,rank,predicted,confidence,reason"]
    for rank, path in enumerate(unlabelled[:n], start=1):
        Image.open(path).convert("RGB").save(out / "cells" / f"{rank:04d}.png")
        rows.append(f"cells/{rank:04d}.png,,{rank},Neutrophil,0.500,a stand-in")
    (out / "suggest.csv").write_text("\n".join(rows) + "\n")
    return out / "suggest.csv"


class HeldAdapt:
    """adapt_lab's contract: reports progress, waits for `gate`, then writes a loadable checkpoint
    (the shipped one's files). Counts how many run at once."""

    def __init__(self):
        self.gate, self.running, self.most, self.calls = threading.Event(), 0, 0, []
        self.lock = threading.Lock()

    def __call__(self, parent, out, *, labelled=None, unlabelled=None, budget="normal", on_progress=None, **kw):
        with self.lock:
            self.running += 1
            self.most = max(self.most, self.running)
            self.calls.append({"parent": parent, "labelled": labelled, "unlabelled": unlabelled, "budget": budget})
        try:
            on_progress(0.5, "halfway")
            assert self.gate.wait(30), "the test never let the job go"
            on_progress(0.9, "nearly")  # a stopped server's job ends here
            if budget == "normal" and labelled is None:
                raise WbcnetError("too few cells to adapt on")
            out.mkdir(parents=True)
            for suffix in (".safetensors", ".json"):
                shutil.copy(SHIPPED.with_suffix(suffix), out / f"best{suffix}")
            return out
        finally:
            with self.lock:
                self.running -= 1


def lab_with_labels(url: str, n_cells: int = 4, labels=("Neutrophil", "Lymphocyte")) -> list[dict]:
    """Upload cells to lab `lab-a`, have them suggested (by whatever suggest is in place), label some."""
    status, up = post(f"{url}/v1/labs/lab-a/uploads", as_files(sample_paths(1)[:n_cells]))
    assert status == 200 and len(up["saved"]) == n_cells, up
    status, job = call(f"{url}/v1/labs/lab-a/suggest?n={n_cells}", "POST")
    assert status == 202, job
    assert wait_job(url, job["id"])["state"] == "done"
    cells = call(f"{url}/v1/labs/lab-a")[1]["cells"]
    for cell, label in zip(cells, labels):
        assert call(f"{url}/v1/labs/lab-a/labels/{cell['id']}", "PUT", {"label": label})[0] == 200
    return cells


# What scripts/ship_model.py writes into a zoo model's JSON: made-up figures, for the stand-in below.
ACCURATE_CARD = {
    "figures": [{"set": "raabin test split", "n": 1526, "accuracy": 0.975, "accuracy_ci": "0.967-0.982",
                 "macro_f1": 0.952, "macro_f1_ci": "0.937-0.966"},
                {"set": "pbc test split", "n": 1543, "accuracy": 0.987, "accuracy_ci": "0.981-0.992",
                 "macro_f1": 0.985, "macro_f1_ci": "0.978-0.991"}],
    "speed": {"img_per_s": 150.0, "reference_decode_per_s": 1600.0, "cpu": "a 2-core test machine"},
    "parameters": 1_580_000}
FIELDS = Path(__file__).parent / "data" / "fields"


def two_zoo_models(folder: Path, monkeypatch) -> Path:
    """An install with both zoo models: the package's assets folder is `folder` (zoo.ASSETS, read when a
    zoo model's path is asked for), holding a copy of the shipped fast model as fast.* (its card taken
    out) and, as accurate.*, a stand-in for the model being trained: fast's weights in a
    160 px model (its position grid resized), with ACCURATE_CARD in its JSON."""
    folder.mkdir(parents=True)
    shutil.copy(SHIPPED.with_suffix(".safetensors"), folder / "fast.safetensors")
    doc = json.loads(SHIPPED.with_suffix(".json").read_text())
    doc.pop("card", None)  # a model shipped before cards: the page must say so, not fail
    (folder / "fast.json").write_text(json.dumps(doc))
    _, meta = load_model(SHIPPED.with_suffix(".safetensors"))
    big = dataclasses.replace(meta, img_size=160, model_args={**meta.model_args, "img_size": 160}, card=ACCURATE_CARD)
    model = create_model(meta.model, num_classes=len(meta.classes), pretrained=SHIPPED.with_suffix(".safetensors"),
                         **big.model_args)
    save_checkpoint(folder / "accurate", model, big)
    monkeypatch.setattr(wbcnet.models.zoo, "ASSETS", folder)
    assert [n for n, m in ZOO.items() if m.installed] == ["fast", "accurate"]
    return folder


def test_the_default_model_is_named_by_its_zoo_name(tmp_path):
    def name(path):
        return default_name(types.SimpleNamespace(path=path))

    assert name(SHIPPED.with_suffix(".safetensors")) == DEFAULT
    assert name(tmp_path / "runs" / "big-run" / "best.safetensors") == "big-run"
    assert name(tmp_path / "accurate.safetensors") == "accurate-file"  # another file of that name: not the zoo's
    assert name(None) == "server"


def test_both_zoo_models_are_listed_chosen_counted_with_and_adapted_from(tmp_path, monkeypatch):
    held = HeldAdapt()
    held.gate.set()
    monkeypatch.setattr(wbcnet.lab.suggest, "suggest", fake_suggest)
    monkeypatch.setattr(wbcnet.lab.adapt, "adapt_lab", held)
    zoo = two_zoo_models(tmp_path / "assets", monkeypatch)
    cells = as_files(sample_paths(1)[:2])
    field = as_files(sorted(FIELDS.glob("*.jpg"))[:1])
    with running(load_model("fast"), tmp_path / "data") as url:
        status, body = call(url + "/v1/models")
        assert status == 200 and [m["name"] for m in body["models"]] == ["fast", "accurate"], body
        fast, accurate = body["models"]
        assert (fast["default"], fast["zoo"], fast["img_size"]) == (True, True, 112)
        assert (accurate["default"], accurate["zoo"], accurate["img_size"]) == (False, True, 160)
        assert fast["figures"] == [] and fast["speed"] is None and fast["speed_here"] is None  # no card yet
        assert "laptop" in fast["purpose"] and accurate["purpose"]
        assert accurate["figures"] == ACCURATE_CARD["figures"] and accurate["speed"] == ACCURATE_CARD["speed"]
        assert accurate["parameters"] == ACCURATE_CARD["parameters"] and accurate["speed_here"] > 0

        status, card = call(url + "/v1/model?model=accurate")  # loaded now, on first use
        assert status == 200 and (card["name"], card["zoo"], card["img_size"]) == ("accurate", "accurate", 160)
        assert card["figures"] == ACCURATE_CARD["figures"] and card["speed"] == ACCURATE_CARD["speed"]
        status, card = call(url + "/v1/model")
        assert (card["name"], card["zoo"], card["figures"], card["speed"]) == ("fast", "fast", [], None)
        status, body = post(url + "/v1/classify?model=accurate", cells)
        assert status == 200 and all(r["class"] in CLASSES for r in body["results"]), body
        assert post(url + "/v1/explain?model=accurate", cells[:1], field="file")[0] == 200

        status, body = post(url + "/v1/count?model=accurate", field)  # the answer says which model counted
        assert status == 200 and (body["model"], body["finder"]) == ("accurate", "shipped"), body
        status, body = post(url + "/v1/count", field)
        assert status == 200 and body["model"] == "fast"

        lab_with_labels(url)  # suggested by fast; then a lab model from accurate
        status, job = call(url + "/v1/adapt", "POST", {"lab": "lab-a", "name": "lab-acc", "parent": "accurate",
                                                       "budget": "tiny"})
        assert status == 202 and job["parent"] == "accurate", job
        assert wait_job(url, job["id"])["state"] == "done"
        assert Path(held.calls[-1]["parent"]) == zoo / "accurate.safetensors"
        models = call(url + "/v1/models")[1]["models"]
        assert [m["name"] for m in models] == ["fast", "accurate", "lab-acc"]
        assert (models[2]["parent"], models[2]["zoo"], models[2]["finder"]) == ("accurate", False, None)
        assert post(url + "/v1/labs/lab-a/uploads", as_files(sample_paths(1)[4:5]))[0] == 200
        status, job = call(url + "/v1/labs/lab-a/suggest?n=1&model=accurate", "POST")  # accurate suggests too
        assert status == 202 and job["model"] == "accurate" and wait_job(url, job["id"])["state"] == "done", job

        for name in ("fast", "accurate"):  # a zoo name is never a lab model's
            for route in ("/v1/adapt", "/v1/adapt-finder"):
                status, body = call(url + route, "POST", {"lab": "lab-a", "name": name})
                assert status == 409 and "wbcnet's own models" in body["detail"], (route, name, body)

        for suffix in (".safetensors", ".json"):  # accurate taken out of the install: gone from the list, 404
            (zoo / f"accurate{suffix}").unlink()
        assert [m["name"] for m in call(url + "/v1/models")[1]["models"]] == ["fast", "lab-acc"]
        one_line_404(*post(url + "/v1/classify?model=accurate", cells), "'accurate'", "no accurate model")
        status, body = call(url + "/v1/adapt", "POST", {"lab": "lab-a", "name": "lab-acc-2", "parent": "accurate"})
        one_line_404(status, body, "'accurate'")


def test_a_server_started_with_accurate_lists_fast_second(tmp_path, monkeypatch):
    two_zoo_models(tmp_path / "assets", monkeypatch)
    with running(load_model("accurate"), tmp_path / "data") as url:
        models = call(url + "/v1/models")[1]["models"]
        assert [(m["name"], m["default"], m["img_size"]) for m in models] == \
               [("accurate", True, 160), ("fast", False, 112)]
        assert models[0]["figures"] == ACCURATE_CARD["figures"]  # the server's own model's card too
        status, body = post(url + "/v1/count?model=fast", as_files(sorted(FIELDS.glob("*.jpg"))[:1]))
        assert status == 200 and body["model"] == "fast"


def test_models_list_and_unknown_model_is_404(shipped, tmp_path):
    cell = sample_paths(1)[:1]
    with running(shipped, tmp_path / "data") as url:
        status, body = call(url + "/v1/models")
        assert status == 200 and [m["name"] for m in body["models"]] == own_models()
        assert body["models"][0]["default"] is True and body["models"][0]["classes"] == CLASSES
        for route in ("/v1/classify", "/v1/count"):
            one_line_404(*post(f"{url}{route}?model=nope", as_files(cell)), "'nope'", "/v1/models")
        one_line_404(*post(f"{url}/v1/explain?model=nope", as_files(cell), field="file"), "'nope'")
        one_line_404(*call(f"{url}/v1/model?model=nope"), "'nope'")
        one_line_404(*post(f"{url}/v1/classify?model=..%2F..%2Fetc", as_files(cell)))
        status, body = post(f"{url}/v1/classify?model={DEFAULT}", as_files(cell))
        assert status == 200 and body["results"][0]["class"] in CLASSES
        spec = call(url + "/openapi.json")[1]
        for path, method in (("/v1/models", "get"), ("/v1/adapt", "post"), ("/v1/jobs/{job_id}", "get"),
                             ("/v1/labs/{lab}", "get"), ("/v1/labs/{lab}/labels/{cell_id}", "put")):
            answers = spec["paths"][path][method]["responses"]
            assert "$ref" in next(iter(answers.values()))["content"]["application/json"]["schema"], path


def test_a_labs_uploads_suggestions_and_labels_outlive_a_restart(shipped, tmp_path):
    """The real lab.suggest over 10 sample cells; labels stored at once, in lab.suggest's sheet."""
    data = tmp_path / "data"
    cells = sample_paths(2)
    with running(shipped, data) as url:
        status, up = post(f"{url}/v1/labs/lab-a/uploads", as_files(cells) + [("notes.txt", b"not a picture")])
        assert status == 200 and len(up["saved"]) == 10 and up["new"] == 10
        assert up["refused"][0]["name"] == "notes.txt" and up["saved"][0]["name"] == cells[0].name
        status, job = call(f"{url}/v1/labs/lab-a/suggest?n=6", "POST")
        assert status == 202 and job["kind"] == "suggest" and job["state"] in ("queued", "running")
        job = wait_job(url, job["id"])
        assert job["state"] == "done" and job["progress"] == 1 and "6 cells suggested" in job["message"], job
        lab = call(f"{url}/v1/labs/lab-a")[1]
        assert lab["uploads"] == 10 and lab["new_uploads"] == 0 and len(lab["cells"]) == 6
        for c in lab["cells"]:
            assert c["label"] == "" and c["predicted"] in CLASSES and c["reason"] and 0 <= c["confidence"] <= 1
        with urllib.request.urlopen(url + lab["cells"][0]["picture"]) as r:
            assert Image.open(io.BytesIO(r.read())).format == "PNG"
        ids = [c["id"] for c in lab["cells"]]
        assert call(f"{url}/v1/labs/lab-a/labels/{ids[0]}", "PUT", {"label": "Neutrophil"})[1]["label"] == "Neutrophil"
        assert call(f"{url}/v1/labs/lab-a/labels/{ids[1]}", "PUT", {"label": "Eosinophil"})[0] == 200
        assert call(f"{url}/v1/labs/lab-a/labels/{ids[2]}", "PUT", {"label": "skip"})[0] == 200
        assert call(f"{url}/v1/labs/lab-a/labels/{ids[3]}", "PUT", {"label": "Lymphocyte"})[0] == 200
        assert call(f"{url}/v1/labs/lab-a/labels/{ids[3]}", "PUT", {"label": None})[1]["label"] == ""  # taken back
        status, body = call(f"{url}/v1/labs/lab-a/labels/{ids[4]}", "PUT", {"label": "Platelet"})
        assert status == 422 and "not one of Basophil" in body["detail"]
        one_line_404(*call(f"{url}/v1/labs/lab-a/labels/9-9999", "PUT", {"label": "Neutrophil"}), "9-9999")
        one_line_404(*call(f"{url}/v1/labs/nowhere"), "nowhere")
        status, body = call(f"{url}/v1/labs/lab-a/suggest", "POST")  # every picture looked at already
        assert status == 409 and "upload more" in body["detail"]
    with running(shipped, data) as url:  # a new server on the same folder
        labels = call(f"{url}/v1/labs/lab-a/labels")[1]
        assert [(x["id"], x["label"]) for x in labels["labels"]] == [(ids[0], "Neutrophil"), (ids[1], "Eosinophil"),
                                                                    (ids[2], "skip")]
        assert labels["counts"] == {"Basophil": 0, "Eosinophil": 1, "Lymphocyte": 0, "Monocyte": 0, "Neutrophil": 1,
                                    "skip": 1}
        assert call(f"{url}/v1/labs")[1]["labs"] == [{"lab": "lab-a", "uploads": 10, "cells": 6, "labelled": 2}]
        with urllib.request.urlopen(f"{url}/v1/labs/lab-a/labels.csv") as r:
            sheet = r.read().decode()
    # The sheet the page fills is the one `wbcnet adapt --suggest` writes: the same columns, paths
    # relative to it, so labelling in the page and filling it by hand are the same thing.
    assert sheet.splitlines()[0] == "path,label,rank,predicted,confidence,reason"
    assert sheet == (data / "labs" / "lab-a" / "labels.csv").read_text()
    first = sheet.splitlines()[1].split(",")
    assert first[:2] == ["rounds/1/cells/0001.png", "Neutrophil"]
    assert (data / "labs" / "lab-a" / first[0]).is_file()


def test_the_data_folder_is_made_when_something_is_first_stored(shipped, tmp_path):
    """Classifying, reading and refused requests store nothing, so they make no folder; the first
    upload makes the folder with its parts."""
    model, meta = shipped
    data = tmp_path / "later" / "data"
    cell = sample_paths(1)[:1]
    with live(create_app(model, meta, max_files=16, data_dir=data, threads=1, create_data=False)) as url:
        for route in ("/v1/models", "/v1/labs", "/v1/jobs", "/v1/model"):
            assert call(url + route)[0] == 200, route
        for route in ("/v1/labs/lab-a", "/v1/labs/lab-a/labels", "/v1/labs/lab-a/labels.csv", "/v1/labs/lab-a/fields",
                      "/v1/labs/lab-a/points.csv", "/v1/jobs/0123456789ab", "/v1/labs/lab-a/cells/1-0001/picture"):
            one_line_404(*call(url + route))
        one_line_404(*call(url + "/v1/labs/lab-a/labels/1-0001", "PUT", {"label": "Neutrophil"}))
        one_line_404(*call(url + "/v1/labs/lab-a/suggest", "POST"))
        one_line_404(*call(url + "/v1/adapt", "POST", {"lab": "lab-a", "name": "m"}))
        one_line_404(*call(url + "/v1/adapt-finder", "POST", {"lab": "lab-a", "name": "m"}))
        assert post(url + "/v1/classify", as_files(cell))[0] == 200
        assert not (tmp_path / "later").exists()
        status, up = post(f"{url}/v1/labs/lab-a/uploads", as_files(cell))
        assert status == 200 and len(up["saved"]) == 1
        assert sorted(p.name for p in data.iterdir()) == ["labs", "models", "tmp"]
        assert [p.name for p in (data / "labs" / "lab-a" / "uploads").iterdir()] == ["0001.jpg"]
    assert not any((data / "tmp").iterdir())


def test_wbcnet_serve_makes_no_data_folder_until_told_to_store(tmp_path):
    """`wbcnet serve` in a folder, used only to classify: it says where it would keep a lab's files,
    and leaves the folder it ran in as it was."""
    with serve_command(["--port", "0"], cwd=tmp_path) as (url, lines):
        assert call(url + "/v1/labs")[1] == {"labs": []} and call(url + "/healthz")[0] == 200
        assert post(url + "/v1/classify", as_files(sample_paths(1)[:2]))[0] == 200
    said = [line for line in lines if "kept in" in line]
    assert said == [f"wbcnet serve: labs, labels and adapted models are kept in {tmp_path.resolve() / 'wbcnet-data'}, made "
                    f"when the first is stored"], lines
    assert not any(tmp_path.iterdir())


@contextmanager
def serve_command(args: list[str], cwd: Path, env: dict | None = None, timeout: float = 90):
    """`wbcnet serve ARGS` as a process in `cwd`; yields (its URL, the lines it wrote to stderr, which
    grow while it runs), and stops it with Ctrl+C (SIGINT) after, expecting exit 0."""
    import signal
    import subprocess
    import sys

    environ = {**os.environ, "PYTHONPATH": str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""),
               **(env or {})}
    proc = subprocess.Popen([sys.executable, "-m", "wbcnet", "serve", *args], cwd=cwd, env=environ,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(line.rstrip("\n") for line in proc.stderr), daemon=True)
    reader.start()
    try:
        deadline, url = time.monotonic() + timeout, None
        while True:  # its address is said before it listens: asked until it answers
            first = next((line for line in lines if line.startswith("wbcnet serve: http://")), None)
            url = first.split()[2].rstrip("/") if first else None
            try:
                if url and urllib.request.urlopen(url + "/healthz", timeout=5).status == 200:
                    break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                reader.join(10)
                pytest.fail("wbcnet serve did not come up: " + "\n".join(lines[-20:]))
            time.sleep(0.1)
        yield url, lines
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0, lines
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
        reader.join(10)


def test_client_named_paths_are_refused(shipped, tmp_path, monkeypatch):
    monkeypatch.setattr(wbcnet.lab.suggest, "suggest", fake_suggest)
    data = tmp_path / "data"
    with running(shipped, data) as url:
        cell = as_files(sample_paths(1)[:1])
        for lab in ("..", "UPPER", "a_b", "-lead", "x" * 41, "%2E%2E"):
            status, body = post(f"{url}/v1/labs/{lab}/uploads", cell)
            assert status == 422 and "lowercase letters" in body["detail"], (lab, body)
        for lab in ("..%2F..%2Ftmp", "a%2Fb"):  # a slash never reaches a handler
            assert post(f"{url}/v1/labs/{lab}/uploads", cell)[0] in (404, 422)
        status, up = post(f"{url}/v1/labs/lab-a/uploads", [("../../../evil.jpg", cell[0][1])])
        assert status == 200 and up["saved"][0]["name"] == "evil.jpg"  # a label; the file is the server's 0001.jpg
        assert sorted(p.name for p in (data / "labs" / "lab-a" / "uploads").iterdir()) == ["0001.jpg"]
        status, job = call(f"{url}/v1/labs/lab-a/suggest?n=1", "POST")
        wait_job(url, job["id"])
        assert call(f"{url}/v1/labs/lab-a/labels/..%2E%2E", "PUT", {"label": "Neutrophil"})[0] == 422
        status, body = call(url + "/v1/adapt", "POST", {"lab": "lab-a", "name": "../../evil"})
        assert status == 422 and "model name" in body["detail"]
        status, body = call(url + "/v1/adapt", "POST", {"lab": "../lab-a", "name": "ok"})
        assert status == 422 and "lab" in body["detail"]
        one_line_404(*call(url + "/v1/adapt", "POST", {"lab": "lab-a", "name": "ok", "parent": "../../models/x"}))
        assert call(url + "/v1/jobs/..%2E", "GET")[0] == 422
        # The sheet is a file a person may edit: a path in it that leaves the lab's folder is never served.
        sheet = data / "labs" / "lab-a" / "labels.csv"
        sheet.write_text(sheet.read_text().replace("rounds/1/cells/0001.png", "rounds/1/../../../../../../etc/passwd"))
        cell_id = call(f"{url}/v1/labs/lab-a")[1]["cells"][0]["id"]
        one_line_404(*call(f"{url}/v1/labs/lab-a/cells/{cell_id}/picture"), "not there")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]  # nothing written beside the data folder


def test_one_job_runs_at_a_time_and_reports_its_progress(shipped, tmp_path, monkeypatch):
    held = HeldAdapt()
    monkeypatch.setattr(wbcnet.lab.suggest, "suggest", fake_suggest)
    monkeypatch.setattr(wbcnet.lab.adapt, "adapt_lab", held)
    with running(shipped, tmp_path / "data") as url:
        lab_with_labels(url)
        status, a = call(url + "/v1/adapt", "POST", {"lab": "lab-a", "name": "lab-a-1", "budget": "tiny"})
        assert status == 202 and a["kind"] == "adapt" and a["model"] == "lab-a-1" and a["parent"] == DEFAULT
        status, b = call(url + "/v1/adapt", "POST", {"lab": "lab-a", "name": "lab-a-2", "parent": DEFAULT,
                                                     "budget": "tiny"})
        assert status == 202
        status, body = call(url + "/v1/adapt", "POST", {"lab": "lab-a", "name": "lab-a-2"})
        assert status == 409 and "choose another name" in body["detail"]  # taken by a queued job already
        a = wait_job(url, a["id"], states=("running",))
        deadline = time.monotonic() + 10
        while a["progress"] != 0.5 and time.monotonic() < deadline:
            a = call(f"{url}/v1/jobs/{a['id']}")[1]
        assert a["progress"] == 0.5 and a["message"] == "halfway"
        b = call(f"{url}/v1/jobs/{b['id']}")[1]
        assert b["state"] == "queued" and b["ahead"] == 1
        assert call(url + "/v1/models")[0] == 200  # the server answers while a job runs
        held.gate.set()
        assert wait_job(url, a["id"])["state"] == "done" and wait_job(url, b["id"])["state"] == "done"
        assert held.most == 1
        # The labels as they were when Adapt was pressed: a manifest of the labelled cells only.
        manifest = Path(held.calls[0]["labelled"]).read_text().splitlines()
        assert manifest[0] == "path,label" and [r.split(",")[1] for r in manifest[1:]] == ["Neutrophil", "Lymphocyte"]
        assert len(held.calls[0]["unlabelled"]) == 4
        models = call(url + "/v1/models")[1]["models"]
        assert [m["name"] for m in models] == [*own_models(), "lab-a-1", "lab-a-2"]
        m = models[len(own_models())]
        assert (m["parent"], m["lab"], m["labelled"], m["unlabelled"], m["budget"], m["job"], m["classes"]) == \
               (DEFAULT, "lab-a", 2, 4, "tiny", a["id"], CLASSES) and m["created"]
        status, body = post(url + "/v1/classify?model=lab-a-1", as_files(sample_paths(1)[:2]))
        assert status == 200 and [r["class"] for r in body["results"]][0] in CLASSES
        status, body = post(url + "/v1/count?model=lab-a-2", as_files(sample_paths(1)[:1]))
        assert status == 200
        status, c = call(url + "/v1/adapt", "POST", {"lab": "lab-a", "name": "lab-a-3", "parent": "lab-a-1"})
        job = wait_job(url, c["id"])  # HeldAdapt refuses a normal budget without labels; here it has them
        assert job["state"] == "done" and call(url + "/v1/models")[1]["models"][-1]["parent"] == "lab-a-1"
        jobs = call(url + "/v1/jobs")[1]["jobs"]
        assert [j["id"] for j in jobs[:3]] == [c["id"], b["id"], a["id"]]


def test_a_failed_job_says_why_in_one_line(shipped, tmp_path, monkeypatch):
    held = HeldAdapt()
    held.gate.set()
    monkeypatch.setattr(wbcnet.lab.suggest, "suggest", fake_suggest)
    monkeypatch.setattr(wbcnet.lab.adapt, "adapt_lab", held)
    with running(shipped, tmp_path / "data") as url:
        lab_with_labels(url, labels=())  # pictures, no labels
        status, job = call(url + "/v1/adapt", "POST", {"lab": "lab-a", "name": "no-labels"})
        job = wait_job(url, job["id"])
        assert job["state"] == "failed" and job["error"] == "too few cells to adapt on"
        assert [m["name"] for m in call(url + "/v1/models")[1]["models"]] == own_models()
        assert not list((tmp_path / "data" / "models").iterdir())  # nothing half-made left behind


def test_a_restart_reports_unfinished_jobs_as_interrupted(shipped, tmp_path, monkeypatch):
    held = HeldAdapt()
    monkeypatch.setattr(wbcnet.lab.suggest, "suggest", fake_suggest)
    monkeypatch.setattr(wbcnet.lab.adapt, "adapt_lab", held)
    data = tmp_path / "data"
    with running(shipped, data) as url:
        lab_with_labels(url)
        a = call(url + "/v1/adapt", "POST", {"lab": "lab-a", "name": "first"})[1]
        b = call(url + "/v1/adapt", "POST", {"lab": "lab-a", "name": "second"})[1]
        wait_job(url, a["id"], states=("running",))
    with running(shipped, data) as url:  # the first server stopped with one job running, one queued
        for job_id in (a["id"], b["id"]):
            job = call(f"{url}/v1/jobs/{job_id}")[1]
            assert job["state"] == "failed" and job["error"].startswith("interrupted"), job
        assert [m["name"] for m in call(url + "/v1/models")[1]["models"]] == own_models()
        assert not any(p.name.startswith(".partial") for p in (data / "models").iterdir())
        held.gate.set()  # the old server's job wakes up: it must end without writing anything
        deadline = time.monotonic() + 10
        while held.running and time.monotonic() < deadline:
            time.sleep(0.05)
        assert held.running == 0
        assert [m["name"] for m in call(url + "/v1/models")[1]["models"]] == own_models()
        assert call(f"{url}/v1/jobs/{a['id']}")[1]["state"] == "failed"
        job = call(url + "/v1/adapt", "POST", {"lab": "lab-a", "name": "first", "budget": "tiny"})[1]
        assert wait_job(url, job["id"])["state"] == "done"  # its name is free again, the lab as it was
    saved = {j["id"]: j["state"] for j in json.loads((data / "jobs.json").read_text())}
    assert saved[a["id"]] == saved[b["id"]] == "failed" and saved[job["id"]] == "done"


def test_a_data_folder_edited_by_hand_is_said_in_one_line_or_skipped(shipped, tmp_path):
    from wbcnet.serve.jobs import Jobs

    data = tmp_path / "data"
    (data / "models" / "broken").mkdir(parents=True)
    (data / "models" / "broken" / "model-info.json").write_text("{not json")
    with running(shipped, data) as url:  # a model record past reading is left out, not a 500
        assert [m["name"] for m in call(url + "/v1/models")[1]["models"]] == own_models()
    (data / "jobs.json").write_text("[{\"id\": 1, \"oops\": true}]")
    with pytest.raises(WbcnetError, match="jobs.json: not a jobs file.*move it away"):
        Jobs(data / "jobs.json")


def test_teach_it_your_lab_in_headless_chromium(shipped, tmp_path):
    """Upload ten sample cells, see the suggestions, label one by click and one by key, adapt (the
    real adapt_lab, budget tiny), watch it finish, classify a cell with the adapted model."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    cells = sample_paths(2)
    with running(shipped, tmp_path / "data") as url, chrome(tmp_path / "profile") as driver:
        driver.get(url + "/")
        wait = WebDriverWait(driver, 60)
        wait.until(lambda d: "mhcnn" in d.find_element(By.ID, "model").text)
        assert driver.find_element(By.ID, "tab-lab").get_attribute("aria-selected") != "true"
        driver.find_element(By.ID, "tab-lab").click()
        assert driver.find_element(By.ID, "lab").is_displayed() and not driver.find_element(By.ID, "use").is_displayed()
        driver.find_element(By.ID, "lab-n").clear()
        driver.find_element(By.ID, "lab-n").send_keys("6")
        driver.find_element(By.ID, "lab-files").send_keys("\n".join(str(p) for p in cells))
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#lab-cells .lab-cell img")) == 6)
        wait.until(lambda d: d.execute_script("return Array.from(document.images).every(i => i.complete)"))
        broken = [alt for alt, complete, width in page_state(driver)["images"] if not (complete and width > 0)]
        assert not broken, f"images that did not load: {broken}"
        assert "10 pictures in lab my-lab" in driver.find_element(By.ID, "lab-uploads").text

        cards = driver.find_elements(By.CSS_SELECTOR, "#lab-cells .lab-cell")
        said = [c["predicted"] for c in call(url + "/v1/labs/my-lab")[1]["cells"]]  # what a person would agree with
        cards[0].find_element(By.CSS_SELECTOR, f"button[aria-label={said[0]}]").click()  # by click
        wait.until(lambda d: "labelled" in cards[0].get_attribute("class"))
        driver.execute_script("arguments[0].focus()", cards[1])
        ActionChains(driver).send_keys(said[1][0].lower()).perform()  # by key (B E L M N); then the next cell
        wait.until(lambda d: "labelled" in cards[1].get_attribute("class"))
        wait.until(lambda d: d.switch_to.active_element == cards[2])
        ActionChains(driver).send_keys("x").perform()  # not a white cell
        wait.until(lambda d: "skipped" in cards[2].get_attribute("class"))
        pressed = cards[1].find_element(By.CSS_SELECTOR, "button[aria-pressed=true]")
        assert pressed.get_attribute("aria-label") == said[1] and pressed.text == said[1][0]
        status, labels = call(url + "/v1/labs/my-lab/labels")
        assert [x["label"] for x in labels["labels"]] == [said[0], said[1], "skip"]
        assert "2 labelled" in driver.find_element(By.ID, "lab-counts").text

        assert driver.find_element(By.ID, "adapt-name").get_attribute("value") == "my-lab-1"
        Select(driver.find_element(By.ID, "adapt-budget")).select_by_value("tiny")
        driver.find_element(By.ID, "adapt-go").click()
        wait.until(lambda d: d.find_element(By.ID, "adapt-job").is_displayed())
        seen = set()

        def finished(d):
            seen.add(float(d.find_element(By.ID, "adapt-progress").get_attribute("value")))
            return d.find_element(By.ID, "adapt-job").get_attribute("data-state") in ("done", "failed")

        WebDriverWait(driver, 90, poll_frequency=0.1).until(finished)
        assert driver.find_element(By.ID, "adapt-job").get_attribute("data-state") == "done", \
            driver.find_element(By.ID, "adapt-message").text
        assert "my-lab-1 is ready" in driver.find_element(By.ID, "adapt-message").text
        assert float(driver.find_element(By.ID, "adapt-progress").get_attribute("value")) == 1
        assert len(seen) >= 2, seen  # the bar moved while the page watched
        if os.environ.get("WBCNET_SCREENSHOT"):
            (REPO / "docs" / "serve").mkdir(exist_ok=True)
            driver.set_window_size(1300, 1400)  # the four steps in one picture
            driver.execute_script("window.scrollTo(0, 0)")
            driver.save_screenshot(str(REPO / "docs" / "serve" / "lab.png"))

        use = driver.find_element(By.ID, "use-adapted")
        assert use.is_displayed() and "my-lab-1" in use.text
        use.click()
        assert driver.find_element(By.ID, "use").is_displayed()
        assert Select(driver.find_element(By.ID, "model-choice")).first_selected_option.get_attribute("value") \
            == "my-lab-1"
        wait.until(lambda d: "adapted to lab my-lab" in d.find_element(By.ID, "model").text)
        driver.find_element(By.ID, "files").send_keys(str(cells[0]))
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#cell-table tbody tr.cell")) == 1)
        row = driver.find_element(By.CSS_SELECTOR, "#cell-table tbody tr.cell")
        shown = row.find_elements(By.TAG_NAME, "td")[2].text
        model, meta = load_model(tmp_path / "data" / "models" / "my-lab-1")
        assert shown in meta.classes
        assert not console_errors(driver)


def test_the_chooser_shows_both_zoo_models_in_headless_chromium(tmp_path, monkeypatch):
    """Both zoo models in the chooser and in adapt's "start from", each with its input size and what
    its card says; choosing accurate says its figures under the chooser, and its count says it counted."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    two_zoo_models(tmp_path / "assets", monkeypatch)
    fields = sorted(FIELDS.glob("*.jpg"))[:2]
    with running(load_model("fast"), tmp_path / "data") as url, chrome(tmp_path / "profile") as driver:
        driver.get(url + "/")
        wait = WebDriverWait(driver, 60)
        chooser = Select(driver.find_element(By.ID, "model-choice"))
        wait.until(lambda d: len(chooser.options) == 2 and "mhcnn" in d.find_element(By.ID, "model").text)
        fast, accurate = (o.text for o in chooser.options)
        assert fast == "fast \u2014 112 px (the server's own)", fast  # no card yet: nothing more to say
        assert re.fullmatch(r"accurate \u2014 160 px, ~\d+ cells/s here, Raabin acc 0\.975", accurate), accurate
        for other in ("adapt-parent", "finder-parent"):
            options = Select(driver.find_element(By.ID, other)).options  # on the hidden tab: textContent, not text
            assert [o.get_attribute("textContent") for o in options] == [fast, accurate], other
        assert "No in-lab figures in its card yet" in driver.find_element(By.ID, "model-choice-note").text
        assert driver.find_element(By.ID, "model").text.startswith("Model fast (mhcnn, 112 px")

        chooser.select_by_value("accurate")
        wait.until(lambda d: d.find_element(By.ID, "model").text.startswith("Model accurate (mhcnn, 160 px"))
        note = driver.find_element(By.ID, "model-choice-note").text
        assert "raabin test split (1526 cells): accuracy 0.975 (0.967-0.982), macro-F1 0.952 (0.937-0.966)" in note
        assert "pbc test split" in note and "cells/s here (estimated from 150/s on a 2-core test machine)" in note
        driver.find_element(By.CSS_SELECTOR, "input[name=mode][value=fields]").click()
        driver.find_element(By.ID, "files").send_keys("\n".join(str(p) for p in fields))
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#field-pictures img")) == len(fields))
        assert driver.find_element(By.ID, "fields-model").text == "Counted with accurate (160 px)"
        wait.until(lambda d: d.execute_script("return Array.from(document.images).every(i => i.complete)"))
        assert not console_errors(driver)


@pytest.mark.skipif(not all(m.installed for m in ZOO.values()), reason="not every zoo model is installed")
def test_the_installed_zoo_in_headless_chromium(tmp_path):
    """The models this install ships, as a lab sees them: each option carries its own card's Raabin-WBC
    accuracy, and a count with accurate says so (WBCNET_SCREENSHOT=1: docs/serve/zoo.png)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    cards = {n: json.loads(m.path.with_suffix(".json").read_text())["card"] for n, m in ZOO.items()}
    raabin = {n: next(f for f in c["figures"] if f["set"].startswith("raabin")) for n, c in cards.items()}
    fields = sorted(FIELDS.glob("*.jpg"))[:2]
    with running(load_model("fast"), tmp_path / "data") as url, chrome(tmp_path / "profile") as driver:
        driver.get(url + "/")
        wait = WebDriverWait(driver, 60)
        chooser = Select(driver.find_element(By.ID, "model-choice"))
        wait.until(lambda d: len(chooser.options) == 2 and "mhcnn" in d.find_element(By.ID, "model").text)
        for option, name in zip(chooser.options, ("fast", "accurate")):
            assert option.text.startswith(f"{name} \u2014") and f"Raabin acc {raabin[name]['accuracy']:.3f}" in option.text
        chooser.select_by_value("accurate")
        wait.until(lambda d: d.find_element(By.ID, "model").text.startswith("Model accurate (mhcnn, 160 px"))
        assert f"macro-F1 {raabin['accurate']['macro_f1']:.3f}" in driver.find_element(By.ID, "model-choice-note").text
        driver.find_element(By.CSS_SELECTOR, "input[name=mode][value=fields]").click()
        driver.find_element(By.ID, "files").send_keys("\n".join(str(p) for p in fields))
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#field-pictures img")) == len(fields))
        assert driver.find_element(By.ID, "fields-model").text == "Counted with accurate (160 px)"
        wait.until(lambda d: d.execute_script("return Array.from(document.images).every(i => i.complete)"))
        assert not console_errors(driver)
        if os.environ.get("WBCNET_SCREENSHOT"):
            # A select's open list is drawn outside the page, where a screenshot never sees it: shown
            # here as a list box, so the picture has both models' lines.
            driver.execute_script("const s = document.getElementById('model-choice'); s.size = s.options.length;"
                                  "window.scrollTo(0, 0);")
            (REPO / "docs" / "serve").mkdir(exist_ok=True)
            driver.save_screenshot(str(REPO / "docs" / "serve" / "zoo.png"))
