#!/usr/bin/env bash
# The main job end to end on the embedded default: the local CDN testbed, local Ray and Serve,
# one prewarm request shaped like the spec's example, its progress, summary and report.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
exec .venv/bin/prewarm demo "$@"
