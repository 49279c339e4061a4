"""wbcnet serve for other machines: a token or a password file on every /v1 route (not /healthz),
401 in one line for a missing or wrong one, the OpenAPI description of it, the command's flags,
and the page's sign-in in a real browser. A real uvicorn server on a loopback port (test_serve.py's
`live`), the shipped model; passwords hashed with few rounds, to be quick."""
import base64
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request

import pytest

pytest.importorskip("fastapi", reason="pip install -e .")
pytest.importorskip("uvicorn", reason="pip install -e .")

import wbcnet.lab.suggest  # noqa: E402
from wbcnet.models.checkpoint import load_model
from wbcnet.models.zoo import DEFAULT
from wbcnet.cli.main import main
from wbcnet.core.errors import WbcnetError
from wbcnet.serve.access import Access, read_users, users_line, verify_password  # noqa: E402
from wbcnet.serve.app import create_app  # noqa: E402

from browser import chrome, console_errors, page_state  # noqa: E402
from conftest import REPO, sample_paths  # noqa: E402
from test_serve import as_files, live, multipart  # noqa: E402
from test_serve_lab import fake_suggest, serve_command  # noqa: E402

TOKEN = "t0ken-of-this-test-server"
PASSWORD = "correct horse battery"


@pytest.fixture(scope="module")
def shipped():
    return load_model(None)


@pytest.fixture(scope="module")
def users_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("users") / "users.txt"
    path.write_text("# the lab's technicians\n" + users_line("alice", PASSWORD, iterations=1000) + "\n\n"
                    + users_line("bob", "another password", iterations=1000) + "\n")
    return path


def request(url: str, method: str = "GET", body: bytes | None = None, headers: dict | None = None,
            auth: str | None = None) -> tuple[int, dict, object]:
    """(status, JSON answer or {}, headers) of one request; `auth`: the Authorization header."""
    headers = dict(headers or {})
    if auth:
        headers["Authorization"] = auth
    req = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            raw, status, got = r.read(), r.status, r.headers
    except urllib.error.HTTPError as e:
        raw, status, got = e.read(), e.code, e.headers
    try:
        return status, json.loads(raw), got
    except ValueError:
        return status, {}, got


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def refused(answer, *words) -> None:
    status, body, headers = answer
    assert status == 401, (status, body)
    assert isinstance(body["detail"], str) and "\n" not in body["detail"], body
    assert all(w in body["detail"] for w in words), body
    assert headers["WWW-Authenticate"], "a 401 names the schemes it takes"


# Requests to every kind of /v1 route, read and write, that an open server would answer.
def every_route(url: str, cell: bytes) -> list[tuple[str, str, bytes | None, dict]]:
    files, ctype = multipart([("cell.jpg", cell)])
    one, one_type = multipart([("cell.jpg", cell)], field="file")
    form, js = {"Content-Type": ctype}, {"Content-Type": "application/json"}
    return [("GET", "/v1/model", None, {}), ("GET", "/v1/models", None, {}), ("GET", "/v1/labs", None, {}),
            ("GET", "/v1/jobs", None, {}), ("GET", "/v1/labs/lab-a", None, {}), ("GET", "/v1/jobs/0123456789ab", None, {}),
            ("POST", "/v1/classify", files, form), ("POST", "/v1/count", files, form),
            ("POST", "/v1/explain", one, {"Content-Type": one_type}), ("POST", "/v1/labs/lab-a/uploads", files, form),
            ("PUT", "/v1/labs/lab-a/labels/1-0001", b'{"label": "Neutrophil"}', js),
            ("POST", "/v1/adapt", b'{"lab": "lab-a", "name": "m"}', js), ("GET", "/v1/labs/lab-a/labels.csv", None, {}),
            ("GET", "/v1/labs/lab-a/fields", None, {}), ("GET", "/v1/labs/lab-a/points.csv", None, {}),
            ("POST", "/v1/labs/lab-a/suggest", None, {}), ("GET", "/v1/nothing-here", None, {})]


