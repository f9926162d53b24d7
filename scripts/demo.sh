#!/usr/bin/env bash
# Builds Vigil and runs the demo mesh on this machine until Ctrl-C: a small shop behind
# sidecars (loadgen → web → orders → payments, inventory), a policy that denies some
# calls, a flaky service, and the dashboard (its URL is printed once everything is up).
# Pass --duration 30s for a bounded run, --data-dir DIR to keep its files elsewhere.
set -euo pipefail
cd "$(dirname "$0")/.."
echo "==> building Vigil (release; the first build takes a few minutes)" >&2
cargo build --release -p vigil -p vigil-proxy -p vigil-demo-apps
echo "==> starting the demo" >&2
exec target/release/vigil demo "$@"
