#!/usr/bin/env bash
# End-to-end check of the container deployment, from nothing, the way operators run it:
# install and start a Docker engine if there is none, build the image, `docker compose up` with
# replicas behind nginx (and Prometheus, profile `metrics`), wait for health, classify an image,
# check the container's hardening and that Prometheus scrapes every replica, then faults under load:
# with CONNECTIONS clients posting through the proxy's published loopback port (scripts/fault_load.py),
# kill one replica, stop one, scale down, scale up; then the model upgrade path: the replicas recreated
# on a host models folder (deploy/compose.models-volume.yml), a new version renamed into it, every
# replica swapping it in within MODEL_POLL_SECONDS, still under load. Any failed request, or any request
# slower than SLOW_S, fails the run. Then the per-client limits: a greedy client (64 connections) and a
# polite one (2) through nginx at once: the polite one all 200 with p99 at most 2x its p99 alone, the
# greedy one 429s and no 5xx. Last, stop it gracefully, tear everything down, and print a summary
# with the per-fault table.
#
# usage: sudo scripts/docker-smoke.sh [--model DIR] [--replicas N] [--keep]
#   --model DIR    serve this model folder (<DIR>/<version>/saved_model.pb) instead of models/cifar10
#   --replicas N   classifier containers behind the proxy (default 2, at least 2: the faults take one away)
#   --keep         leave the stack running at the end
#
# Where no image registry can be reached (the development machines), the base images are
# stand-ins built here from Debian packages: python3 (bookworm) for the Dockerfile's BASE_IMAGE,
# nginx from Debian unstable for the proxy (the config needs 1.27.3 or newer), Debian's prometheus.
# Set BASE_IMAGE, NGINX_IMAGE and PROMETHEUS_IMAGE to use real ones (python:3.11-slim, nginx,
# prom/prometheus). Set EXTRA_CA to a CA bundle the build should trust (default: the host's bundle,
# which holds the CA of this network's TLS-intercepting proxy), or to an empty string for none.
# On a shared machine run it under `flock` with the other benchmarks; the Docker daemon it starts
# does not hold the lock.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=${SMOKE_WORK:-/var/tmp/cifar10-docker-smoke}
PROJECT=cifar10smoke
IMAGE_TAG=cifar10-service:smoke
STANDIN_BASE=cifar10-standin-python:bookworm
STANDIN_NGINX=cifar10-standin-nginx:sid
STANDIN_PROMETHEUS=cifar10-standin-prometheus:bookworm
PORT=${SMOKE_PORT:-18000}
PROMETHEUS_PORT=${SMOKE_PROMETHEUS_PORT:-19090}
CONNECTIONS=${SMOKE_CONNECTIONS:-16}  # concurrent requests during the faults
SLOW_S=2                              # no request may take longer, during any fault
CALM_S=3                              # seconds of load before each fault, and after it settled
MEMORY_AFTER_REQUESTS=10000          # the replicas' memory is read after each has answered this many
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
[ "$REPLICAS" -ge 2 ] || die "--replicas must be at least 2: the faults take one away"
[ "$(id -u)" = 0 ] || die "run as root: it installs and starts a Docker engine if needed"
load_at_start=$(cut -d' ' -f1-3 /proc/loadavg)  # latencies below depend on what else the machine runs
mkdir -p "$WORK"

# --- the engine -------------------------------------------------------------------------------
step "Docker engine"
if ! command -v dockerd >/dev/null || ! { docker compose version || command -v docker-compose; } >/dev/null 2>&1; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io docker-compose debootstrap >/dev/null
fi
if ! docker info >/dev/null 2>&1; then
    # No init system here: run the daemon in the background; it outlives this script on purpose
    # (images stay cached for the next run). It must not inherit any other open file: run under
    # `flock bench.lock`, the daemon would otherwise hold the lock for as long as it lives.
    (
        for fd in /proc/self/fd/*; do
            fd=${fd##*/}
            if [ "$fd" -gt 2 ]; then eval "exec $fd>&-"; fi
        done
        exec nohup dockerd
    ) >"$WORK/dockerd.log" 2>&1 &
    for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
    docker info >/dev/null 2>&1 || die "dockerd did not start; see $WORK/dockerd.log"