def test_a_token_is_asked_on_every_v1_route_and_healthz_stays_open(shipped, tmp_path, monkeypatch):
    from starlette.requests import Request

    model, meta = shipped
    data = tmp_path / "data"
    cell = sample_paths(1)[0].read_bytes()
    forms, real_form = [], Request.form

    def form(self, *a, **kw):  # FastAPI reads a route's form before its dependencies: the guard must come first
        forms.append(self.url.path)
        return real_form(self, *a, **kw)

    monkeypatch.setattr(Request, "form", form)
    with live(create_app(model, meta, data_dir=data, create_data=False, access=Access(TOKEN))) as url:
        status, body, _ = request(url + "/healthz")
        assert status == 200 and body["status"] == "ok"
        for route in ("/", "/page.js", "/page.css", "/docs", "/openapi.json"):  # the page must load to ask
            assert request(url + route)[0] == 200, route
        for method, route, body, headers in every_route(url, cell):
            refused(request(url + route, method, body, headers), "token", "Bearer")
            refused(request(url + route, method, body, headers, auth="Bearer " + TOKEN[:-1] + "X"), "wrong token")
            refused(request(url + route, method, body, headers, auth="bearer " + TOKEN + "x"), "wrong token")
            refused(request(url + route, method, body, headers, auth=basic("alice", TOKEN)), "token")
            refused(request(url + route, method, body, headers, auth="Bearer"), "token")
        assert not data.exists() and not forms  # nothing a refused request sent was read, nor stored
        assert request(url + "/v1/models", auth="Bearer " + TOKEN)[0] == 200
        files, ctype = multipart([("cell.jpg", cell)])
        status, body, _ = request(url + "/v1/classify", "POST", files, {"Content-Type": ctype}, auth="Bearer " + TOKEN)
        assert status == 200 and body["results"][0]["class"] and forms == ["/v1/classify"]
        status, body, _ = request(url + "/v1/labs/lab-a/uploads", "POST", files, {"Content-Type": ctype},
                                  auth="Bearer " + TOKEN)
        assert status == 200 and len(body["saved"]) == 1
        assert request(url + "/v1/labs/lab-a/fields", auth="Bearer " + TOKEN)[0] == 200
        assert request(url + "/v1/nothing-here", auth="Bearer " + TOKEN)[0] == 404  # past the guard: the router's


def test_users_of_a_password_file_sign_in_with_their_password(shipped, tmp_path, users_file):
    model, meta = shipped
    access = Access(users=read_users(users_file), users_file=users_file)
    with live(create_app(model, meta, data_dir=tmp_path / "data", access=access)) as url:
        assert request(url + "/healthz")[0] == 200
        answer = request(url + "/v1/models")
        refused(answer, "user name and password")
        assert answer[2]["WWW-Authenticate"] == 'Basic realm="wbcnet"'
        refused(request(url + "/v1/models", auth=basic("alice", "wrong password")), "wrong user name or password")
        refused(request(url + "/v1/models", auth=basic("carol", PASSWORD)), "wrong user name or password")
        refused(request(url + "/v1/models", auth=basic("alice", PASSWORD + " ")), "wrong")
        refused(request(url + "/v1/models", auth="Basic " + base64.b64encode(b"alice").decode()), "can't be read")
        refused(request(url + "/v1/models", auth="Basic %%%"), "can't be read")
        refused(request(url + "/v1/models", auth="Bearer " + TOKEN), "user name and password")
        for user, password in (("alice", PASSWORD), ("bob", "another password"), ("alice", PASSWORD)):
            status, body, _ = request(url + "/v1/models", auth=basic(user, password))
            assert status == 200 and body["models"][0]["name"] == DEFAULT


def test_the_password_file_and_the_token_are_checked_in_one_line(tmp_path, users_file):
    lines = users_file.read_text().splitlines()
    assert verify_password(PASSWORD, lines[1].split(":", 1)[1]) and not verify_password("nope", lines[1].split(":", 1)[1])
    for text, words in (("alice:plain-password\n", "line 1"), ("\n\nno colon here\n", "line 3"),
                        ("# nobody\n", "no users"), (lines[1] + "\n" + lines[1] + "\n", "twice"),
                        ("al ice:" + lines[1].split(":", 1)[1], "line 1")):
        bad = tmp_path / "bad.txt"
        bad.write_text(text)
        with pytest.raises(WbcnetError, match=words):
            read_users(bad)
    with pytest.raises(WbcnetError, match="16 or more"):
        Access("short")
    with pytest.raises(WbcnetError, match="8 characters"):
        users_line("alice", "short")
    with pytest.raises(WbcnetError, match="ASCII"):
        users_line("alice", "pâté en croûte")
    with pytest.raises(WbcnetError, match="user name"):
        users_line("al:ice", PASSWORD)


