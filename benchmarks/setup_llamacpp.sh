#!/usr/bin/env bash
# Build llama-cpp-python (it compiles llama.cpp from the sdist, CPU only) into its own virtual
# environment, never into the project's. Many minutes on 2 cores; run it once, e.g.
#   flock /tmp/infoq-heavy.lock bash benchmarks/setup_llamacpp.sh > /tmp/infoq-llamacpp-build.log 2>&1 &
# Then benchmarks/gguf_llamacpp.py --llamacpp-venv "$LLAMACPP_VENV" uses it.
set -euo pipefail
VENV="${LLAMACPP_VENV:-/tmp/infoq-llamacpp-venv}"
VERSION="${LLAMACPP_VERSION:-0.3.36}"
PYTHON="${PYTHON:-python3}"
if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c "import llama_cpp" 2>/dev/null; then
  echo "llama-cpp-python already in $VENV"; exit 0
fi
"$PYTHON" -m venv "$VENV"
"$VENV/bin/pip" install -q --upgrade pip
# CPU build; no native -march tuning so the library runs on any x86-64 this venv is copied to.
export CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BLAS=OFF -DGGML_CUDA=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF}"
export CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-2}"
"$VENV/bin/pip" install --no-cache-dir "llama-cpp-python==$VERSION" numpy
"$VENV/bin/python" -c "import llama_cpp; print('llama-cpp-python', llama_cpp.__version__, 'built in', '$VENV')"
