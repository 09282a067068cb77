#!/usr/bin/env bash
# Audit the locked dependencies for known vulnerabilities: `bash scripts/audit.sh [LOCK ...]`.
# pip-audit looks every pinned version up in PyPI's advisory feed (AUDIT_SERVICE=osv for OSV's).
# --strict: a package whose advisories cannot be fetched fails the audit instead of passing unseen,
# so a machine without access to the feed reports that rather than a clean bill.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
pip_audit=${PIP_AUDIT:-$root/.venv/bin/pip-audit}
service=${AUDIT_SERVICE:-pypi}
usage="usage: bash scripts/audit.sh [LOCK ...]  (default: requirements.lock and requirements-serve.lock)"
case "${1:-}" in
  -h|--help) echo "$usage"; exit 0 ;;
  -*) echo "audit.sh: unknown option $1; $usage" >&2; exit 2 ;;
esac
if [ "$#" -gt 0 ]; then locks=("$@"); else locks=("$root/requirements.lock" "$root/requirements-serve.lock"); fi
for lock in "${locks[@]}"; do
  [ -f "$lock" ] || { echo "audit.sh: $lock: no such file; $usage" >&2; exit 2; }
done
command -v "$pip_audit" >/dev/null || {
  echo "audit.sh: $pip_audit is missing: run 'make install' (or set PIP_AUDIT)" >&2; exit 2; }
status=0
for lock in "${locks[@]}"; do
  echo "== pip-audit $lock ($service)"
  "$pip_audit" --requirement "$lock" --no-deps --disable-pip --strict --vulnerability-service "$service" \
    --progress-spinner off || status=1
done
exit "$status"