def test_openapi_declares_the_schemes_and_every_error_answer(shipped, tmp_path, users_file):
    from openapi_spec_validator import validate

    model, meta = shipped
    access = Access(TOKEN, read_users(users_file), users_file=users_file)
    with live(create_app(model, meta, data_dir=tmp_path / "a", access=access)) as url:
        spec = request(url + "/openapi.json")[1]
    with live(create_app(model, meta, data_dir=tmp_path / "b")) as url:
        open_spec = request(url + "/openapi.json")[1]
    validate(spec)
    validate(open_spec)
    assert spec["openapi"].startswith("3.1")
    schemes = spec["components"]["securitySchemes"]
    assert schemes["token"]["type"] == "http" and schemes["token"]["scheme"] == "bearer"
    assert schemes["password"]["type"] == "http" and schemes["password"]["scheme"] == "basic"
    error = {"$ref": "#/components/schemas/ErrorAnswer"}
    operations = [(path, method, op) for path, item in spec["paths"].items() for method, op in item.items()]
    assert len([p for p, _, _ in operations if p.startswith("/v1/")]) >= 20
    for path, method, op in operations:
        if not path.startswith("/v1/"):
            assert "security" not in op and "401" not in op["responses"], path
            continue
        assert op["security"] == [{"token": []}, {"password": []}], (path, method)  # either one
        assert op["responses"]["401"]["content"]["application/json"]["schema"] == error, (path, method)
        assert "WWW-Authenticate" in op["responses"]["401"]["headers"]
        codes = set(op["responses"])
        if ("{" in path and not path.endswith("/uploads")) or any(p["name"] == "model" for p in op.get("parameters", [])):
            assert "404" in codes, (path, method)  # an unknown lab, cell, job, field or ?model=
        if "requestBody" in op:
            assert "413" in codes, (path, method)
        for code in codes - {"200", "202", "422"}:
            assert op["responses"][code]["content"]["application/json"]["schema"] == error, (path, method, code)
    for path in ("/v1/classify", "/v1/count", "/v1/explain"):
        assert {"404", "413", "415"} <= set(spec["paths"][path]["post"]["responses"]), path
    # An open server declares no scheme and no 401, and the same other errors.
    assert "securitySchemes" not in open_spec.get("components", {})
    for path, item in open_spec["paths"].items():
        for method, op in item.items():
            assert "security" not in op and "401" not in op["responses"], path
            assert set(op["responses"]) == set(spec["paths"][path][method]["responses"]) - {"401"}, path


def test_wbcnet_serve_off_loopback_makes_a_token_and_says_it(tmp_path):
    """--allow-remote on all addresses, no token given: one is made and said at start; the API
    refuses a request without it, takes it, and /healthz stays open."""
    with serve_command(["--host", "0.0.0.0", "--port", "0", "--allow-remote"], cwd=tmp_path,
                       env={"WBCNET_TOKEN": ""}) as (url, lines):
        url = url.replace("0.0.0.0", "127.0.0.1")
        said = next(line for line in lines if "API requests need the token" in line)
        token = said.split("the token ")[1].split()[0]
        assert len(token) >= 32 and "WBCNET_TOKEN" in said
        refused(request(url + "/v1/model"), "token")
        assert request(url + "/v1/model", auth="Bearer " + token)[0] == 200
        assert request(url + "/healthz")[0] == 200
    assert not any(tmp_path.iterdir())


