#!/usr/bin/env bash
# Runs every Vigil test on a fresh Debian 12 machine: installs the system packages the
# tests need when they are missing, then runs the whole workspace's tests.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
for pkg_cmd in "iproute2:ip" "iptables:iptables" "tcpdump:tcpdump" "util-linux:setpriv" "python3-pip:pip3" "prometheus:promtool" "chromium:chromium" "testssl.sh:testssl" "buildah:buildah" "podman:podman" "runc:runc" "binutils:strip"; do
  pkg=${pkg_cmd%%:*}; cmd=${pkg_cmd##*:}
  command -v "$cmd" >/dev/null 2>&1 || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "==> installing Debian packages the tests need: ${need[*]}" >&2
  if [ "$(id -u)" -ne 0 ]; then
    echo "error: missing ${need[*]} and not root; install them with apt-get and rerun" >&2
    exit 1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

# Offline validation of manifests/ and `vigil inject` output (control-plane/tests/manifests.rs).
if ! python3 -c "import kubernetes_validate" >/dev/null 2>&1; then
  echo "==> installing the kubernetes-validate Python package" >&2
  pip3 install --quiet kubernetes-validate 2>/dev/null \
    || pip3 install --quiet --break-system-packages kubernetes-validate
fi

# Real gRPC and WebSocket applications behind the mesh (tests/tests/grpc.rs, websocket.rs).
for module_pkg in "grpc:grpcio" "websockets:websockets"; do
  module=${module_pkg%%:*}; pkg=${module_pkg##*:}
  if ! python3 -c "import $module" >/dev/null 2>&1; then
    echo "==> installing the $pkg Python package" >&2
    pip3 install --quiet "$pkg" 2>/dev/null \
      || pip3 install --quiet --break-system-packages "$pkg"
  fi
done

# sslyze, the second TLS audit of the inbound port beside testssl.sh (tests/hostile/testssl.rs).
if ! python3 -c "import sslyze" >/dev/null 2>&1; then
  echo "==> installing the sslyze Python package (TLS audit)" >&2
  pip3 install --quiet sslyze 2>/dev/null \
    || pip3 install --quiet --break-system-packages sslyze
fi

# OPA itself, as the oracle of the policy differential suite (authz/tests/opa_oracle.rs). The
# package declares Python >= 3.14 but works on Debian 12's 3.11.
if ! python3 -c "import opa_bindings" >/dev/null 2>&1; then
  echo "==> installing the opa-golib-python-bindings Python package (OPA for the policy suite)" >&2
  pip3 install --quiet --ignore-requires-python opa-golib-python-bindings 2>/dev/null \
    || pip3 install --quiet --ignore-requires-python --break-system-packages opa-golib-python-bindings
fi

# A one-off run gains nothing from incremental caches, which would about double the build's
# size on disk; set CARGO_INCREMENTAL=1 to keep them while iterating.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
echo "==> cargo test --workspace (a cold build takes about 10 minutes on 2 cores)" >&2
cargo test --workspace "$@"
