#!/usr/bin/env bash
# The test command (README Quick start, .ci/run): installs what the tests need, then runs the suite in two pytest
# sessions at once (scripts/lanes.py: what uses Slurm and the login node, and the rest); arguments go to both.
# Idempotent: the Python deps come from uv.lock; the vLLM CPU venv and the built-in model are
# provisioned once under $NEMOTRON_HOME (default ~/.cache/nemotron) and reused; Slurm's daemons are
# started if they are not running (stop them with `bash scripts/slurm/slurm.sh stop`).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

command -v uv >/dev/null 2>&1 || python3 -m pip install -q uv
uv sync --frozen --quiet
uv run nemotron nano3 setup
# A single-node Slurm for the `--run PROFILE` tests (installs and starts the daemons; needs root).
bash scripts/slurm/slurm.sh start >/dev/null

# A browser for the Prefect UI tests (tests/test_ui.py): Debian's Chromium, headless.
if ! command -v chromium >/dev/null 2>&1; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi

# A terminal for the live view's test (tests/test_live_view.py): tmux, read back with capture-pane.
if ! command -v tmux >/dev/null 2>&1; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq tmux >/dev/null
fi

# Benchmark data: an offline Hugging Face cache (no hub here); the project copies a read-only one.
if [ -z "${HF_HOME:-}" ] && [ -d ../shared/hf-home ]; then
  export HF_HOME="$(cd ../shared/hf-home && pwd)"
fi
export PREFECT_SERVER_ANALYTICS_ENABLED=false NEMO_EVALUATOR_TELEMETRY_LEVEL=0

exec uv run python scripts/lanes.py "$@"