fi
if docker compose version >/dev/null 2>&1; then COMPOSE=(docker compose); else COMPOSE=(docker-compose); fi
echo "engine $(docker version -f '{{.Server.Version}}'), compose: ${COMPOSE[*]} $("${COMPOSE[@]}" version --short)"
COMPOSE_FILES=(-f "$ROOT/docker-compose.yml")  # the models-volume phase adds its override
compose() { "${COMPOSE[@]}" -p "$PROJECT" "${COMPOSE_FILES[@]}" --profile metrics "$@"; }

# --- base images ------------------------------------------------------------------------------
debootstrap_image() {  # NAME SUITE PACKAGES CMD: a minimal Debian root filesystem as an image, once
    docker image inspect "$1" >/dev/null 2>&1 && return 0
    step "stand-in image $1 from Debian packages (debootstrap $2: $3)"
    command -v debootstrap >/dev/null || apt-get install -y -qq debootstrap >/dev/null
    rootfs=$WORK/rootfs
    rm -rf "$rootfs"
    debootstrap --variant=minbase --include="$3" "$2" "$rootfs" http://deb.debian.org/debian \
        >"$WORK/debootstrap.log" || { tail -n 20 "$WORK/debootstrap.log"; die "debootstrap $2 failed"; }
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    tar -C "$rootfs" -c . | docker import -c "CMD $4" - "$1" >/dev/null
    rm -rf "$rootfs"
}
if [ -z "${BASE_IMAGE:-}" ]; then
    BASE_IMAGE=$STANDIN_BASE
    debootstrap_image "$BASE_IMAGE" bookworm python3,python3-venv,python3-pip,ca-certificates '["python3"]'
fi
if [ -z "${NGINX_IMAGE:-}" ]; then
    # deploy/nginx.conf needs nginx 1.27.3 or newer (`resolve` on an upstream server): bookworm's
    # 1.22 and trixie's 1.26 are too old, so this stand-in is Debian unstable with its nginx.
    NGINX_IMAGE=$STANDIN_NGINX
    debootstrap_image "$NGINX_IMAGE" sid nginx '["nginx", "-g", "daemon off;"]'
