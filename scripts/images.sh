#!/usr/bin/env bash
# Builds Vigil's OCI images without any image registry or base image: each is assembled
# from scratch with buildah, holding only its binaries, the shared libraries they load
# (found with ldd) and a passwd entry for its non-root user.
#
#   vigil/proxy:<version>          vigil-proxy (runs as 1337), vigil-init and vigil-cni, with the
#                                  iptables it drives (nft and legacy) and its extensions
#   vigil/control-plane:<version>  vigil (runs as 65532)
#
# The images land in the local container storage (podman and buildah see them) and as
# OCI archives in target/images/, for `kind load image-archive`, `ctr images import` or
# `skopeo copy oci-archive:... docker://<your registry>/...` (see docs/kubernetes.md).
#
# Binaries come from `cargo build --profile image` (release, debug info stripped) unless
# VIGIL_IMAGE_BIN_DIR names a directory that already has them (the test suite passes its
# own debug build, with the debug info stripped here, to stay quick).
#
#   scripts/images.sh [--tag VERSION]
set -euo pipefail
cd "$(dirname "$0")/.."

version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)
while [ $# -gt 0 ]; do
  case "$1" in
    --tag) version=$2; shift 2 ;;
    *) echo "usage: scripts/images.sh [--tag VERSION]" >&2; exit 2 ;;
  esac
done

for tool in buildah ldd strip; do
  command -v "$tool" >/dev/null 2>&1 || {
    echo "error: $tool is missing; install it with: apt-get install -y buildah binutils libc-bin" >&2
    exit 1
  }
done
for tool in xtables-nft-multi xtables-legacy-multi; do
  command -v "$tool" >/dev/null 2>&1 || {
    echo "error: $tool is missing (vigil-init's image carries iptables); install it with: apt-get install -y iptables" >&2
    exit 1
  }
done

bin_dir=${VIGIL_IMAGE_BIN_DIR:-}
if [ -z "$bin_dir" ]; then
  echo "==> cargo build --profile image (release, no debug info)" >&2
  cargo build --profile image -p vigil -p vigil-proxy --bins
  bin_dir=target/image
fi
for b in vigil vigil-proxy vigil-init vigil-cni; do
  [ -x "$bin_dir/$b" ] || { echo "error: $bin_dir/$b is missing; build it first (cargo build --profile image)" >&2; exit 1; }
done

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p target/images

# Copies into rootfs $1 every shared library that $2... load, at the same paths.
copy_libs_of() {
  local root=$1; shift
  local f lib
  for f in "$@"; do
    for lib in $(ldd "$f" 2>/dev/null | grep -o '/[^ ]*' || true); do
      [ -e "$root$lib" ] || cp -L --parents "$lib" "$root"
    done
  done
}

# Copies the files $2... (absolute paths) into rootfs $1 at the same paths, with their
# shared libraries.
copy_with_libs() {
  local root=$1; shift
  cp -L --parents "$@" "$root"
  copy_libs_of "$root" "$@"
}

# A root filesystem with /etc/passwd naming $2 ($3:$3) and a world-writable /tmp.
new_rootfs() {
  local root=$1 user=$2 uid=$3
  mkdir -p "$root/etc" "$root/tmp" "$root/usr/local/bin"
  chmod 1777 "$root/tmp"
  printf 'root:x:0:0:root:/:/sbin/nologin\n%s:x:%s:%s:%s:/:/sbin/nologin\n' "$user" "$uid" "$uid" "$user" >"$root/etc/passwd"
  printf 'root:x:0:\n%s:x:%s:\n' "$user" "$uid" >"$root/etc/group"
}

# Installs binary $2 into rootfs $1 as /usr/local/bin/<name>, debug info stripped.
install_binary() {
  local root=$1 bin=$2
  strip --strip-debug -o "$root/usr/local/bin/$(basename "$bin")" "$bin"
  copy_libs_of "$root" "$bin"
}

# Commits rootfs $1 as image $2 running $3 (JSON array) as user $4.
commit_image() {
  local root=$1 name=$2 entrypoint=$3 user=$4
  local ctr
  ctr=$(buildah from scratch)
  buildah copy --quiet "$ctr" "$root" / >/dev/null
  buildah config --user "$user" --entrypoint "$entrypoint" --cmd '[]' --workingdir / \
    --env PATH=/usr/local/bin:/usr/sbin:/usr/bin \
    --label org.opencontainers.image.title="$name" \
    --label org.opencontainers.image.version="$version" \
    --label org.opencontainers.image.source=https://github.com/vigil-mesh/vigil "$ctr"
  buildah commit --quiet --rm "$ctr" "$name:$version" >/dev/null
  local archive="target/images/$(basename "$name").tar"
  rm -f "$archive"
  buildah push --quiet "$name:$version" "oci-archive:$archive:$name:$version" >/dev/null
  echo "==> $name:$version ($(du -h "$archive" | cut -f1) archive: $archive)" >&2
}

# The proxy: vigil-proxy as 1337; vigil-init (run as root by the injector) with iptables.
proxy=$work/proxy
new_rootfs "$proxy" vigil 1337
install_binary "$proxy" "$bin_dir/vigil-proxy"
install_binary "$proxy" "$bin_dir/vigil-init"
# vigil-cni, which the vigil-cni DaemonSet copies onto each node (manifests/cni/).
install_binary "$proxy" "$bin_dir/vigil-cni"
nft=$(command -v xtables-nft-multi)
legacy=$(command -v xtables-legacy-multi)
copy_with_libs "$proxy" "$nft" "$legacy"
# The matches and targets iptables loads at run time (owner, REDIRECT, tcp, ...).
extensions=/usr/lib/$(gcc -dumpmachine 2>/dev/null || echo x86_64-linux-gnu)/xtables
[ -d "$extensions" ] || { echo "error: no iptables extensions in $extensions; install iptables" >&2; exit 1; }
copy_with_libs "$proxy" "$extensions"/*.so
for name in iptables iptables-restore iptables-save ip6tables ip6tables-restore ip6tables-save; do
  ln -sf "$nft" "$proxy/usr/sbin/$name"
  ln -sf "$legacy" "$proxy/usr/sbin/${name/tables/tables-legacy}"
done
commit_image "$proxy" vigil/proxy '["/usr/local/bin/vigil-proxy"]' 1337:1337

# The control plane, as the manifest runs it (65532).
cp_root=$work/control-plane
new_rootfs "$cp_root" nonroot 65532
install_binary "$cp_root" "$bin_dir/vigil"
mkdir -p "$cp_root/var/lib/vigil"
chown 65532:65532 "$cp_root/var/lib/vigil"
commit_image "$cp_root" vigil/control-plane '["/usr/local/bin/vigil"]' 65532:65532

buildah images --format '{{.Name}}:{{.Tag}} {{.Size}}' | grep -E '^(localhost/)?vigil/' >&2 || true
