#!/usr/bin/env bash
# Build kube-apiserver, kube-controller-manager and kube-scheduler v1.20.2 from Debian bookworm's
# source package `kubernetes` (it vendors every Go dependency, so the build is offline) and cache
# them under ~/.cache/tagging-platform/kubernetes-v1.20.2/bin. A second call reuses the cache.
# /etc/apt is never modified: the deb-src line lives in a private sources list.
set -euo pipefail

K8S_VERSION="${K8S_VERSION:-v1.20.2}"
DEB_VERSION="${DEB_VERSION:-1.20.5+really1.20.2-1.1+deb12u1}"
CACHE="${TP_K8S_CACHE:-$HOME/.cache/tagging-platform}/kubernetes-${K8S_VERSION}"
BIN="$CACHE/bin"
BINARIES="kube-apiserver kube-controller-manager kube-scheduler"

have_all() { for b in $BINARIES; do [ -x "$BIN/$b" ] || return 1; done; }
if have_all; then echo "cached: $BIN"; exit 0; fi

need=()
command -v go >/dev/null || need+=(golang-go)
command -v etcd >/dev/null || need+=(etcd-server)
command -v make >/dev/null || need+=(make)
command -v rsync >/dev/null || need+=(rsync)
command -v openssl >/dev/null || need+=(openssl)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing build deps: ${need[*]}"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get install -y --no-install-recommends "${need[@]}" >/dev/null || {
    $SUDO apt-get update >/dev/null && $SUDO apt-get install -y --no-install-recommends "${need[@]}" >/dev/null; }
fi

start=$(date +%s)
APT="$CACHE/apt"
SRC="$CACHE/src"
mkdir -p "$APT/lists/partial" "$APT/cache/archives/partial" "$SRC"
# The mirror this machine already uses for bookworm.
MIRROR="${TP_DEBIAN_MIRROR:-}"
if [ -z "$MIRROR" ]; then
  MIRROR=$( (grep -hE '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}';
             grep -hE '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null | awk '{print $2}') \
           | grep -E '/debian/?$' | head -1 || true)
  MIRROR="${MIRROR:-http://deb.debian.org/debian}"
fi
cat > "$APT/sources.list" <<SRCS
deb-src $MIRROR bookworm main
deb-src $MIRROR bookworm-updates main
deb-src ${MIRROR%/debian*}/debian-security bookworm-security main
SRCS
APTOPTS=(-o "Dir::Etc::sourcelist=$APT/sources.list" -o Dir::Etc::sourceparts=/dev/null
         -o "Dir::State::Lists=$APT/lists" -o "Dir::Cache=$APT/cache" -o APT::Sandbox::User=root)

tree=$(ls -d "$SRC"/kubernetes-*/ 2>/dev/null | head -1 || true)
if [ -z "$tree" ] || [ ! -f "$tree/Makefile" ]; then
  apt-get "${APTOPTS[@]}" update >/dev/null
  (cd "$SRC" && apt-get "${APTOPTS[@]}" source --download-only "kubernetes=$DEB_VERSION" >/dev/null \
     || apt-get "${APTOPTS[@]}" source --download-only kubernetes >/dev/null)
  dsc=$(ls "$SRC"/kubernetes_*.dsc | head -1)
  (cd "$SRC" && dpkg-source --no-check -x "$(basename "$dsc")" >/dev/null)
  tree=$(ls -d "$SRC"/kubernetes-*/ | head -1)
fi
echo "source tree: $tree ($(( $(date +%s) - start ))s)"

cd "$tree"
export KUBE_GIT_VERSION="$K8S_VERSION" KUBE_GIT_TREE_STATE=clean KUBE_GIT_MAJOR=1 KUBE_GIT_MINOR=20
export GOCACHE="$CACHE/gocache"
make generated_files >"$CACHE/build-generated.log" 2>&1
make WHAT="cmd/kube-apiserver cmd/kube-controller-manager cmd/kube-scheduler" >"$CACHE/build.log" 2>&1
mkdir -p "$BIN"
for b in $BINARIES; do install -m 0755 "_output/bin/$b" "$BIN/$b"; done
# Keep the cache small: the binaries are what we need; the Go build cache and tree go.
rm -rf "$CACHE/gocache" "$SRC" "$APT/cache"
echo "built $BINARIES in $(( $(date +%s) - start ))s -> $BIN"
