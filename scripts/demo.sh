#!/usr/bin/env bash
# Builds Vigil and runs the demo mesh on this machine until Ctrl-C.
# Pass --duration 30s (or any vigil up option) for a bounded run.
set -euo pipefail
cd "$(dirname "$0")/.."
echo "==> building Vigil (release; the first build takes a few minutes)" >&2
cargo build --release --bins
echo "==> starting the mesh" >&2
exec target/release/vigil up --mesh examples/quickstart/mesh.yaml "$@"
