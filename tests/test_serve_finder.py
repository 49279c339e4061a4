"""wbcnet serve's "teach the finder": a lab's whole fields with the finder's finds, the points a person
saves on them, the job that teaches the finder (the real finder.adapt.adapt_finder, a few steps),
the lab model it publishes and /v1/count with it; bad points refused in one line; and the page in
a real browser. A real uvicorn server on a loopback port, as in test_serve_lab.py, over BCCD fields
from tests/data/fields (their white cells' boxes in wbc_boxes.csv).

The shipped finder may be a stand-in that finds nothing: the API test asserts the answers' shape,
never how many cells it finds; the browser test puts a fixed finder in place, so that its clicks
land on a find and beside one."""
import csv
import io
import json
import os
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from PIL import Image

pytest.importorskip("fastapi", reason="pip install -e .")
pytest.importorskip("uvicorn", reason="pip install -e .")

import wbcnet.lab.adapt  # noqa: E402
import wbcnet.cells.locate  # noqa: E402
import wbcnet.lab.suggest  # noqa: E402
from wbcnet.models.checkpoint import load_model
from wbcnet.models.zoo import DEFAULT
from wbcnet.cells.cellbox import CellBox, FieldSearch

from browser import chrome, console_errors, page_state  # noqa: E402
from conftest import REPO, sample_paths  # noqa: E402
from test_serve import as_files, post  # noqa: E402
from test_serve_lab import (CLASSES, HeldAdapt, call, fake_suggest, lab_with_labels, one_line_404,  # noqa: E402
                             own_models, running, wait_job)

FIELDS = Path(__file__).parent / "data" / "fields"
NAMES = ["BloodImage_00010.jpg", "BloodImage_00000.jpg", "BloodImage_00001.jpg"]  # 2, 1 and 1 white cells


@pytest.fixture(scope="module")
def shipped():
    return load_model(None)


def centres() -> dict[str, list[tuple[float, float]]]:
    """The white cells of the test fields: their boxes' centres, in the fields' pixels."""
    out: dict[str, list] = {}
    with open(FIELDS / "wbc_boxes.csv", newline="") as fh:
        for r in csv.DictReader(fh):
            out.setdefault(r["file"], []).append(((int(r["x0"]) + int(r["x1"])) / 2, (int(r["y0"]) + int(r["y1"])) / 2))
    return out


def listed(url: str, name: str) -> dict:
    """A model as /v1/models lists it, by name (models made within one second list in name order)."""
    return next(m for m in call(url + "/v1/models")[1]["models"] if m["name"] == name)


def one_line(status: int, body: dict, code: int, *words: str) -> None:
    assert status == code, body
    assert isinstance(body["detail"], str) and "\n" not in body["detail"], body
    assert all(w in body["detail"] for w in words), body


def upload_fields(url: str, lab: str, names=NAMES) -> list[dict]:
    status, up = post(f"{url}/v1/labs/{lab}/uploads", as_files(FIELDS / n for n in names))
    assert status == 200 and [u["name"] for u in up["saved"]] == list(names), up
    return up["saved"]


