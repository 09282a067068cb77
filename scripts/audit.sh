#!/usr/bin/env bash
# Audit the locked dependencies for known vulnerabilities: `bash scripts/audit.sh [LOCK ...]`.
# pip-audit looks every pinned version up in PyPI's advisory feed (AUDIT_SERVICE=osv for OSV's).
# --strict: a package whose advisories cannot be fetched fails the audit instead of passing unseen,
# so a machine without access to the feed reports that rather than a clean bill.
set -euo pipefail
cd "$(dirname "$0")/.."
pip_audit=${PIP_AUDIT:-.venv/bin/pip-audit}
service=${AUDIT_SERVICE:-pypi}
if [ "$#" -gt 0 ]; then locks=("$@"); else locks=(requirements.lock requirements-serve.lock); fi
status=0
for lock in "${locks[@]}"; do
  echo "== pip-audit $lock ($service)"
  "$pip_audit" --requirement "$lock" --no-deps --disable-pip --strict --vulnerability-service "$service" \
    --progress-spinner off || status=1
done
exit "$status"
