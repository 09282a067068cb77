"""API keys (app/access.py) and METRICS_PORT, against a real uvicorn process with a real key file.

One server serves both: API_KEYS_FILE set (keys required on the prediction routes) and METRICS_PORT set
(/metrics on its own port, 404 on PORT). The rule that every classifying route needs a key is checked
on the app itself, so a route added later without the marker fails here.
"""

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app.access import API_KEY, app_routes, hash_line, key_hash, needs_key, parse_key_file, presented_key
from app.main import create_app
from app.settings import Settings
from tests.servers import REPO, Server, free_port, running_server, server_env
from tests.synthetic import write_jpegs

OPEN_ROUTES = {"/livez", "/readyz", "/metadata", "/", "/static/{name}", "/docs", "/openapi.json"}


@pytest.fixture(scope="module")
def keys() -> dict[str, str]:
    return {"alice": "alice-" + "a" * 40, "bob": "bob-" + "b" * 40, "carol": "carol-" + "c" * 40}


@pytest.fixture(scope="module")
def key_file(tmp_path_factory: pytest.TempPathFactory, keys: dict[str, str]) -> Path:
    path = tmp_path_factory.mktemp("keys") / "api-keys"
    path.write_text("# who may classify\n" + hash_line("alice", keys["alice"]) + "\n\n"
                    + hash_line("bob", keys["bob"]) + "\n")
    return path


@pytest.fixture(scope="module")
def server(trained_model_dir: Path, key_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    log = tmp_path_factory.mktemp("server") / "uvicorn.log"
    # LOG_LEVEL=info: uvicorn's access log on too, to check that no key or hash reaches any log line.
    with running_server(trained_model_dir, log, API_KEYS_FILE=str(key_file), METRICS_PORT=str(free_port()),
                        LOG_LEVEL="info") as running:
        yield running


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return write_jpegs(tmp_path_factory.mktemp("images"), 1, seed=3)[0].read_bytes()


def predict(server: Server, image: bytes, headers: dict[str, str] | None = None,
            path: str = "/predict") -> httpx.Response:
    field = "files" if path.endswith("batch") else "file"
    return httpx.post(server.url + path, files={field: ("x.jpg", image, "image/jpeg")}, headers=headers, timeout=60)


def metrics_url(server: Server) -> str:
    port = server_env_port(server)
    return f"http://127.0.0.1:{port}/metrics"


def server_env_port(server: Server) -> int:
    environ = Path(f"/proc/{server.pid}/environ").read_bytes().split(b"\0")
    (value,) = [item.split(b"=", 1)[1] for item in environ if item.startswith(b"METRICS_PORT=")]
    return int(value)


# --- keys: none, wrong, right -------------------------------------------------------------------

@pytest.mark.parametrize("path", ["/predict", "/predict/batch"])
def test_no_key_is_401_with_www_authenticate_and_a_wrong_key_403(server: Server, image: bytes, path: str) -> None:
    missing = predict(server, image, path=path)
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"] == 'Bearer realm="cifar10"'
    assert "Authorization: Bearer <key>" in missing.json()["detail"]
    for headers in ({"Authorization": "Bearer not-a-key"}, {"X-API-Key": "not-a-key"},
                    {"Authorization": "Basic YWxpY2U6eA=="}):
        refused = predict(server, image, headers, path=path)
        expected = 401 if headers.get("Authorization", "").startswith("Basic") else 403
        assert refused.status_code == expected, (headers, refused.text)
        assert refused.headers["content-type"] == "application/json"
        assert "www-authenticate" not in refused.headers or expected == 401


def test_a_right_key_classifies_as_bearer_or_x_api_key(server: Server, image: bytes, keys: dict[str, str]) -> None:
    by_bearer = predict(server, image, {"Authorization": f"Bearer {keys['alice']}"})
    by_header = predict(server, image, {"X-API-Key": keys["bob"]})
    lower_case_scheme = predict(server, image, {"Authorization": f"bearer {keys['bob']}"})
    assert by_bearer.status_code == by_header.status_code == lower_case_scheme.status_code == 200
    assert by_bearer.json()["label"] == by_header.json()["label"]
    batch = predict(server, image, {"X-API-Key": keys["alice"]}, path="/predict/batch")
    assert batch.status_code == 200 and len(batch.json()["results"]) == 1


def test_the_key_is_checked_before_the_body_is_read(server: Server) -> None:
    """A client without a key cannot make the service read its upload: refused on the headers alone."""
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as connection:
        # 5 MB announced, none sent: an answer at all means the body was not waited for.
        connection.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=x\r\n"
                           b"Content-Length: 5000000\r\n\r\n")
        head = connection.recv(4096).decode("latin-1")
    assert head.startswith("HTTP/1.1 401 ")
    assert "connection: close" in head.lower() and 'www-authenticate: Bearer realm="cifar10"' in head


