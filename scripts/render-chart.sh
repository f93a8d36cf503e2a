#!/usr/bin/env bash
# `helm template` for charts/pylon without helm: merges values.yaml with the given override files
# (later ones win, maps merged key by key) and renders the templates with Go's text/template
# (scripts/helm-template). Prints the manifests.
#   scripts/render-chart.sh [OVERRIDES.yaml ...]      env: RELEASE (pylon), NAMESPACE (pylon-system)
set -euo pipefail
cd "$(dirname "$0")/.."
values=$(mktemp)
trap 'rm -f "$values"' EXIT
python3 - charts/pylon/values.yaml "$@" > "$values" <<'PY'
import json, sys, yaml
def merge(base, override):
    for key, value in override.items():
        base[key] = merge(base[key], value) if isinstance(value, dict) and isinstance(base.get(key), dict) else value
    return base
values = {}
for path in sys.argv[1:]:
    values = merge(values, yaml.safe_load(open(path)) or {})
json.dump(values, sys.stdout)
PY
go run scripts/helm-template/main.go charts/pylon "$values" "${RELEASE:-pylon}" "${NAMESPACE:-pylon-system}"