fi
if [ -z "${PROMETHEUS_IMAGE:-}" ]; then
    # Laid out as the official prom/prometheus image is (the binary as entrypoint, user nobody, data
    # in /prometheus); docker-compose.yml passes the flags.
    PROMETHEUS_IMAGE=$STANDIN_PROMETHEUS
    if ! docker image inspect "$PROMETHEUS_IMAGE" >/dev/null 2>&1; then
        step "stand-in Prometheus image from Debian packages"
        printf '%s\n' "FROM $BASE_IMAGE" \
            'RUN apt-get update && apt-get install -y --no-install-recommends prometheus \' \
            ' && rm -rf /var/lib/apt/lists/* && mkdir /prometheus && chown nobody:nogroup /prometheus' \
            'USER nobody' 'WORKDIR /prometheus' 'ENTRYPOINT ["/usr/bin/prometheus"]' \
            | DOCKER_BUILDKIT=0 docker build --network host -t "$PROMETHEUS_IMAGE" - >"$WORK/prometheus-build.log" 2>&1 \
            || { tail -n 20 "$WORK/prometheus-build.log"; die "building the stand-in Prometheus image failed"; }
    fi
fi
echo "base: $BASE_IMAGE, proxy: $NGINX_IMAGE, metrics: $PROMETHEUS_IMAGE"

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
layers=$(docker history --no-trunc --human=false --format '{{.Size}}\t{{.CreatedBy}}' "$IMAGE_TAG" | sort -rn \
    | head -n 3 | awk -F '\t' '{ n = split($2, word, " "); what = $2 == "" ? "the base" : word[n]
                                 printf "%s%d MB %s", (NR > 1 ? ", " : ""), $1 / 1e6, what }')
echo "largest layers: $layers"

# The extra CA was for the build stage only.
docker run --rm --entrypoint /bin/sh "$IMAGE_TAG" -c \
    'test ! -e /tmp/extra-ca && test ! -e /tmp/ca-bundle.pem && ! grep -rqs smoke-extra-ca /opt/venv' \
    || die "build-time CA material is in the runtime image"
# Every command the project installs in the image runs (the client is not in the image: no command).
docker run --rm --entrypoint /bin/sh "$IMAGE_TAG" -c \
    'cd /opt/venv/bin && for command in cifar10-*; do "./$command" --help >/dev/null || exit 1; done
     test ! -e cifar10-client' \
    || die "a command the project installs in the image does not run"
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
MEMORY_LIMIT=$(sed -n 's/^ *memory: \${MEMORY:-\(.*\)}$/\1/p' "$ROOT/docker-compose.yml")
export IMAGE=$IMAGE_TAG NGINX_IMAGE PROMETHEUS_IMAGE REPLICAS PUBLISH_PORT=$PORT PROMETHEUS_PORT CPUS=1
# The faults and the model swap load the service from one address far above any per-client limit: the
# limits are lifted for them, and set for the per-client phase at the end (the proxy recreated).
export PROXY_RATE_PER_ADDRESS=100000r/s PROXY_BURST_PER_ADDRESS=100000
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

# An upload larger than nginx keeps in memory waits on the proxy's uploads volume, written by its worker
# user; one byte over MAX_UPLOAD_BYTES is refused by the proxy itself, in the service's JSON.
docker run --rm --entrypoint python "$IMAGE_TAG" -c '
import io, os, sys
from PIL import Image
image = Image.frombytes("RGB", (700, 700), os.urandom(700 * 700 * 3))  # noise: about 1.5 MB as PNG
buffer = io.BytesIO()
image.save(buffer, "PNG")
sys.stdout.buffer.write(buffer.getvalue())' >"$WORK/large.png"
large_kb=$(( $(stat -c %s "$WORK/large.png") / 1000 ))
curl -fsS -o /dev/null -F "file=@$WORK/large.png;type=image/png" "http://127.0.0.1:$PORT/predict" \
    || die "a $large_kb KB upload failed through the proxy (its uploads volume)"
limit=${MAX_UPLOAD_BYTES:-10485760}
head -c $(( limit + 1 )) /dev/zero >"$WORK/over-limit.bin"
status=$(curl -sS -o "$WORK/over-limit.json" -w '%{http_code}' -H 'Content-Type: multipart/form-data; boundary=x' \
    --data-binary "@$WORK/over-limit.bin" "http://127.0.0.1:$PORT/predict" || true)
[ "$status" = 413 ] && grep -q '"detail": "The request body is over the limit of ' "$WORK/over-limit.json" \
    || die "a body of $(( limit + 1 )) bytes got $status through the proxy: $(cat "$WORK/over-limit.json")"
echo "uploads through the proxy: $large_kb KB answered 200 (on its volume); $(( limit + 1 )) bytes refused 413 JSON"

# /metrics is not for the public: nginx answers 404 (JSON, as the service does); each replica serves it.
metrics_status=$(curl -s -o "$WORK/metrics-proxy.json" -w '%{http_code}' "http://127.0.0.1:$PORT/metrics")
[ "$metrics_status" = 404 ] && grep -q '"detail"' "$WORK/metrics-proxy.json" \
    || die "/metrics through the proxy answered $metrics_status, want a JSON 404"
mapfile -t ids < <(compose ps -q classifier)
for id in "${ids[@]}"; do
    docker exec "$id" python -c 'import urllib.request
assert urllib.request.urlopen("http://127.0.0.1:8000/metrics", timeout=5).status == 200' \
        || die "replica ${id:0:12} does not serve /metrics on its own address"
done
echo "/metrics: 404 through the proxy, 200 on each of the $REPLICAS replicas"

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

# --- Prometheus: every replica scraped on its own address ----------------------------------------
step "Prometheus (profile metrics) on 127.0.0.1:$PROMETHEUS_PORT"
replicas_scraped() {  # how many replicas Prometheus scraped successfully last time
    curl -fsS "http://127.0.0.1:$PROMETHEUS_PORT/api/v1/query" \
        --data-urlencode 'query=count(up{job="cifar10-classifier"} == 1)' 2>/dev/null \
        | python3 -c 'import json, sys; r = json.load(sys.stdin)["data"]["result"]; print(r[0]["value"][1] if r else 0)' \
        2>/dev/null || echo 0
}
wait_for() {  # SECONDS WHAT COMMAND...: poll COMMAND every second until it succeeds
    local limit=$1 what=$2
    shift 2
    for _ in $(seq "$limit"); do "$@" && return 0; sleep 1; done
    die "$what: not within ${limit}s"
}
scraped_is() { [ "$(replicas_scraped)" = "$1" ]; }
wait_for 90 "Prometheus scraping $REPLICAS replicas" scraped_is "$REPLICAS"
echo "Prometheus scrapes $REPLICAS/$REPLICAS replicas, each on its own address (DNS service discovery)"

# --- faults under load ------------------------------------------------------------------------
# Load through the proxy on the published loopback port while one replica is killed, one is stopped,
# the service is scaled down and then up again. Every request must succeed, and none may take
# longer than SLOW_S: status counts alone hid stalls of 35-60 s before the proxy was fixed.
step "faults under load: $CONNECTIONS connections through nginx on 127.0.0.1:$PORT"
# "running/healthy", "running/starting", "exited" (an exited container keeps its last health status: ignore it)
state_of() {
    docker inspect -f '{{.State.Status}}{{if and .State.Running .State.Health}}/{{.State.Health.Status}}{{end}}' "$1" \
        2>/dev/null || echo gone
}
healthy_replicas() {
    local id n=0
    mapfile -t all < <(compose ps -q classifier)
    for id in "${all[@]}"; do [ "$(state_of "$id")" = running/healthy ] && n=$((n + 1)); done
    echo "$n"
}
healthy_is() { [ "$(healthy_replicas)" = "$1" ]; }
exited_or_healthy() { case "$(state_of "$1")" in exited|running/healthy) return 0 ;; *) return 1 ;; esac; }
containers_are() { [ "$(compose ps -q classifier | wc -l)" = "$1" ]; }
faults=()
fault_notes=()
load_start() {  # FAULT: start the load, let it run steadily, then mark the fault's start
    python3 "$ROOT/scripts/fault_load.py" --url "http://127.0.0.1:$PORT/predict" --image "$WORK/sample.jpg" \
        --connections "$CONNECTIONS" --timeout 30 --summary "$WORK/fault-$1.json" &
    load_pid=$!
    sleep "$CALM_S"
    kill -USR1 "$load_pid"
    faults+=("$1")
    fault_start=$(now)
}
load_stop() {  # NOTE: keep the load on a while after the fault settled, stop it, wait for its summary
    fault_notes+=("$1, settled after $(( $(now) - fault_start ))s")
    sleep "$CALM_S"
    kill -TERM "$load_pid"
    wait "$load_pid" || die "the load generator failed"
}
faults_start=$(now)
mapfile -t ids < <(compose ps -q classifier)
victim=${ids[0]}

# SIGKILL: no drain at all; what it had in flight is cut, and its address stops answering.
load_start kill
docker kill "$victim" >/dev/null
sleep 2
# Docker's restart policy may bring it back (then wait until healthy) or leave it exited.
wait_for 180 "the killed replica settling" exited_or_healthy "$victim"
load_stop "docker kill, then $(state_of "$victim")"
if [ "$(state_of "$victim")" = exited ]; then docker start "$victim" >/dev/null; fi
wait_for 180 "$REPLICAS replicas healthy again" healthy_is "$REPLICAS"

# SIGTERM: /readyz 503 while still serving through the grace period, then drain and exit.
load_start stop
docker stop "$victim" >/dev/null
load_stop "docker stop, exit code $(docker inspect -f '{{.State.ExitCode}}' "$victim")"
docker start "$victim" >/dev/null
wait_for 180 "$REPLICAS replicas healthy again" healthy_is "$REPLICAS"

load_start scale-down
compose up -d --no-deps --no-recreate --scale "classifier=$(( REPLICAS - 1 ))" classifier >>"$WORK/up.log" 2>&1
wait_for 60 "scaling down to $(( REPLICAS - 1 ))" containers_are $(( REPLICAS - 1 ))
load_stop "--scale classifier=$(( REPLICAS - 1 ))"

load_start scale-up
compose up -d --no-deps --no-recreate --scale "classifier=$REPLICAS" classifier >>"$WORK/up.log" 2>&1
wait_for 180 "scaling up to $REPLICAS healthy replicas" healthy_is "$REPLICAS"
load_stop "--scale classifier=$REPLICAS, new replica healthy"
faults_seconds=$(( $(now) - faults_start ))
# The new replica took requests through the proxy with no reload: nginx re-resolved the name.
mapfile -t ids < <(compose ps -q classifier)
compose logs --no-color proxy >"$WORK/proxy.log" 2>&1  # to a file: `| grep -q` would SIGPIPE under pipefail
for id in "${ids[@]}"; do
    address=$(docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "$id")
    grep -q "upstream=$address:8000 upstream_status=200" "$WORK/proxy.log" \
        || die "replica $address never answered through the proxy after scaling up"
done

wait_for 60 "Prometheus following the scaling" scraped_is "$REPLICAS"
echo "Prometheus scrapes $REPLICAS/$REPLICAS replicas after the faults (the new one included)"
mapfile -t ids < <(compose ps -q classifier)
# What each replica holds after serving the faults' load (docker stats: its cgroup, page cache excluded),
# beside how many requests it has answered (its own /metrics) and how long it took to be ready.
served_by() {
    docker exec "$1" python -c 'import re, urllib.request
text = urllib.request.urlopen("http://127.0.0.1:8000/metrics", timeout=5).read().decode()
print(int(sum(float(v) for v in re.findall(r"^cifar10_requests_total\{[^}]*\} (\S+)$", text, re.M))))'
}
fewest_served() { for id in "${ids[@]}"; do served_by "$id"; done | sort -n | head -1; }
# Issue 24's figure is the memory after 10,000 requests: more load until every replica has answered that many.
while [ "$(fewest_served)" -lt "$MEMORY_AFTER_REQUESTS" ]; do
    python3 "$ROOT/scripts/fault_load.py" --url "http://127.0.0.1:$PORT/predict" --image "$WORK/sample.jpg" \
        --connections "$CONNECTIONS" --duration 30 --summary "$WORK/memory-load.json" \
        || die "the load before the memory reading failed"
done
memory=$(docker stats --no-stream --format '{{.MemUsage}}' "${ids[@]}" | sed 's| / .*||' | paste -sd ' ')
served=$(for id in "${ids[@]}"; do served_by "$id"; done | paste -sd ' ')
ready_after=$(for id in "${ids[@]}"; do
    docker logs "$id" 2>&1 | sed -n 's/.*ready: model warmed up, \([0-9.]*\) s after start.*/\1/p' | tail -1
