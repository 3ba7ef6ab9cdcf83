#!/usr/bin/env bash
# The operator's container image, built without a daemon or a registry: `make image`.
#
#   image.sh                  build the release binary, stage the root filesystem, and commit it
#                             with buildah (Debian package, vfs storage in the cache) as an OCI
#                             archive: target/image/switchyard.oci.tar, ref switchyard:VERSION
#   image.sh rootfs BIN DIR   only stage the root filesystem for BIN into DIR (the Dockerfile's
#                             build stage runs this too, so both images hold the same files)
#
# The image is FROM scratch: the stripped binary, the shared libraries ldd names for it (glibc,
# OpenSSL and zlib for librdkafka, libgcc_s), the CA bundle, passwd/group entries for the
# non-root user 65532 and an empty /tmp. No shell, no package manager. Its config (user,
# entrypoint, cmd, port) is the Dockerfile's; tests/e2e/image.rs checks both against the chart.
# Rebuilt only when the staged files or this script changed.
set -euo pipefail

REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
CACHE_DIR="${SWITCHYARD_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/switchyard}"
OUT_DIR="$REPO_DIR/target/image"
ARCHIVE="$OUT_DIR/switchyard.oci.tar"
USER_ID=65532
PORT=8080
BIN_PATH=/usr/local/bin/switchyard

log() { printf '[image] %s\n' "$*" >&2; }
die() { printf '[image] ERROR: %s\n' "$*" >&2; exit 1; }

