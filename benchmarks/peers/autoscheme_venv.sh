#!/usr/bin/env bash
# AutoRound (PyPI `auto-round`, for its AutoScheme mixed-bit allocator) in its own virtual environment,
# never the project's. torch comes first from the local index (CPU, the tested version), so auto-round's
# own requirements resolve around it; transformers and gguf load the SmolLM2 asset the same way as ours.
#   bash benchmarks/peers/autoscheme_venv.sh          # AUTOSCHEME_VENV, AUTOROUND_VERSION override
# Then: $AUTOSCHEME_VENV/bin/python -m benchmarks.peers.autoscheme_policy ...
set -euo pipefail
VENV="${AUTOSCHEME_VENV:-/tmp/infoq-autoscheme-venv}"
VERSION="${AUTOROUND_VERSION:-0.16.1}"
PYTHON="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip
fi
"$VENV/bin/pip" install -q torch==2.14.1
"$VENV/bin/pip" install -q "auto-round==$VERSION" gguf
"$VENV/bin/python" -c "import auto_round, transformers, torch; print('auto-round', auto_round.__version__, 'transformers', transformers.__version__, 'torch', torch.__version__)"
