#!/usr/bin/env bash
# End-to-end check of the container deployment, from nothing, the way operators run it:
# install and start a Docker engine if there is none, build the image, `docker compose up` with
# replicas behind nginx, wait for health, classify an image, check the container's hardening,
# stop it gracefully, tear everything down, and print a summary.
#
# usage: sudo scripts/docker-smoke.sh [--model DIR] [--replicas N] [--keep]
#   --model DIR    serve this model folder (<DIR>/<version>/saved_model.pb) instead of models/cifar10
#   --replicas N   classifier containers behind the proxy (default 2, so load balancing is checked)
#   --keep         leave the stack running at the end
#
# Where no image registry can be reached (the development machines), the base images are
# stand-ins built here from Debian packages: python3 for the Dockerfile's BASE_IMAGE and Debian's
# nginx for the proxy. Set BASE_IMAGE and NGINX_IMAGE to use real ones (python:3.11-slim, nginx).
# Set EXTRA_CA to a CA bundle the build should trust (default: the host's bundle, which holds the
# CA of this network's TLS-intercepting proxy), or to an empty string for none.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=${SMOKE_WORK:-/var/tmp/cifar10-docker-smoke}
PROJECT=cifar10smoke
IMAGE_TAG=cifar10-service:smoke
STANDIN_BASE=cifar10-standin-python:bookworm
STANDIN_NGINX=cifar10-standin-nginx:bookworm
PORT=${SMOKE_PORT:-18000}
EXTRA_CA=${EXTRA_CA-/etc/ssl/certs/ca-certificates.crt}
MODEL_SRC=$ROOT/models/cifar10
REPLICAS=2
KEEP=0

while [ $# -gt 0 ]; do
    case "$1" in
        --model) MODEL_SRC=$(cd "$2" && pwd); shift 2 ;;
        --replicas) REPLICAS=$2; shift 2 ;;
        --keep) KEEP=1; shift ;;
        *) echo "usage: $0 [--model DIR] [--replicas N] [--keep]" >&2; exit 2 ;;
    esac
done

step() { printf '\n== %s\n' "$*"; }
die() { printf '\ndocker-smoke: FAILED: %s\n' "$*" >&2; exit 1; }
now() { date +%s; }
mb() { echo $(( $1 / 1000 / 1000 )); }

# --- the model: fail before any slow step if there is nothing to serve ------------------------
model_version=$(find "$MODEL_SRC" -mindepth 2 -maxdepth 2 -name saved_model.pb 2>/dev/null \
    | sed -n 's|.*/\([0-9][0-9]*\)/saved_model.pb$|\1|p' | sort -n | tail -n 1)