done | paste -sd ' ')
echo "memory per replica: $memory, after answering $served requests; ready ${ready_after} s after start"

# --- a new model version through a models volume, under load ------------------------------------
# The upgrade path of docs/deployment.md ("Upgrading the model"): the replicas recreated on a host
# folder mounted read-only (deploy/compose.models-volume.yml); a new version renamed into that folder
# (what `python -m training promote` does; here a copy of the served version under the next number);
# every replica must swap it in within MODEL_POLL_SECONDS while CONNECTIONS clients post through the
# proxy, with no failed request and no request over SLOW_S.
POLL_S=${MODEL_POLL_SECONDS:-30}  # compose's default, as an operator gets it
step "a new model version through the models volume (MODEL_POLL_SECONDS=$POLL_S), under load"
volume=$WORK/volume
rm -rf "$volume" && mkdir -p "$volume" && cp -a "$MODEL_SRC" "$volume/cifar10" && chmod -R a+rX "$volume"
export MODELS_DIR=$volume
COMPOSE_FILES+=(-f "$ROOT/deploy/compose.models-volume.yml")
recreate_start=$(now)
compose up -d --no-build --scale "classifier=$REPLICAS" >>"$WORK/up.log" 2>&1 \
    || { tail -n 20 "$WORK/up.log"; die "docker compose up with the models volume failed"; }
