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

# The affinity mask (cpuset). Not OMP_NUM_THREADS or OMP_THREAD_LIMIT, which GNU nproc prints instead
# when they are set: an operator's OMP_NUM_THREADS=1 would silently leave one inference thread.
cpus=$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)

quota=""
period=""
if [ -r "$CGROUP_CPU_MAX" ]; then
    # cgroup v2: "<quota> <period>", quota "max" when unlimited
    read -r quota period < "$CGROUP_CPU_MAX" || true  # an empty file: no quota read, not an exit
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

# WORKERS as the service reads it: blanks, a leading + and _ between digits allowed; no leading zero, which the
# shell would read as octal. One that is not a whole number of at least 1 is the service's to refuse, in one
# line naming it: here it counts as 1 rather than failing in shell arithmetic first.
workers=$(printf '%s' "${WORKERS:-}" | tr -d ' \t_' | sed 's/^+//; s/^0*//')
case "$workers" in
    ''|*[!0-9]*) workers=1 ;;
esac
if [ "${#workers}" -gt 6 ]; then
    per_worker=1  # more workers than any machine has CPUs
else
    per_worker=$(( cpus / workers ))
fi
if [ "$per_worker" -lt 1 ]; then per_worker=1; fi
export INFERENCE_THREADS="${INFERENCE_THREADS:-$per_worker}"
export DECODE_THREADS="${DECODE_THREADS:-$per_worker}"

exec "$@"
