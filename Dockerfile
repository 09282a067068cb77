# The CIFAR-10 classifier service: `docker compose up` (see docs/deployment.md).
#
# Three stages, so that a code or model change never rebuilds or re-ships the libraries:
#   deps     a virtual environment holding exactly requirements-serve.lock (the pins the README
#            installs: OpenVINO, no TensorFlow, wheels only)
#   project  the project installed on top of it (into a separate root, so only its own files are
#            copied on) and the shipped model
#   runtime  a clean base with those copied in, running as a non-root user
# Every stage starts from the same base, so the venv's interpreter path is valid in all of them;
# the venv (not the base's site-packages) is what lets one file work on python:3.11-slim and on a
# Debian image with its own python3.

# Any image with python3 (3.11, the version the lock was compiled for), the venv module and
# ca-certificates. scripts/docker-smoke.sh builds a stand-in from Debian packages where no registry
# can be reached.
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS deps

# Extra CA certificates (*.crt) for a TLS-intercepting proxy on the build network: drop them in
# deploy/certs/. Only pip in this stage trusts them; the runtime image copies the venv alone.
COPY deploy/certs/ /tmp/extra-ca/

COPY requirements-serve.lock /tmp/requirements-serve.lock
# --only-binary: no compiler is ever needed or installed. openvino/include and its cmake files are for
# building against it in C++; serving never reads them. Of OpenVINO's libraries the service needs the CPU
# plugin, the IR reader and the TensorFlow frontend (a version folder without IR is converted from its
# SavedModel): the GPU and NPU plugins, the GPU's kernel cache (cache.json) and the ONNX, PyTorch, Paddle,
# TensorFlow Lite, JAX and GGUF frontends are 76 MB of the image that nothing loads. pip goes last: nothing at
# run time installs packages.
RUN set -eu; \
    if ls /tmp/extra-ca/*.crt >/dev/null 2>&1; then \
        cat /etc/ssl/certs/ca-certificates.crt /tmp/extra-ca/*.crt > /tmp/ca-bundle.pem; \
        export PIP_CERT=/tmp/ca-bundle.pem; \
    fi; \
    python3 -m venv /opt/venv; \
    /opt/venv/bin/python -m pip install --no-cache-dir --disable-pip-version-check --only-binary=:all: \
        -r /tmp/requirements-serve.lock; \
    openvino=$(echo /opt/venv/lib/python3*/site-packages/openvino); \
    rm -rf "$openvino/include" "$openvino/cmake" "$openvino/libs/cache.json" \
        "$openvino"/libs/libopenvino_intel_gpu_plugin.so "$openvino"/libs/libopenvino_intel_npu_plugin.so \
        "$openvino"/libs/libopenvino_onnx_frontend.so* "$openvino"/libs/libopenvino_pytorch_frontend.so* \
        "$openvino"/libs/libopenvino_paddle_frontend.so* "$openvino"/libs/libopenvino_tensorflow_lite_frontend.so* \
        "$openvino"/libs/libopenvino_jax_frontend.so* "$openvino"/libs/libopenvino_gguf_frontend.so*; \
    /opt/venv/bin/python -m pip uninstall --yes --disable-pip-version-check pip


FROM deps AS project

# The project without dependencies: the lock is the whole dependency set, and the setuptools that
# builds it comes from the lock too (no build isolation, no download). pip comes back from the
# interpreter's own ensurepip for this one install; --root collects just the project's files
# (packages, console scripts) under /opt/project, laid out as they go into /opt/venv. The image serves
# and holds no client (a distribution of its own, in client/).
COPY pyproject.toml /src/
COPY app /src/app
COPY core /src/core
COPY training /src/training
RUN set -eu; \
    /opt/venv/bin/python -m ensurepip --default-pip >/dev/null; \
    /opt/venv/bin/python -m pip install --no-cache-dir --disable-pip-version-check --no-deps \
        --no-build-isolation --root /opt/project /src

# The shipped model: the newest version only, the one the service serves (older ones stay in the
# repository, for a rollback through a models volume: docs/deployment.md). Its version folder comes out of
# the trainer as a private temporary folder (mode 0700); the service runs as another user, so make
# everything readable, nothing writable.
COPY models/cifar10 /srv/models/cifar10
RUN /opt/venv/bin/python -c "import pathlib, shutil; \
versions = sorted((p for p in pathlib.Path('/srv/models/cifar10').iterdir() if p.name.isdigit()), key=lambda p: int(p.name)); \
[shutil.rmtree(p) for p in versions[:-1]]" \
    && chmod -R a+rX,go-w /srv/models


FROM ${BASE_IMAGE} AS runtime

# A fixed numeric uid so Kubernetes' runAsNonRoot can verify it; no home, no shell.
RUN groupadd --gid 10001 cifar10 \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin cifar10

# Least to most often changed: libraries, entrypoint, the project's code, the model.
COPY --from=deps /opt/venv /opt/venv
COPY deploy/docker-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
COPY --from=project /opt/project/opt/venv /opt/venv

# The shipped model, baked in. MODEL_DIR may point at a mounted volume instead.
WORKDIR /srv
COPY --from=project /srv/models /srv/models

# HOST: listen on the container's interface, not loopback. PYTHONDONTWRITEBYTECODE: the root
# filesystem may be read-only; the venv's bytecode was compiled at install. HOME: the
# user has no home, and /tmp is the one writable place (a tmpfs in docker-compose.yml; a version folder
# without OpenVINO IR is converted through a temporary folder there).
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    MODEL_DIR=/srv/models/cifar10 \
    HOST=0.0.0.0 \
    PORT=8000

USER 10001:10001
EXPOSE 8000

# Healthy = model loaded and warmed up (/readyz), checked with the standard library: no curl in
# the image. urlopen raises on 503 (warming up) and on a refused connection, so both exit 1.
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/readyz' % os.environ.get('PORT', '8000'), timeout=4)"]

# The entrypoint sizes thread pools from the container's CPU limit, then execs the command, so
# uvicorn (or tini, with `init: true`) is the process that receives SIGTERM.
ENTRYPOINT ["/bin/sh", "/usr/local/bin/docker-entrypoint.sh"]
CMD ["python", "-m", "app"]
