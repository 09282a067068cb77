#!/bin/sh
# Container entrypoint: size the thread pools from the container's CPU limit, then exec the command.
#
# The service defaults INFERENCE_THREADS and DECODE_THREADS to the CPUs it may run on
# (os.sched_getaffinity), which follows `cpuset` but not a CFS quota (`docker run --cpus`, compose
# `cpus:`, Kubernetes `limits.cpu`): with a quota of 2 CPUs on a 64-core host, 64 threads would
# fight over 2 CPUs' worth of time. So the quota, rounded up, caps the count here, and it is shared
# between uvicorn workers (each worker loads its own model and runs its own pools).
# A value set explicitly in the environment always wins.
set -eu

# Paths are variables so the test suite can feed this script a fake cgroup.
CGROUP_CPU_MAX=${CGROUP_CPU_MAX:-/sys/fs/cgroup/cpu.max}
CGROUP_V1_CPU=${CGROUP_V1_CPU:-/sys/fs/cgroup/cpu}

cpus=$(nproc)  # affinity mask (cpuset)

quota=""
period=""
if [ -r "$CGROUP_CPU_MAX" ]; then
    # cgroup v2: "<quota> <period>", quota "max" when unlimited
    read -r quota period < "$CGROUP_CPU_MAX"
elif [ -r "$CGROUP_V1_CPU/cpu.cfs_quota_us" ] && [ -r "$CGROUP_V1_CPU/cpu.cfs_period_us" ]; then
    # cgroup v1: quota -1 when unlimited
    quota=$(cat "$CGROUP_V1_CPU/cpu.cfs_quota_us")
    period=$(cat "$CGROUP_V1_CPU/cpu.cfs_period_us")
fi
case "$quota" in
    ''|max|-*) ;;
    *)
        if [ "${period:-0}" -gt 0 ]; then
            limit=$(( (quota + period - 1) / period ))
            if [ "$limit" -lt "$cpus" ]; then cpus=$limit; fi
        fi
        ;;
esac

per_worker=$(( cpus / ${WORKERS:-1} ))
if [ "$per_worker" -lt 1 ]; then per_worker=1; fi
export INFERENCE_THREADS="${INFERENCE_THREADS:-$per_worker}"
export DECODE_THREADS="${DECODE_THREADS:-$per_worker}"

exec "$@"