def test_wbcnet_serve_flags_for_tokens_and_users(tmp_path, users_file, capsys):
    done = subprocess.run([sys.executable, "-m", "wbcnet", "serve", "--hash-password", "carol"], input="s3cret-enough\n",
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    assert done.returncode == 0, done.stderr
    (line,) = done.stdout.splitlines()
    (tmp_path / "users.txt").write_text(line + "\n")
    assert read_users(tmp_path / "users.txt").keys() == {"carol"}
    assert verify_password("s3cret-enough", line.split(":", 1)[1]) and line.split("$")[1] == "600000"
    # A credential that can't work is said in one line before anything listens or loads.
    (tmp_path / "broken.txt").write_text("carol\n")
    for argv, words in ((["--users", str(tmp_path / "broken.txt")], "line 1"),
                        (["--users", str(tmp_path / "none.txt")], "cannot read"),
                        (["--token", "short"], "16 or more"),
                        (["--hash-password", "c:a"], "user name")):
        assert main(["serve", "--port", "0", *argv]) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and err.startswith("wbcnet serve: error: ") and words in err, err


def test_the_page_asks_once_and_sends_the_credential_in_headless_chromium(shipped, tmp_path, users_file, monkeypatch):
    """A server taking a token or a user's password: the page asks, says a wrong one, then
    classifies, shows a lab's cell pictures (fetched with the credential) and, reloaded, asks no more."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    monkeypatch.setattr(wbcnet.lab.suggest, "suggest", fake_suggest)
    model, meta = shipped
    access = Access(TOKEN, read_users(users_file), users_file=users_file)
    cells = sample_paths(1)[:4]
    with live(create_app(model, meta, data_dir=tmp_path / "data", access=access)) as url, \
            chrome(tmp_path / "profile") as driver:
        driver.get(url + "/")
        wait = WebDriverWait(driver, 30)
        dialog = wait.until(lambda d: d.find_element(By.ID, "sign-in") if d.find_element(By.ID, "sign-in").is_displayed()
                            else None)
        assert driver.find_element(By.ID, "sign-in-token-value").is_displayed()
        assert driver.find_element(By.ID, "sign-in-password").is_displayed()  # the server takes either
        assert not driver.find_element(By.ID, "sign-in-error").is_displayed()
        if os.environ.get("WBCNET_SCREENSHOT"):
            (REPO / "docs" / "serve").mkdir(exist_ok=True)
            driver.set_window_size(1300, 700)
            driver.save_screenshot(str(REPO / "docs" / "serve" / "sign-in.png"))
        driver.find_element(By.ID, "sign-in-token-value").send_keys("not-the-token-at-all")
        driver.find_element(By.ID, "sign-in-go").click()
        wait.until(lambda d: d.find_element(By.ID, "sign-in-error").is_displayed())
        assert "wrong token" in driver.find_element(By.ID, "sign-in-error").text and dialog.is_displayed()
        driver.find_element(By.ID, "sign-in-name").send_keys("alice")
        driver.find_element(By.ID, "sign-in-password").send_keys(PASSWORD)
        driver.find_element(By.ID, "sign-in-go").click()
        wait.until(lambda d: "mhcnn" in d.find_element(By.ID, "model").text)
        assert not dialog.is_displayed()
        driver.find_element(By.ID, "files").send_keys("\n".join(str(p) for p in cells[:2]))
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#cell-table tbody tr.cell")) == 2)

        driver.find_element(By.ID, "tab-lab").click()
        driver.find_element(By.ID, "lab-files").send_keys("\n".join(str(p) for p in cells))
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#lab-cells .lab-cell img")) == 4)
        wait.until(lambda d: d.execute_script("return Array.from(document.images).every(i => i.complete && i.src)"))
        lab_pictures = [i for i in page_state(driver)["images"] if i[0].startswith("cell ")]
        assert len(lab_pictures) == 4 and all(complete and width > 0 for _, complete, width in lab_pictures)
        assert all(src.startswith("blob:") for src in driver.execute_script(
            "return Array.from(document.querySelectorAll('#lab-cells img')).map(i => i.src)"))
        assert driver.execute_script("return sessionStorage.getItem('wbcnet-authorization')") == basic("alice", PASSWORD)

        driver.refresh()  # the same tab: signed in still
        wait.until(lambda d: "mhcnn" in d.find_element(By.ID, "model").text)
        assert not driver.find_element(By.ID, "sign-in").is_displayed()
        assert not [e for e in console_errors(driver) if "401" not in e["message"]]
