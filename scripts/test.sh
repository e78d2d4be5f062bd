#!/usr/bin/env bash
# Every test: lint, then unit and integration tests (real nginx, dnsmasq, Ray and Serve on loopback).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
.venv/bin/ruff check prewarm tests bench serve_app.py
exec .venv/bin/python -m pytest "$@"