def test_teach_the_finder_over_the_api(shipped, tmp_path):
    data = tmp_path / "data"
    marks = centres()
    with running(shipped, data) as url:
        one_line_404(*call(f"{url}/v1/labs/lab-f/fields"), "lab-f")
        upload_fields(url, "lab-f")
        status, up = post(f"{url}/v1/labs/lab-f/uploads", as_files(sample_paths(1)[:1]))  # a single cell: no field
        assert status == 200 and len(up["saved"]) == 1
        status, listing = call(f"{url}/v1/labs/lab-f/fields")
        assert status == 200 and [f["name"] for f in listing["fields"]] == NAMES, listing
        assert listing["corrected"] == 0 and listing["white_cells"] == 0
        for f in listing["fields"]:
            assert (f["width"], f["height"], f["corrected"], f["saved"]) == (640, 480, False, None)
            assert f["picture"] == f"/v1/labs/lab-f/fields/{f['id']}/picture"
        status, body = call(url + "/v1/adapt-finder", "POST", {"lab": "lab-f", "name": "lab-f-finder"})
        one_line(status, body, 422, "no corrected fields")

        for f in listing["fields"][:2]:
            status, field = call(f"{url}/v1/labs/lab-f/fields/{f['id']}")
            assert status == 200, field
            assert (field["model"], field["finder"], field["corrected"], field["points"]) == \
                   (DEFAULT, "shipped", False, [])  # the default zoo model, with the shipped finder
            assert isinstance(field["found"], list)  # how many: the finder's business, not this test's
            for c in field["found"]:
                assert 0 <= c["x"] <= 640 and 0 <= c["y"] <= 480 and c["radius"] > 0 and 0 <= c["score"] <= 1
            assert field["red_cell_px"] is None or field["red_cell_px"] > 0
            with urllib.request.urlopen(url + field["picture"]) as r:
                assert r.headers["Content-Type"] == "image/jpeg"
                assert Image.open(io.BytesIO(r.read())).size == (640, 480)
            points = [{"x": x, "y": y, "kind": "wbc"} for x, y in marks[f["name"]]]
            if f is listing["fields"][0]:
                points.append({"x": 345, "y": 125, "kind": "not"})  # a red cell a finder might take
            status, saved = call(f"{url}/v1/labs/lab-f/fields/{f['id']}/points", "PUT", {"points": points})
            assert status == 200 and saved["corrected"] and saved["saved"], saved
            assert saved["white_cells"] == len(marks[f["name"]]) and saved["not_cells"] == (len(points) > 2)

        status, listing = call(f"{url}/v1/labs/lab-f/fields")
        assert [f["corrected"] for f in listing["fields"]] == [True, True, False]
        assert listing["corrected"] == 2 and listing["white_cells"] == 3
        field = call(f"{url}/v1/labs/lab-f/fields/{listing['fields'][0]['id']}")[1]
        assert field["corrected"] and [(p["x"], p["y"], p["kind"]) for p in field["points"]] == \
               [(113.5, 325.0, "wbc"), (374.5, 361.5, "wbc"), (345.0, 125.0, "not")]
        with urllib.request.urlopen(f"{url}/v1/labs/lab-f/points.csv") as r:
            sheet = r.read().decode()
        ids = {f["name"]: f["id"] for f in listing["fields"]}
        rows = list(csv.DictReader(io.StringIO(sheet)))
        assert sheet.splitlines()[0] == "file,x,y,kind" and len(rows) == 4
        assert rows[0] == {"file": f"{ids[NAMES[0]]}.jpg", "x": "113.5", "y": "325.0", "kind": "wbc"}

        status, job = call(url + "/v1/adapt-finder", "POST", {"lab": "lab-f", "name": "lab-f-finder", "steps": 3})
        assert status == 202 and (job["kind"], job["model"], job["parent"], job["lab"]) == \
               ("finder", "lab-f-finder", DEFAULT, "lab-f"), job
        status, body = call(url + "/v1/adapt-finder", "POST", {"lab": "lab-f", "name": "lab-f-finder", "steps": 3})
        one_line(status, body, 409, "choose another name")  # taken by the job already
        status, body = call(url + "/v1/adapt", "POST", {"lab": "lab-f", "name": "lab-f-finder"})
        one_line(status, body, 409, "choose another name")  # and by the classifier's adapt too
        job = wait_job(url, job["id"], timeout=300)
        assert job["state"] == "done" and job["progress"] == 1, job
        assert "2 fields" in job["message"] and "3 white cells" in job["message"], job
        # The points the job learnt from: the saved ones, as they were when it started.
        assert (data / "jobs" / job["id"] / "points.csv").read_text() == sheet

        models = call(url + "/v1/models")[1]["models"]
        assert [m["name"] for m in models] == [*own_models(), "lab-f-finder"]
        m = models[-1]
        assert (m["lab"], m["parent"], m["job"], m["classes"], m["default"]) == \
               ("lab-f", DEFAULT, job["id"], CLASSES, False) and m["created"]
        assert m["finder"] == {"fields": 2, "white_cells": 3, "not_cells": 1, "steps": 3, "started_from": "shipped"}
        folder = data / "models" / "lab-f-finder"
        assert {"best.safetensors", "best.json", "finder.safetensors", "finder.json", "model-info.json"} <= \
               {p.name for p in folder.iterdir()}
        assert not any(p.name.startswith(".") for p in (data / "models").iterdir())  # no partial folder left

        status, body = post(f"{url}/v1/count?model=lab-f-finder&drawn=true", as_files([FIELDS / NAMES[2]]))
        assert status == 200, body
        assert body["fields"][0]["error"] is None and isinstance(body["fields"][0]["cells"], list)
        assert body["fields"][0]["picture"].startswith("data:image/jpeg;base64,")
        field = call(f"{url}/v1/labs/lab-f/fields/{ids[NAMES[2]]}?model=lab-f-finder")[1]
        assert (field["model"], field["finder"]) == ("lab-f-finder", "lab")

        # Taught again from the lab model: its finder is where the new one starts.
        status, job = call(url + "/v1/adapt-finder", "POST", {"lab": "lab-f", "name": "lab-f-finder-2",
                                                              "parent": "lab-f-finder", "steps": 2})
        job = wait_job(url, job["id"], timeout=300)
        assert job["state"] == "done", job
        m = listed(url, "lab-f-finder-2")
        assert m["parent"] == "lab-f-finder" and m["finder"]["started_from"] == "lab"

        spec = call(url + "/openapi.json")[1]
        for path, method in (("/v1/labs/{lab}/fields", "get"), ("/v1/labs/{lab}/fields/{field_id}", "get"),
                             ("/v1/labs/{lab}/fields/{field_id}/points", "put"), ("/v1/adapt-finder", "post")):
            answers = spec["paths"][path][method]["responses"]
            assert "$ref" in next(iter(answers.values()))["content"]["application/json"]["schema"], path
        assert spec["components"]["schemas"]["FieldPoint"]["properties"]["kind"]["enum"] == ["wbc", "not"]
    try:
        from openapi_spec_validator import validate
    except ImportError:
        return
    validate(spec)