def test_open_routes_need_no_key(server: Server) -> None:
    for path in ("/livez", "/readyz", "/metadata", "/", "/static/page.js", "/docs", "/openapi.json"):
        assert httpx.get(server.url + path, timeout=30).status_code == 200, path
    assert httpx.get(server.url + "/metadata").json()["serving"]["api_key_required"] is True


def test_the_key_file_is_reread_when_it_changes(server: Server, image: bytes, keys: dict[str, str],
                                                key_file: Path) -> None:
    original = key_file.read_text()
    carol = {"X-API-Key": keys["carol"]}
    alice = {"X-API-Key": keys["alice"]}
    assert predict(server, image, carol).status_code == 403
    try:
        # Written whole and renamed into place, as an operator's tool would: carol in, alice out.
        staged = key_file.with_name("staged")
        staged.write_text(hash_line("carol", keys["carol"]) + "\n" + hash_line("bob", keys["bob"]) + "\n")
        os.replace(staged, key_file)
        assert predict(server, image, carol).status_code == 200
        assert predict(server, image, alice).status_code == 403
        # A broken file keeps the keys in force and says why, once.
        key_file.write_text("carol not-a-hash\n")
        assert predict(server, image, carol).status_code == 200
        assert predict(server, image, carol).status_code == 200
        key_file.unlink()
        assert predict(server, image, carol).status_code == 200
    finally:
        key_file.write_text(original)
    assert predict(server, image, alice).status_code == 200
    assert predict(server, image, carol).status_code == 403
    log = server.log()
    assert log.count("is not 'NAME SHA256HEX'") == 1 and log.count("cannot read API_KEYS_FILE") == 1
    assert "API_KEYS_FILE changed: 2 key(s) now" in log


def test_no_key_or_hash_in_any_log_line(server: Server, image: bytes, keys: dict[str, str]) -> None:
    for key in keys.values():
        predict(server, image, {"Authorization": f"Bearer {key}"})
        predict(server, image, {"X-API-Key": key})
    log = server.log()
    assert "API keys required on the prediction routes: 2 key(s)" in log and "(alice, bob)" in log
    assert '"POST /predict HTTP/1.1" 401' in log and '"POST /predict HTTP/1.1" 403' in log  # the access log is on
    for key in keys.values():
        assert key not in log and key_hash(key) not in log and key_hash(key)[:16] not in log


def test_a_bad_key_file_stops_the_start_with_one_line(trained_model_dir: Path, tmp_path: Path) -> None:
    bad = tmp_path / "keys"
    bad.write_text("alice " + "0" * 64 + "\nbob " + key_hash("secret-key") + " trailing\n")
    for path, expected in ((bad, f"API_KEYS_FILE {bad} line 2 is not 'NAME SHA256HEX'"),
                           (tmp_path / "missing", f"cannot read API_KEYS_FILE {tmp_path / 'missing'}")):
        env = server_env(trained_model_dir, free_port(), API_KEYS_FILE=str(path))
        result = subprocess.run([sys.executable, "-m", "app"], cwd=REPO, env=env, capture_output=True, text=True,
                                timeout=120, check=False)
        assert result.returncode != 0
        assert expected in result.stderr and "Traceback" not in result.stderr
        assert key_hash("secret-key") not in result.stderr + result.stdout


# --- the rule: every route that classifies needs a key -----------------------------------------

def test_every_route_that_takes_a_body_or_classifies_needs_a_key(trained_model_dir: Path) -> None:
    """The routes that classify or explain take an upload (a POST with a body). A new one without
    ``dependencies=[API_KEY]`` (or a place on app.routes.predict_router) fails here."""
    app = create_app(Settings(model_dir=trained_model_dir))
    protected, open_paths = set(), set()
    for route in app_routes(app):
        methods = getattr(route, "methods", set()) or set()
        # A body FastAPI parses, or one the route reads itself and declares in openapi_extra (app.uploads).
        has_body = bool(getattr(getattr(route, "dependant", None), "body_params", None)
                        or "requestBody" in (getattr(route, "openapi_extra", None) or {}))
        classifies = any(word in route.path for word in ("predict", "explain", "infer", "classify"))
        if needs_key(route):
            protected.add(route.path)
        else:
            open_paths.add(route.path)
            assert not (has_body or "POST" in methods or classifies), (
                f"{route.path} classifies or takes an upload but needs no API key: put it on "
                "app.routes.predict_router or give it dependencies=[app.access.API_KEY]")
    assert {"/predict", "/predict/batch", "/explain", "/v2/models/{model_name}/infer",
            "/v1/models/{model_name}:predict"} <= protected
    assert OPEN_ROUTES - {"/openapi.json", "/docs"} <= open_paths


