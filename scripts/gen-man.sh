#!/usr/bin/env bash
# Regenerates man/<tool>.1 from each tool's clap definition (the same one
# --help uses). tests/pipeline.rs fails when a page is stale.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --workspace --bins
for dir in tools/*/; do
  tool=$(basename "$dir")
  "${CARGO_TARGET_DIR:-target}"/debug/"$tool" --generate-man > "man/$tool.1"
done
ls man