def test_bad_points_and_names_are_refused_in_one_line(shipped, tmp_path):
    data = tmp_path / "data"
    with running(shipped, data) as url:
        field_id = upload_fields(url, "lab-f", NAMES[:1])[0]["id"]
        points = f"{url}/v1/labs/lab-f/fields/{field_id}/points"
        good = {"x": 100, "y": 100, "kind": "wbc"}
        for bad, words in (({"x": 641, "y": 10, "kind": "wbc"}, ("point 2", "outside the field", "640 x 480")),
                           ({"x": 10, "y": -1, "kind": "wbc"}, ("outside the field",)),
                           ({"x": 10, "y": 480.5, "kind": "not"}, ("outside the field",)),
                           ({"x": 10, "y": 10, "kind": "rbc"}, ("point 2", "kind 'rbc'", "wbc, not")),
                           ({"x": 10, "y": 10, "kind": ""}, ("kind",))):
            one_line(*call(points, "PUT", {"points": [good, bad]}), 422, *words)
        req = urllib.request.Request(points, method="PUT", data=b'{"points": [{"x": NaN, "y": 1, "kind": "wbc"}]}',
                                     headers={"Content-Type": "application/json"})
        try:
            urllib.request.urlopen(req)
            raise AssertionError("NaN was taken")
        except urllib.error.HTTPError as e:
            assert e.code == 422 and "outside the field" in json.loads(e.read())["detail"]
        assert not (data / "labs" / "lab-f" / "fields.json").exists()  # nothing saved by a refused request

        one_line_404(*call(f"{url}/v1/labs/lab-f/fields/0099"), "0099")
        one_line_404(*call(f"{url}/v1/labs/lab-f/fields/0099/points", "PUT", {"points": [good]}), "0099")
        one_line_404(*call(f"{url}/v1/labs/lab-f/fields/0099/picture"), "0099")
        one_line_404(*call(f"{url}/v1/labs/nowhere/fields/{field_id}"), "nowhere")
        one_line_404(*call(f"{url}/v1/labs/lab-f/fields/{field_id}?model=nope"), "'nope'")
        one_line(*call(f"{url}/v1/labs/lab-f/fields/..%2E%2E"), 422, "lowercase letters")
        one_line(*call(f"{url}/v1/labs/lab-f/fields/A1/points", "PUT", {"points": [good]}), 422, "field 'A1'")

        one_line(*call(url + "/v1/adapt-finder", "POST", {"lab": "lab-f", "name": "x"}), 422, "no corrected fields")
        assert call(points, "PUT", {"points": []})[0] == 200  # saved with no point: no white cell there...
        text = urllib.request.urlopen(f"{url}/v1/labs/lab-f/points.csv").read().decode()
        assert text.splitlines()[1].endswith(",,,none")  # ...one row with empty x and y
        one_line(*call(url + "/v1/adapt-finder", "POST", {"lab": "lab-f", "name": "x"}), 422, "no white cell marked")
        assert call(points, "PUT", {"points": [{"x": 5, "y": 5, "kind": "not"}]})[0] == 200
        one_line(*call(url + "/v1/adapt-finder", "POST", {"lab": "lab-f", "name": "x"}), 422, "no white cell marked")
        assert call(points, "PUT", {"points": [good]})[0] == 200
        one_line_404(*call(url + "/v1/adapt-finder", "POST", {"lab": "lab-f", "name": "x", "parent": "nope"}), "nope")
        one_line(*call(url + "/v1/adapt-finder", "POST", {"lab": "lab-f", "name": "../x"}), 422, "model name")
        one_line(*call(url + "/v1/adapt-finder", "POST", {"lab": "../lab-f", "name": "x"}), 422, "lab")
        one_line_404(*call(url + "/v1/adapt-finder", "POST", {"lab": "nowhere", "name": "x"}), "nowhere")
        one_line(*call(url + "/v1/adapt-finder", "POST", {"lab": "lab-f", "name": DEFAULT}), 409, "another name")
        for steps in (0, 3001):
            assert call(url + "/v1/adapt-finder", "POST", {"lab": "lab-f", "name": "x", "steps": steps})[0] == 422

        (data / "labs" / "lab-f" / "fields.json").write_text("[1, 2]")  # edited by hand past reading
        status, body = call(f"{url}/v1/labs/lab-f/fields")
        one_line(status, body, 500, "fields.json", "move it away")
        assert str(data) not in body["detail"]  # the server's folders are not a client's business
        assert call(url + "/v1/jobs")[1]["jobs"] == []  # no job was started by any of it


