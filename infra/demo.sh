#!/usr/bin/env bash
# make demo / make demo-stop: see pipeline/demo.py
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python -m pipeline.demo "${1:-run}"