proxy_ready() { curl -fsS -o /dev/null "http://127.0.0.1:$PORT/readyz" 2>/dev/null; }
wait_for 300 "$REPLICAS replicas healthy on the models volume" healthy_is "$REPLICAS"
wait_for 60 "the proxy answering" proxy_ready
recreate_seconds=$(( $(now) - recreate_start ))
served_version() {  # ID: the version a replica serves now, from its own /metadata
    docker exec "$1" python -c 'import json, urllib.request
print(json.load(urllib.request.urlopen("http://127.0.0.1:8000/metadata", timeout=5))["model"]["version"])' \
        2>/dev/null || echo none
}
mapfile -t ids < <(compose ps -q classifier)
for id in "${ids[@]}"; do
    docker inspect -f '{{range .Mounts}}{{.Destination}} {{.RW}}{{"\n"}}{{end}}' "$id" | grep -qx '/srv/models false' \
        || die "replica ${id:0:12} has no read-only models volume on /srv/models"
    [ "$(served_version "$id")" = "$model_version" ] || die "replica ${id:0:12} does not serve version $model_version"
done
echo "$REPLICAS replicas recreated on $volume (read-only on /srv/models) in ${recreate_seconds}s, serving version $model_version"
new_version=$(( model_version + 1 ))
load_start model-swap
cp -a "$volume/cifar10/$model_version" "$volume/cifar10/.incoming-$new_version"
mv "$volume/cifar10/.incoming-$new_version" "$volume/cifar10/$new_version"
landed=$(date +%s.%N)
declare -A swapped_after=()
for _ in $(seq $(( POLL_S + 180 ))); do
    for id in "${ids[@]}"; do
        if [ -z "${swapped_after[$id]:-}" ] && [ "$(served_version "$id")" = "$new_version" ]; then
            swapped_after[$id]=$(python3 -c "import time; print(f'{time.time() - $landed:.0f}')")
        fi
    done
    [ "${#swapped_after[@]}" = "$REPLICAS" ] && break
    sleep 1