def test_adapting_the_classifier_of_a_lab_model_keeps_its_finder(shipped, tmp_path, monkeypatch):
    """A lab model is finder + classifier: adapting its classifier (a stand-in adapt_lab here) must
    not drop the finder the lab taught it."""
    held = HeldAdapt()
    held.gate.set()
    monkeypatch.setattr(wbcnet.lab.suggest, "suggest", fake_suggest)
    monkeypatch.setattr(wbcnet.lab.adapt, "adapt_lab", held)
    data = tmp_path / "data"
    with running(shipped, data) as url:
        field_id = upload_fields(url, "lab-a", NAMES[1:2])[0]["id"]
        assert call(f"{url}/v1/labs/lab-a/fields/{field_id}/points", "PUT",
                    {"points": [{"x": 375.5, "y": 276.5, "kind": "wbc"}]})[0] == 200
        job = call(url + "/v1/adapt-finder", "POST", {"lab": "lab-a", "name": "finder-a", "steps": 2})[1]
        assert wait_job(url, job["id"], timeout=300)["state"] == "done"
        lab_with_labels(url)
        job = call(url + "/v1/adapt", "POST", {"lab": "lab-a", "name": "both-a", "parent": "finder-a"})[1]
        assert wait_job(url, job["id"])["state"] == "done", job
        m = listed(url, "both-a")
        assert m["finder"]["kept_from"] == "finder-a" and m["finder"]["fields"] == 1
        assert (data / "models" / "both-a" / "finder.json").read_bytes() == \
               (data / "models" / "finder-a" / "finder.json").read_bytes()
        field = call(f"{url}/v1/labs/lab-a/fields/{field_id}?model=both-a")[1]
        assert field["finder"] == "lab"
        job = call(url + "/v1/adapt", "POST", {"lab": "lab-a", "name": "plain-a"})[1]  # from the shipped model
        assert wait_job(url, job["id"])["state"] == "done"
        assert listed(url, "plain-a")["finder"] is None
        assert not (data / "models" / "plain-a" / "finder.json").exists()


def fixed_finder(rgb, finder="learned", weights=None):
    """A finder that finds, in any field, the left white cell of BloodImage_00010 and a red cell beside it."""
    return FieldSearch([CellBox(113.5, 325.0, 90.0, 0.9), CellBox(345.0, 125.0, 50.0, 0.6)], [], 44.0)


