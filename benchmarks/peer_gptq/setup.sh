#!/usr/bin/env bash
# A separate venv for the peer GPTQ (llm-compressor), never the project's venv: llm-compressor pins its
# own transformers / compressed-tensors, and torch<=2.14.0, so pip replaces the local-disk torch 2.14.1
# with PyPI's 2.14.0 (a CUDA build; it runs on the CPU here).
#   bash benchmarks/peer_gptq/setup.sh [VENV]      (default /tmp/peer-venv)
set -euo pipefail
VENV=${1:-/tmp/peer-venv}
LLMCOMPRESSOR_VERSION=0.14.0.1
python3 -m venv "$VENV"
"$VENV/bin/pip" install -q --upgrade pip
"$VENV/bin/pip" install -q torch==2.14.1
"$VENV/bin/pip" install -q "llmcompressor==$LLMCOMPRESSOR_VERSION" gguf
"$VENV/bin/python" -c "import llmcompressor, transformers, torch; print('llmcompressor', llmcompressor.__version__, 'transformers', transformers.__version__, 'torch', torch.__version__)"