# copy_path ROOTFS PATH: PATH into ROOTFS at the same place, recreating each symlink met on the
# way (Debian's /lib -> usr/lib, libz.so.1 -> libz.so.1.2.13), so the loader finds what ldd did.
copy_path() {
  local root="$1" path="$2" walked="" rest part target
  rest="${path#/}"
  while [ -n "$rest" ]; do
    part="${rest%%/*}"
    if [ "$part" = "$rest" ]; then rest=""; else rest="${rest#*/}"; fi
    if [ -L "$walked/$part" ]; then
      target="$(readlink "$walked/$part")"
      mkdir -p "$root$walked"
      [ -L "$root$walked/$part" ] || ln -s "$target" "$root$walked/$part"
      # $walked holds no symlink, so resolving `..` lexically is exact.
      case "$target" in /*) ;; *) target="$(realpath -m -s "$walked/$target")" ;; esac
      copy_path "$root" "$target${rest:+/$rest}"
      return
    fi
    walked="$walked/$part"
  done
  mkdir -p "$root$(dirname "$path")"
  cp -p "$path" "$root$path"
}

# rootfs BIN DIR: the image's files for the operator binary BIN, staged afresh in DIR.
rootfs() {
  local bin="$1" root="$2" lib
  [ -x "$bin" ] || die "$bin is not an executable"
  rm -rf "$root"
  mkdir -p "$root/usr/local/bin" "$root/etc/ssl/certs" "$root/usr/lib/ssl"
  install -m 0755 "$bin" "$root$BIN_PATH"
  strip "$root$BIN_PATH"
  # The dynamic loader and every library it resolves (none for a static binary).
  if ldd "$bin" >/dev/null 2>&1; then
    if ldd "$bin" | grep -q 'not found'; then die "$(ldd "$bin" | grep 'not found')"; fi
    for lib in $(ldd "$bin" | grep -o '/[^ ]*'); do copy_path "$root" "$lib"; done
  fi
  # rustls reads the system roots from here; OpenSSL (librdkafka) from OPENSSLDIR/cert.pem,
  # which Debian's OpenSSL points at the same bundle.
  cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
  ln -s /etc/ssl/certs/ca-certificates.crt "$root/usr/lib/ssl/cert.pem"
  # Names for the numeric user; the Deployment's runAsUser/runAsNonRoot needs only the number.
  printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:%s:%s:nonroot:/nonexistent:/sbin/nologin\n' \
    "$USER_ID" "$USER_ID" >"$root/etc/passwd"
  printf 'root:x:0:\nnonroot:x:%s:\n' "$USER_ID" >"$root/etc/group"
  # Without this file glibc asks DNS before /etc/hosts.
  printf 'passwd: files\ngroup: files\nhosts: files dns\n' >"$root/etc/nsswitch.conf"
  # The chart mounts an emptyDir here; the root filesystem itself stays read-only.
  install -d -m 1777 "$root/tmp"
}

ensure_buildah() {
  command -v buildah >/dev/null && return 0
  log "installing the Debian buildah package"
  local sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
  mkdir -p "$CACHE_DIR"
  { $sudo apt-get update -q &&
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends buildah; } \
    >"$CACHE_DIR/apt-buildah.log" 2>&1 || {
    tail -n 40 "$CACHE_DIR/apt-buildah.log" >&2
    die "apt-get install buildah failed"
  }
}

# Bytes of the regular files under DIR.
file_bytes() { find "$1" -type f -printf '%s\n' | awk '{s += $1} END {print s + 0}'; }

report() {
  local root="$1"
  printf '[image] %s: %s, %s bytes (layer gzipped); root filesystem %s bytes, of which the binary %s\n' \
    "$2" "${ARCHIVE#"$REPO_DIR"/}" "$(stat -c %s "$ARCHIVE")" "$(file_bytes "$root")" \
    "$(stat -c %s "$root$BIN_PATH")" >&2
}

build() {
  local version ref root="$OUT_DIR/rootfs" stamp="$OUT_DIR/stamp" digest epoch store
  version="$(sed -n 's/^version = "\(.*\)"$/\1/p' "$REPO_DIR/Cargo.toml" | head -n 1)"
  ref="switchyard:$version"
  export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$CACHE_DIR/target}"
  (cd "$REPO_DIR" && cargo build --release --locked --bin switchyard)
  rootfs "$CARGO_TARGET_DIR/release/switchyard" "$root"

  # What the archive is made of: the staged files (contents, modes, links) and this script.
  digest="$( { tar -C "$root" --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -cf - . |
    sha256sum; sha256sum <"${BASH_SOURCE[0]}"; echo "$ref"; } | sha256sum | cut -d' ' -f1)"
  if [ -f "$ARCHIVE" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$digest" ]; then
    report "$root" "$ref up to date"
    return 0
  fi

  ensure_buildah
  # Root, vfs storage in the cache (no overlay or fuse needed) and chroot isolation: nothing
  # here runs inside the image, so no container runtime is involved either.
  store="$CACHE_DIR/buildah"
  BUILDAH=(buildah --root "$store/storage" --runroot "$store/run" --storage-driver vfs)
  export BUILDAH_ISOLATION=chroot
  # Reproducible: the same files and commit time give the same image digest.
  epoch="${SOURCE_DATE_EPOCH:-$(git -C "$REPO_DIR" log -1 --format=%ct 2>/dev/null || echo 0)}"
  CTR="$("${BUILDAH[@]}" from --quiet scratch)"
  trap '"${BUILDAH[@]}" rm "$CTR" >/dev/null 2>&1 || true' EXIT
  "${BUILDAH[@]}" copy --quiet --chown 0:0 "$CTR" "$root/" /
  "${BUILDAH[@]}" config --user "$USER_ID:$USER_ID" --port "$PORT/tcp" \
    --entrypoint "[\"$BIN_PATH\"]" --cmd '["run"]' \
    --label org.opencontainers.image.title=switchyard \
    --label "org.opencontainers.image.version=$version" \
    --created-by 'config/manager/image.sh' "$CTR"
  mkdir -p "$OUT_DIR"
  rm -f "$ARCHIVE.tmp"
  "${BUILDAH[@]}" commit --quiet --format oci --disable-compression=false --identity-label=false \
    --timestamp "$epoch" "$CTR" "oci-archive:$ARCHIVE.tmp:$ref" >/dev/null
  mv "$ARCHIVE.tmp" "$ARCHIVE"
  echo "$digest" >"$stamp"
  report "$root" "$ref built"
}

case "${1:-build}" in
  build) build ;;
  rootfs) [ $# -eq 3 ] || die "usage: $0 rootfs BIN DIR"; rootfs "$2" "$3" ;;
  *) die "usage: $0 [build | rootfs BIN DIR]" ;;
esac