done
[ "${#swapped_after[@]}" = "$REPLICAS" ] \
    || die "${#swapped_after[@]} of $REPLICAS replicas serve version $new_version $(( POLL_S + 180 ))s after it landed"
swap_seconds=$(for id in "${ids[@]}"; do echo "${swapped_after[$id]}s"; done | paste -sd ' ')
load_stop "version $new_version renamed into the volume; replicas serving it after $swap_seconds"
for id in "${ids[@]}"; do
    docker logs "$id" >"$WORK/replica.log" 2>&1
    [ "$(grep -c "now serving model cifar10 version $new_version " "$WORK/replica.log")" = 1 ] \
        || die "replica ${id:0:12} did not log its swap to version $new_version once"
    grep "now serving model cifar10 version $new_version " "$WORK/replica.log" | sed "s/^/  ${id:0:12}: /"
done
# Through the proxy, every answer now comes from the new version.
for _ in $(seq $(( REPLICAS * 4 ))); do
    curl -fsS -F "file=@$WORK/sample.jpg;type=image/jpeg" "http://127.0.0.1:$PORT/predict" \
        | python3 -c 'import json, sys; sys.exit(json.load(sys.stdin)["model"]["version"] != int(sys.argv[1]))' "$new_version" \
        || die "an answer through the proxy after the swap did not come from version $new_version"