def test_teach_the_finder_in_headless_chromium(shipped, tmp_path, monkeypatch):
    """Show a field with its finds drawn, add the white cell the finder missed, strike out the red
    cell it took for one, save the field, teach the finder (3 steps) and see the new model listed."""
    from selenium.webdriver.common.actions.action_builder import ActionBuilder
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    monkeypatch.setattr(wbcnet.cells.locate, "search_field", fixed_finder)
    with running(shipped, tmp_path / "data") as url, chrome(tmp_path / "profile") as driver:
        ids = [u["id"] for u in upload_fields(url, "ward-3")]  # the page opens the lab there is
        driver.get(url + "/")
        wait = WebDriverWait(driver, 60)
        driver.find_element(By.ID, "tab-lab").click()
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#field-svg circle")) == 2)
        assert driver.find_element(By.ID, "lab-name").get_attribute("value") == "ward-3"
        assert "Field 1 of 3: BloodImage_00010.jpg" in driver.find_element(By.ID, "field-name").text
        assert "0 of 3 fields corrected" in driver.find_element(By.ID, "field-counts").text
        assert not driver.find_element(By.ID, "finder-go").is_enabled()
        wait.until(lambda d: d.find_element(By.ID, "field-svg").get_attribute("data-shown") == ids[0])  # drawn
        svg = driver.find_element(By.ID, "field-svg")
        driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", svg)

        def click(x, y):
            """A click at (x, y) in the field's pixels, wherever the page drew it (the SVG's own transform)."""
            at = driver.execute_script("const [svg, x, y] = arguments, m = svg.getScreenCTM();"
                                       "return [m.a * x + m.e, m.d * y + m.f];", svg, x, y)  # in the viewport
            actions = ActionBuilder(driver)
            actions.pointer_action.move_to_location(round(at[0]), round(at[1]))
            actions.pointer_action.click()
            actions.perform()

        click(374.5, 361.5)  # the white cell it missed: added
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#field-svg circle.added")) == 1)
        click(340, 130)  # the red cell it took for a white one: struck out
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#field-svg circle.not")) == 1)
        assert len(driver.find_elements(By.CSS_SELECTOR, "#field-svg circle.found")) == 1
        assert "(not saved yet)" in driver.find_element(By.ID, "field-caption").text
        driver.find_element(By.ID, "field-save").click()
        wait.until(lambda d: "1 of 3 fields corrected" in d.find_element(By.ID, "field-counts").text)
        assert "(saved)" in driver.find_element(By.ID, "field-caption").text
        saved = call(f"{url}/v1/labs/ward-3/fields/{ids[0]}")[1]["points"]
        assert [p["kind"] for p in saved] == ["wbc", "not", "wbc"], saved
        assert (saved[0]["x"], saved[0]["y"], saved[1]["x"], saved[1]["y"]) == (113.5, 325.0, 345.0, 125.0)
        assert abs(saved[2]["x"] - 374.5) < 4 and abs(saved[2]["y"] - 361.5) < 4, saved  # where the click fell

        assert driver.find_element(By.ID, "finder-name").get_attribute("value") == "ward-3-finder-1"
        driver.find_element(By.ID, "finder-steps").clear()
        driver.find_element(By.ID, "finder-steps").send_keys("3")
        driver.find_element(By.ID, "finder-go").click()
        WebDriverWait(driver, 300, poll_frequency=0.2).until(
            lambda d: d.find_element(By.ID, "finder-job").get_attribute("data-state") in ("done", "failed"))
        assert driver.find_element(By.ID, "finder-job").get_attribute("data-state") == "done", \
            driver.find_element(By.ID, "finder-message").text
        assert "ward-3-finder-1 is ready" in driver.find_element(By.ID, "finder-message").text
        chooser = Select(driver.find_element(By.ID, "model-choice"))
        listed = [o.get_attribute("textContent") for o in chooser.options]  # the chooser's tab is hidden
        assert listed[-1].startswith("ward-3-finder-1 (adapted to ward-3, with its finder"), listed
        assert Select(driver.find_element(By.ID, "finder-parent")).first_selected_option.get_attribute("value") \
            == "ward-3-finder-1"
        wait.until(lambda d: "ward-3-finder-1's lab finder" in d.find_element(By.ID, "field-caption").text)
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#field-svg circle")) == 3)
        wait.until(lambda d: d.execute_script("return Array.from(document.images).every(i => i.complete)"))
        broken = [alt for alt, complete, width in page_state(driver)["images"] if not (complete and width > 0)]
        assert not broken, f"images that did not load: {broken}"
        if os.environ.get("WBCNET_SCREENSHOT"):
            (REPO / "docs" / "serve").mkdir(exist_ok=True)
            driver.set_window_size(1300, 1300)
            driver.execute_script("document.getElementById('lab-finder').scrollIntoView()")
            driver.save_screenshot(str(REPO / "docs" / "serve" / "finder-teach.png"))
        assert not console_errors(driver)
