"""Security hygiene in process: no internals in error bodies, security headers, CORS off unless configured,
locked versions at or past the fixes for the known advisories of the request-parsing stack."""

import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.service import ClassifierService
from app.settings import Settings
from tests import hostile_files as files

REPO = Path(__file__).resolve().parent.parent
LEAKS = re.compile(r"Traceback|File \"|/work/|/tmp/|site-packages|\.py\b|tensorflow|Python/\d|0x[0-9a-f]{6,}", re.I)
# First fixed versions of advisories in the stack that parses untrusted requests and images:
# starlette CVE-2024-47874 (0.40.0), CVE-2025-54121 (0.47.2), CVE-2025-62727 (0.49.1);
# python-multipart CVE-2024-24762 (0.0.7), CVE-2024-53981 (0.0.18); h11 CVE-2025-43859 (0.16.0);
# pillow CVE-2025-48379 (11.3.0). scripts/audit.sh checks the whole lock against the live advisory feed.
MINIMUM_FIXED = {"starlette": (0, 49, 1), "python-multipart": (0, 0, 18), "h11": (0, 16, 0), "pillow": (11, 3, 0)}


def make_client(model_dir: Path, **settings: object) -> TestClient:
    app = create_app(Settings(model_dir=model_dir, inference_threads=1, decode_threads=1, **settings))
    return TestClient(app, raise_server_exceptions=False)


@pytest.fixture(scope="module")
def client(trained_model_dir: Path) -> Iterator[TestClient]:
    with make_client(trained_model_dir) as test_client:
        deadline = time.monotonic() + 120
        while test_client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, "the app never became ready"
            time.sleep(0.05)
        yield test_client


def test_an_internal_error_tells_the_client_nothing_internal(client: TestClient,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    async def broken_classify(self: ClassifierService, images: object) -> None:
        raise RuntimeError("tensorflow 2.21 failed in /work/main/.venv/lib/python3.11/site-packages/x.py")

    monkeypatch.setattr(ClassifierService, "classify", broken_classify)
    response = client.post("/predict", files={"file": ("a.png", files.good_png(), "image/png")})
    assert response.status_code == 500
    assert response.json() == {"detail": "Internal server error."}


@pytest.mark.parametrize(("method", "path", "kwargs"), [
    ("GET", "/nope", {}),
    ("DELETE", "/predict", {}),
    ("POST", "/predict", {"files": {"file": ("a.png", b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "image/png")}}),
    ("POST", "/predict", {"files": {"file": ("a.jpg", files.good_jpeg()[:200], "image/jpeg")}}),
    ("POST", "/predict", {"content": b"--x\r\n", "headers": {"content-type": "multipart/form-data; boundary=x"}}),
    ("POST", "/predict?preview=2", {}),
])
def test_error_bodies_carry_no_traces_paths_or_versions(client: TestClient, method: str, path: str,
                                                        kwargs: dict) -> None:
    response = client.request(method, path, **kwargs)
    assert 400 <= response.status_code < 500
    assert list(response.json()) == ["detail"]
    assert not LEAKS.search(response.text), response.text


@pytest.mark.parametrize("path", ["/docs", "/static/swagger-ui/swagger-ui.css", "/", "/livez", "/nope"])
def test_security_headers_on_pages_and_errors(client: TestClient, path: str) -> None:
    headers = client.get(path).headers
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["x-frame-options"] == "DENY"
    assert headers["referrer-policy"] == "no-referrer"
    assert "default-src 'self'" in headers["content-security-policy"]


def test_server_header_names_no_version(client: TestClient) -> None:
    assert not re.search(r"\d", client.get("/livez").headers.get("server", ""))


def test_cors_is_off_by_default(client: TestClient) -> None:
    preflight = client.options("/predict", headers={"Origin": "https://evil.example",
                                                    "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in preflight.headers
    simple = client.get("/metadata", headers={"Origin": "https://evil.example"})
    assert simple.status_code == 200 and "access-control-allow-origin" not in simple.headers


def test_cors_allows_only_the_configured_origins(trained_model_dir: Path) -> None:
    with make_client(trained_model_dir, cors_origins=["https://app.example"]) as configured:
        allowed = configured.options("/predict", headers={"Origin": "https://app.example",
                                                          "Access-Control-Request-Method": "POST"})
        assert allowed.status_code == 200
        assert allowed.headers["access-control-allow-origin"] == "https://app.example"
        other = configured.get("/livez", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers


def locked_versions(lock: Path) -> dict[str, tuple[int, ...]]:
    versions = {}
    for line in lock.read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9_.-]+)==([0-9][0-9.]*)", line)
        if match:
            versions[match[1].lower()] = tuple(int(part) for part in match[2].rstrip(".").split("."))
    return versions


@pytest.mark.parametrize("lock", ["requirements.lock", "requirements-serve.lock"])
def test_locks_pin_versions_past_known_advisories(lock: str) -> None:
    versions = locked_versions(REPO / lock)
    for package, fixed in MINIMUM_FIXED.items():
        assert package in versions, f"{package} is not pinned in {lock}"
        assert versions[package] >= fixed, f"{lock}: {package} {versions[package]} < {fixed}"


@pytest.mark.parametrize(("status", "kwargs"), [
    (431, {"method": "GET", "url": "/livez", "headers": {"x-filler": "a" * 17_000}}),
    (413, {"method": "POST", "url": "/predict", "content": b"\0" * (10 * 1024 * 1024 + 1),
           "headers": {"content-type": "multipart/form-data; boundary=x"}}),
])
def test_requests_refused_before_any_route_get_the_json_body_and_headers_once(client: TestClient, status: int,
                                                                              kwargs: dict) -> None:
    response = client.request(**kwargs)
    assert response.status_code == status
    assert list(response.json()) == ["detail"] and "limit" in response.json()["detail"]
    assert response.headers["connection"] == "close"
    for name in ("x-content-type-options", "x-frame-options", "referrer-policy", "content-security-policy"):
        assert len(response.headers.get_list(name)) == 1, name