done
echo "every replica swapped to version $new_version (after $swap_seconds); answers through the proxy all from it"

fault_table=$(python3 - "$WORK" "$SLOW_S" "${faults[@]}" -- "${fault_notes[@]}" <<'EOF'
import json
import sys

work, slow_s, rest = sys.argv[1], float(sys.argv[2]), sys.argv[3:]
names, notes = rest[:rest.index("--")], rest[rest.index("--") + 1:]
print(f"{'fault':<11}{'requests':>9}{'failed':>7}{'p50':>8}{'p99':>8}{'slowest':>9}  {'began':>7}  "
      f">{slow_s:g}s  {'before':>7}  what happened")
bad = []
for name, note in zip(names, notes, strict=True):
    s = json.load(open(f"{work}/fault-{name}.json"))
    print(f"{name:<11}{s['requests']:>9}{s['failed']:>7}{s['p50_s']:>7.2f}s{s['p99_s']:>7.2f}s"
          f"{s['slowest_s']:>8.2f}s  {s['slowest_started_s']:>+6.1f}s  {s['over_2s']:>3}"
          f"  {s['slowest_before_fault_s']:>6.2f}s  {note}")
    if s["failed"] or s["slowest_s"] > slow_s or not s["requests"]:
        bad.append(f"{name}: {s['failed']} failed {s['failures']}, slowest {s['slowest_s']} s")
print("(began: when the slowest request started, in seconds from the fault; before: the slowest request\n"
      " that started before the fault, i.e. the machine's own latency under this load)")
for line in bad:
    print(f"FAILED {line}")
EOF
)
echo "$fault_table"
case "$fault_table" in *FAILED*) die "faults or the model swap under load: a request failed or took longer than ${SLOW_S}s" ;; esac

# --- per-client limits at the proxy ----------------------------------------------------------------
# nginx's limit_req per client address (deploy/nginx.conf), set here below compose's defaults so that the
# greedy client's admitted share stays small next to 1-CPU replicas. The polite client runs in a container
# on the compose network (an address of its own) at POLITE_RATE requests a second over 2 connections,
# first alone, then beside the greedy one: 64 connections from the host (the bridge's address), which waits
# out each 429's Retry-After as the project's client does.
LIMIT_RATE=${SMOKE_RATE:-5r/s}
LIMIT_BURST=${SMOKE_BURST:-10}
POLITE_RATE=4
LIMIT_S=30
step "per-client limits: PROXY_RATE_PER_ADDRESS=$LIMIT_RATE, burst $LIMIT_BURST; a polite client alone, then beside a greedy one"
export PROXY_RATE_PER_ADDRESS=$LIMIT_RATE PROXY_BURST_PER_ADDRESS=$LIMIT_BURST
compose up -d --no-deps proxy >>"$WORK/up.log" 2>&1 || { tail -n 20 "$WORK/up.log"; die "recreating the proxy failed"; }
wait_for 60 "the proxy answering" proxy_ready
network=$(docker inspect -f '{{range $name, $_ := .NetworkSettings.Networks}}{{$name}}{{end}}' "$(compose ps -q proxy)")
polite() {  # NAME: the polite client for LIMIT_S seconds; its summary in $WORK/NAME.json
    docker run --rm --network "$network" -v "$ROOT/scripts:/scripts:ro" -v "$WORK/sample.jpg:/sample.jpg:ro" \
        --entrypoint python "$IMAGE_TAG" /scripts/fault_load.py --url http://proxy/predict --image /sample.jpg \
        --connections 2 --rate "$POLITE_RATE" --duration "$LIMIT_S" --timeout 30 >"$WORK/$1.json" \
        || die "the polite client ($1) failed"
}
polite polite-alone
python3 "$ROOT/scripts/fault_load.py" --url "http://127.0.0.1:$PORT/predict" --image "$WORK/sample.jpg" \
    --connections 64 --honour-retry-after --duration $(( LIMIT_S + 4 )) --timeout 30 --summary "$WORK/greedy.json" &
