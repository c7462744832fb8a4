#!/usr/bin/env bash
# Builds vLLM in its own virtual environment (never a dependency of infoq_hf), for benchmarks/vllm_check.py.
# Usage: bash benchmarks/vllm_venv.sh [VENV_DIR]   (default /tmp/vllm-venv; VLLM_SPEC overrides the pip spec)
set -euo pipefail
VENV="${1:-/tmp/vllm-venv}"
SPEC="${VLLM_SPEC:-vllm}"
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip
fi
"$VENV/bin/pip" install "$SPEC"
"$VENV/bin/python" -c "import vllm, torch; print('vllm', vllm.__version__, 'torch', torch.__version__)"