[ -n "$model_version" ] || die "no model to serve: $MODEL_SRC has no <version>/saved_model.pb.
Train one (\`make train\` writes models/cifar10/<next version>) or pass --model DIR."
echo "model: $MODEL_SRC version $model_version"
[ "$(id -u)" = 0 ] || die "run as root: it installs and starts a Docker engine if needed"
mkdir -p "$WORK"

# --- the engine -------------------------------------------------------------------------------
step "Docker engine"
if ! command -v dockerd >/dev/null || ! { docker compose version || command -v docker-compose; } >/dev/null 2>&1; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io docker-compose debootstrap >/dev/null
fi
if ! docker info >/dev/null 2>&1; then
    # No init system here: run the daemon in the background; it outlives this script on purpose
    # (images stay cached for the next run).
    nohup dockerd >"$WORK/dockerd.log" 2>&1 &
    for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
    docker info >/dev/null 2>&1 || die "dockerd did not start; see $WORK/dockerd.log"
fi
if docker compose version >/dev/null 2>&1; then COMPOSE=(docker compose); else COMPOSE=(docker-compose); fi
echo "engine $(docker version -f '{{.Server.Version}}'), compose: ${COMPOSE[*]} $("${COMPOSE[@]}" version --short)"
compose() { "${COMPOSE[@]}" -p "$PROJECT" -f "$ROOT/docker-compose.yml" "$@"; }

# --- base images ------------------------------------------------------------------------------
if [ -z "${BASE_IMAGE:-}" ]; then
    BASE_IMAGE=$STANDIN_BASE
    if ! docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
        step "stand-in base image from Debian packages (debootstrap)"
        command -v debootstrap >/dev/null || apt-get install -y -qq debootstrap >/dev/null
        rootfs=$WORK/rootfs
        rm -rf "$rootfs"
        debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
            bookworm "$rootfs" http://deb.debian.org/debian >"$WORK/debootstrap.log"
        rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
        tar -C "$rootfs" -c . | docker import -c 'CMD ["python3"]' - "$BASE_IMAGE" >/dev/null
        rm -rf "$rootfs"
    fi
fi
if [ -z "${NGINX_IMAGE:-}" ]; then
    NGINX_IMAGE=$STANDIN_NGINX
    if ! docker image inspect "$NGINX_IMAGE" >/dev/null 2>&1; then
        step "stand-in nginx image from Debian packages"
        printf 'FROM %s\nRUN apt-get update && apt-get install -y --no-install-recommends nginx && rm -rf /var/lib/apt/lists/*\n' \
            "$BASE_IMAGE" | DOCKER_BUILDKIT=0 docker build --network host -t "$NGINX_IMAGE" - >"$WORK/nginx-build.log" 2>&1 \
            || { tail -n 20 "$WORK/nginx-build.log"; die "building the stand-in nginx image failed"; }
    fi
fi
echo "base: $BASE_IMAGE, proxy: $NGINX_IMAGE"

# --- the image --------------------------------------------------------------------------------
step "docker build"
# The context is the working tree as git sees it (tracked and untracked-but-not-ignored files),
# copied so concurrent edits cannot change it mid-build, plus the model to serve.
context=$WORK/context
rm -rf "$context" && mkdir -p "$context"
(cd "$ROOT" && git ls-files -z --cached --others --exclude-standard \
    | tar --null --ignore-failed-read -T - -cf -) | tar -C "$context" -xf -
rm -rf "$context/models/cifar10" && mkdir -p "$context/models" && cp -a "$MODEL_SRC" "$context/models/cifar10"
if [ -n "$EXTRA_CA" ]; then cp "$EXTRA_CA" "$context/deploy/certs/smoke-extra-ca.crt"; fi
build_start=$(now)
DOCKER_BUILDKIT=0 docker build --network host --build-arg "BASE_IMAGE=$BASE_IMAGE" -t "$IMAGE_TAG" \
    "$context" >"$WORK/build.log" 2>&1 || { tail -n 30 "$WORK/build.log"; die "docker build failed; log: $WORK/build.log"; }
build_seconds=$(( $(now) - build_start ))
image_bytes=$(docker image inspect -f '{{.Size}}' "$IMAGE_TAG")
base_bytes=$(docker image inspect -f '{{.Size}}' "$BASE_IMAGE")
echo "built $IMAGE_TAG in ${build_seconds}s: $(mb "$image_bytes") MB ($(mb "$base_bytes") MB of it the base)"

# The extra CA was for the build stage only.
docker run --rm --entrypoint /bin/sh "$IMAGE_TAG" -c \
    'test ! -e /tmp/extra-ca && test ! -e /tmp/ca-bundle.pem && ! grep -rqs smoke-extra-ca /opt/venv' \
    || die "build-time CA material is in the runtime image"
user=$(docker image inspect -f '{{.Config.User}}' "$IMAGE_TAG")
case "$user" in ''|0|0:*|root|root:*) die "image runs as root (USER '$user')" ;; esac

# --- docker compose up ------------------------------------------------------------------------
cleanup() {
    status=$?
    if [ "$status" != 0 ]; then
        echo "--- last logs" >&2
        compose logs --tail 40 >&2 || true
    fi
    if [ "$KEEP" = 1 ] && [ "$status" = 0 ]; then
        echo "left running: ${COMPOSE[*]} -p $PROJECT -f $ROOT/docker-compose.yml down"
    else
        compose down --volumes --remove-orphans >/dev/null 2>&1 || true
    fi
}
trap cleanup EXIT

step "docker compose up ($REPLICAS classifier replicas, 1 CPU each, behind nginx on :$PORT)"
export IMAGE=$IMAGE_TAG NGINX_IMAGE REPLICAS PUBLISH_PORT=$PORT CPUS=1
compose down --volumes --remove-orphans >/dev/null 2>&1 || true
up_start=$(now)
# `--scale` as well as deploy.replicas: older Compose releases ignore the latter outside Swarm.
compose up -d --no-build --scale "classifier=$REPLICAS" >"$WORK/up.log" 2>&1 \
    || { cat "$WORK/up.log"; die "docker compose up failed"; }

healthy_seconds=""
for _ in $(seq 300); do
    mapfile -t ids < <(compose ps -q classifier)
    healthy=0
    for id in "${ids[@]}"; do
        [ "$(docker inspect -f '{{.State.Health.Status}}' "$id")" = healthy ] && healthy=$((healthy + 1))
    done
    if [ "$healthy" = "$REPLICAS" ] && curl -fsS -o /dev/null "http://127.0.0.1:$PORT/readyz" 2>/dev/null; then
        healthy_seconds=$(( $(now) - up_start ))
        break
    fi
    sleep 1
done
[ -n "$healthy_seconds" ] || die "not healthy after 300 s ($healthy of $REPLICAS replicas healthy)"
echo "all $REPLICAS replicas healthy and the proxy ready after ${healthy_seconds}s"

# --- a prediction -----------------------------------------------------------------------------
step "POST /predict"
# A 96x64 JPEG drawn with the image's own Pillow (nothing needed on the host): a grey hull and a
# mast on blue water, under a pale sky.
docker run --rm --entrypoint python "$IMAGE_TAG" -c '
import io, sys
from PIL import Image, ImageDraw
image = Image.new("RGB", (96, 64), (170, 200, 235))
draw = ImageDraw.Draw(image)
draw.rectangle((0, 40, 96, 64), fill=(30, 70, 140))
draw.polygon([(14, 38), (82, 38), (72, 48), (24, 48)], fill=(90, 90, 95))
draw.rectangle((46, 14, 49, 38), fill=(60, 60, 60))
buffer = io.BytesIO()
image.save(buffer, "JPEG", quality=90)
sys.stdout.buffer.write(buffer.getvalue())' >"$WORK/sample.jpg"
curl -fsS -F "file=@$WORK/sample.jpg;type=image/jpeg" "http://127.0.0.1:$PORT/predict" >"$WORK/prediction.json" \
    || die "POST /predict failed"
prediction=$(python3 - "$WORK/prediction.json" "$model_version" <<'EOF'
import json, math, sys

answer = json.load(open(sys.argv[1]))
classes = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
probabilities = answer["probabilities"]
assert list(probabilities) == classes, probabilities
assert math.isclose(sum(probabilities.values()), 1.0, abs_tol=1e-3), sum(probabilities.values())
assert answer["label"] == max(probabilities, key=probabilities.get), answer
assert answer["model"]["version"] == int(sys.argv[2]), answer["model"]
print(f'{answer["label"]} ({answer["confidence"]:.3f}), model {answer["model"]["name"]} v{answer["model"]["version"]}')
EOF
) || { cat "$WORK/prediction.json"; die "unexpected /predict answer"; }
echo "$prediction"

# Every replica serves: nginx round-robins over them (its access log names the upstream).
for _ in $(seq $(( REPLICAS * 4 ))); do
    curl -fsS -o /dev/null -F "file=@$WORK/sample.jpg;type=image/jpeg" "http://127.0.0.1:$PORT/predict"
done
answering=$(compose logs proxy | grep -o 'POST /predict[^"]*" 200 .*upstream=[0-9.:]*' \
    | sed 's/.*upstream=//' | sort -u | wc -l)
[ "$answering" = "$REPLICAS" ] || die "$answering of $REPLICAS replicas answered through the proxy"
echo "$answering of $REPLICAS replicas answered through the proxy"

# --- hardening, seen from inside a running container -------------------------------------------
step "container checks"
mapfile -t ids < <(compose ps -q classifier)  # not `| head`: with pipefail, SIGPIPE would fail the script
first=${ids[0]}
docker exec "$first" sh -c 'test "$(id -u)" = 10001' || die "the service does not run as uid 10001"
if docker exec "$first" sh -c 'touch /srv/written 2>/dev/null'; then die "root filesystem is writable"; fi
docker exec "$first" sh -c 'touch /tmp/written' || die "/tmp is not writable"
# The entrypoint's thread count reached the server process: CPUS=1 on a host with more CPUs.
threads=$(docker exec "$first" python -c '
import pathlib
for proc in pathlib.Path("/proc").glob("[0-9]*"):
    try:
        if (proc / "cmdline").read_bytes().split(b"\0")[:3] == [b"python", b"-m", b"app"]:
            env = dict(v.split("=", 1) for v in (proc / "environ").read_text().split("\0") if "=" in v)
            print(env["INFERENCE_THREADS"], env["DECODE_THREADS"])
    except OSError:
        pass')
[ "$threads" = "1 1" ] || die "INFERENCE_THREADS/DECODE_THREADS are '$threads', want '1 1' under a 1-CPU limit"
echo "uid 10001, read-only root with writable /tmp, threads '$threads' from the 1-CPU limit (host has $(nproc))"

# --- graceful stop: SIGTERM must reach uvicorn ------------------------------------------------
step "docker compose stop"
stop_start=$(now)
compose stop classifier >/dev/null 2>&1
stop_seconds=$(( $(now) - stop_start ))
exit_codes=$(for id in "${ids[@]}"; do docker inspect -f '{{.State.ExitCode}}' "$id"; done | sort -u | xargs)
# 137 would mean SIGKILL after the grace period: SIGTERM did not stop uvicorn.
[ "$exit_codes" = 0 ] || die "classifier exit codes on SIGTERM: $exit_codes (want a clean 0 from every replica)"
echo "stopped in ${stop_seconds}s, every replica exited 0"
if [ "$KEEP" = 1 ]; then compose start classifier >/dev/null 2>&1; fi

step "summary"
cat <<EOF
image          $IMAGE_TAG on $BASE_IMAGE: $(mb "$image_bytes") MB ($(mb "$base_bytes") MB base), built in ${build_seconds}s
time to healthy ${healthy_seconds}s from \`compose up\` to $REPLICAS/$REPLICAS replicas healthy and nginx ready
prediction     $prediction
load balancing $answering/$REPLICAS replicas answered through nginx
shutdown       SIGTERM -> exit 0 from all $REPLICAS replicas in ${stop_seconds}s
docker-smoke: OK
EOF