greedy_pid=$!
sleep 2
polite polite-beside-greedy
wait "$greedy_pid" || die "the greedy client failed"
limits=$(python3 - "$WORK" <<'EOF'
import json
import sys

work = sys.argv[1]
alone, beside, greedy = (json.load(open(f"{work}/{name}.json")) for name in ("polite-alone", "polite-beside-greedy", "greedy"))
def row(name, s):
    return (f"{name:<22}{s['requests']:>9}{s['ok']:>6}{s['too_many']:>6}{s['server_errors']:>6}{s['failed']:>8}"
            f"{s['p50_s']:>7.3f}s{s['p99_ok_s']:>7.3f}s")
print(f"{'client':<22}{'requests':>9}{'200':>6}{'429':>6}{'5xx':>6}{'failed':>8}{'p50':>8}{'p99 200':>8}")
for name, summary in (("polite alone", alone), ("polite beside greedy", beside), ("greedy (64 conn.)", greedy)):
    print(row(name, summary))
bad = []
if alone["failed"] or beside["failed"] or not alone["requests"] or not beside["requests"]:
    bad.append(f"the polite client got other answers than 200: {alone['failures']} alone, {beside['failures']} beside")
if beside["p99_ok_s"] > 2 * alone["p99_ok_s"]:
    bad.append(f"the polite client's p99 beside the greedy one, {beside['p99_ok_s']} s, is over 2x its "
               f"{alone['p99_ok_s']} s alone")
if not greedy["too_many"] or greedy["server_errors"] or greedy["failed"] != greedy["too_many"]:
    bad.append(f"the greedy client: {greedy['too_many']} 429s, {greedy['server_errors']} 5xx, failures {greedy['failures']}")
for line in bad:
    print(f"FAILED {line}")
EOF
)
echo "$limits"
case "$limits" in *FAILED*) die "per-client limits" ;; esac

# --- graceful stop: SIGTERM must reach uvicorn ------------------------------------------------
step "docker compose stop"
mapfile -t ids < <(compose ps -q classifier)  # the faults replaced one
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
layers         $layers
time to healthy ${healthy_seconds}s from \`compose up\` to $REPLICAS/$REPLICAS replicas healthy and nginx ready
prediction     $prediction
load balancing $answering/$REPLICAS replicas answered through nginx
memory         $memory per replica (docker stats after the faults' load: $served requests answered; limit $MEMORY_LIMIT)
ready          $ready_after s after start, per replica (its log's "ready: model warmed up" line)
metrics        Prometheus scraped every replica on its own address, before and after the faults; /metrics 404 through nginx
limits         PROXY_RATE_PER_ADDRESS=$LIMIT_RATE burst $LIMIT_BURST; polite client at ${POLITE_RATE}/s over 2 connections, greedy at 64:
$limits
faults         $CONNECTIONS connections through nginx, in ${faults_seconds}s (restoring replicas included):
model swap     version $new_version renamed into the models volume; replicas serving it after $swap_seconds
               (MODEL_POLL_SECONDS=$POLL_S; recreating them on the volume took ${recreate_seconds}s)
$fault_table
shutdown       SIGTERM -> exit 0 from all $REPLICAS replicas in ${stop_seconds}s
machine        load average $load_at_start at the start, $(cut -d' ' -f1-3 /proc/loadavg) at the end ($(nproc) CPUs)
docker-smoke: OK
EOF