def test_the_marker_works_on_a_route_of_its_own_router() -> None:
    from fastapi import APIRouter, FastAPI

    other, included_with_it = APIRouter(), APIRouter()

    @other.post("/explain", dependencies=[API_KEY])
    async def explain() -> dict:
        return {}

    @other.post("/unmarked")
    async def unmarked() -> dict:
        return {}

    @included_with_it.post("/infer")
    async def infer() -> dict:
        return {}

    app = FastAPI()
    app.include_router(other, prefix="/v2")
    app.include_router(included_with_it, prefix="/v2", dependencies=[API_KEY])
    routes = {route.path: route for route in app_routes(app)}
    assert needs_key(routes["/v2/explain"]) and needs_key(routes["/v2/infer"])
    assert not needs_key(routes["/v2/unmarked"])


# --- the parts, on their own -------------------------------------------------------------------

def test_key_file_lines_and_presented_keys() -> None:
    text = "# comment\n\nalice " + "A" * 64 + "\n  bob   " + "b" * 64 + "  \n"
    assert parse_key_file(text, Path("k")) == {"a" * 64: "alice", "b" * 64: "bob"}
    for bad in ("alice", "alice " + "a" * 63, "alice " + "g" * 64, "alice bob " + "a" * 64):
        with pytest.raises(ValueError, match="line 1 is not"):
            parse_key_file(bad, Path("k"))
    assert presented_key({"authorization": "Bearer k1", "x-api-key": "k2"}) == "k1"
    assert presented_key({"authorization": "Basic abc", "x-api-key": "k2"}) == "k2"
    assert presented_key({"authorization": "Bearer "}) is None
    assert presented_key({"x-api-key": "  "}) is None
    assert presented_key({}) is None


def test_keys_new_prints_a_key_and_its_line(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "app", "keys", "new", "dave"], cwd=REPO, capture_output=True,
                            text=True, timeout=60, check=True)
    key_line, hash_out = result.stdout.splitlines()
    key = key_line.removeprefix("key:  ")
    assert len(key) >= 43 and hash_out == "line: " + hash_line("dave", key)
    file = tmp_path / "keys"
    appended = subprocess.run([sys.executable, "-m", "app", "keys", "new", "erin", "--append", str(file)], cwd=REPO,
                              capture_output=True, text=True, timeout=60, check=True)
    assert file.read_text() == hash_line("erin", appended.stdout.strip()) + "\n"
    assert file.stat().st_mode & 0o777 == 0o600
    # Its folder is made too (a fresh clone has no keys/); one that cannot be is one line, and no key.
    nested = tmp_path / "keys" / "api-keys"
    made = subprocess.run([sys.executable, "-m", "app", "keys", "new", "fay", "--append", str(tmp_path / "new" / "k")],
                          cwd=REPO, capture_output=True, text=True, timeout=60, check=True)
    assert (tmp_path / "new" / "k").read_text() == hash_line("fay", made.stdout.strip()) + "\n"
    unwritable = subprocess.run([sys.executable, "-m", "app", "keys", "new", "gus", "--append", str(nested)],
                                cwd=REPO, capture_output=True, text=True, timeout=60, check=False)
    assert unwritable.returncode == 1 and unwritable.stdout == ""
    assert unwritable.stderr.startswith(f"error: cannot append to {nested}: a file is in the way of its folder "
                                        f"{nested.parent}") and "Traceback" not in unwritable.stderr
    bad = subprocess.run([sys.executable, "-m", "app", "keys", "new", "two words"], cwd=REPO, capture_output=True,
                         text=True, timeout=60, check=False)
    assert bad.returncode == 2 and "one word without spaces" in bad.stderr


# --- METRICS_PORT ------------------------------------------------------------------------------

def test_metrics_port_serves_metrics_there_and_not_on_port(server: Server, image: bytes,
                                                          keys: dict[str, str]) -> None:
    predict(server, image, {"X-API-Key": keys["alice"]})
    assert httpx.get(server.url + "/metrics").status_code == 404
    deadline = time.monotonic() + 10
    while True:
        scrape = httpx.get(metrics_url(server), timeout=10)
        if 'cifar10_requests_total{endpoint="/predict",method="POST",status="200"}' in scrape.text:
            break
        assert time.monotonic() < deadline, scrape.text[-2000:]
        time.sleep(0.2)
    assert scrape.status_code == 200 and scrape.headers["content-type"].startswith("text/plain")
    # The refusals are counted, under the route they were refused for.
    assert 'cifar10_requests_total{endpoint="/predict",method="POST",status="401"}' in scrape.text
    assert "/metrics" not in httpx.get(server.url + "/openapi.json").json()["paths"]


def test_metrics_port_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="METRICS_PORT must differ from PORT"):
        Settings(port=8000, metrics_port=8000)
    with pytest.raises(ValueError, match="METRICS_PORT needs WORKERS=1"):
        Settings(workers=2, metrics_port=9100)
