#!/usr/bin/env bash
# The chart and Containerfile checks, with real tools (scripts/chart-tools fetches them once):
# hadolint on the Containerfile, then helm lint --strict and rendered-manifest assertions for
# every charts/kvm-manager/ci/*-values.yaml scenario. A few seconds; no cluster needed.
set -euo pipefail
cd "$(dirname "$0")/../.."
tools=$(scripts/chart-tools)

"$tools/hadolint" --failure-threshold info Containerfile
echo "ok   containerfile_is_hadolint_clean"

# Debian's python3 (scripts/deps installs python3-yaml for it), not whatever is first on PATH.
/usr/bin/python3 tests/chart/test_chart.py "$tools/helm" charts/kvm-manager src/cli.rs \
    charts/kvm-manager/README.md
