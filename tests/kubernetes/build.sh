#!/usr/bin/env bash
# Builds the real Kubernetes components the tests run (kube-apiserver, kube-controller-manager,
# kubelet, kubeadm) from Debian's `kubernetes` source package, fetched through this machine's own
# apt sources, and caches them under /var/cache/node-attach/kubernetes/<source version>-<patch key>/.
#
#   tests/kubernetes/build.sh          # build if the cache lacks them; print the bin directory
#   tests/kubernetes/build.sh --print  # print the bin directory if cached, else exit 1
#
# The mirror is read from /etc/apt (deb822 .sources or one-line .list): no registry host is written
# here. Debian's source tree is Kubernetes 1.20.2 (version 1.20.5+really1.20.2-…); it is built the
# way debian/rules does (GOPATH mode, vendored), with one patch: the vendored modern-go/reflect2 1.0.1
# crashes under Go >= 1.18, so it is replaced by Debian's golang-github-modern-go-reflect2-dev.
set -euo pipefail

CACHE_ROOT=${NODE_ATTACH_K8S_CACHE:-/var/cache/node-attach/kubernetes}
COMPONENTS=(kube-apiserver kube-controller-manager kubelet kubeadm)

die() { echo "kubernetes/build.sh: $*" >&2; exit 1; }

# The first Debian mirror URI of this machine's apt sources (deb822 first, then one-line lists).
apt_mirror() {
  local f uri
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    uri=$(awk 'tolower($1)=="uris:" {print $2; exit}' "$f")
    case "$uri" in *security*) continue ;; esac
    [ -n "$uri" ] && { echo "$uri"; return 0; }
  done
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -f "$f" ] || continue
    uri=$(awk '$1=="deb" {for (i=2;i<=NF;i++) if ($i ~ /^[a-z]+:\/\//) {print $i; exit}}' "$f" | grep -v security | head -n1 || true)
    [ -n "$uri" ] && { echo "$uri"; return 0; }
  done
  return 1
}

# The Debian suite this machine follows (bookworm here), from os-release.
suite() { . /etc/os-release; echo "${VERSION_CODENAME:?os-release has no VERSION_CODENAME}"; }

# A private apt configuration with a deb-src stanza; the system's apt state is not touched.
apt_private() {
  local dir=$1
  shift
  apt-get -q -o Dir::Etc::SourceList=/dev/null -o Dir::Etc::SourceParts="$dir/sources" \
    -o Dir::State::Lists="$dir/lists" -o Dir::Cache="$dir/cache" \
    -o APT::Sandbox::User=root "$@"
}

fetch_source() {
  local work=$1 mirror
  mirror=$(apt_mirror) || die "no Debian mirror in /etc/apt sources: add one, or set NODE_ATTACH_K8S_CACHE to a filled cache"
  mkdir -p "$work/apt/sources" "$work/apt/lists/partial" "$work/apt/cache/archives/partial" "$work/src"
  cat >"$work/apt/sources/src.sources" <<EOF
Types: deb-src
URIs: $mirror
Suites: $(suite)
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
  apt_private "$work/apt" update >/dev/null
  (cd "$work/src" && apt_private "$work/apt" source --download-only kubernetes >/dev/null)
  local dsc
  dsc=$(ls "$work"/src/kubernetes_*.dsc) || die "apt-get source fetched no .dsc"
  (cd "$work/src" && dpkg-source --no-check -x "$(basename "$dsc")" tree >/dev/null)
}

# The source version the cache is keyed by, from the fetched .dsc.
source_version() {
  local work=$1
  awk '$1=="Version:" {print $2; exit}' "$work"/src/kubernetes_*.dsc
}

# Key of the build recipe: this script and the reflect2 replacement's version.
patch_key() {
  local reflect
  reflect=$(dpkg-query -W -f='${Version}' golang-github-modern-go-reflect2-dev 2>/dev/null || echo none)
  { cat "$0"; echo "$reflect"; go version; } | sha256sum | cut -c1-12
}

patch_tree() {
  local tree=$1 reflect=/usr/share/gocode/src/github.com/modern-go/reflect2
  [ -d "$reflect" ] || die "golang-github-modern-go-reflect2-dev is not installed"
  rm -rf "$tree/vendor/github.com/modern-go/reflect2"
  mkdir -p "$tree/vendor/github.com/modern-go/reflect2"
  find "$reflect" -maxdepth 1 -type f \( -name '*.go' -o -name '*.s' \) ! -name '*_test.go' \
    -exec cp {} "$tree/vendor/github.com/modern-go/reflect2/" \;
}

# v1.20.2 from Debian's 1.20.5+really1.20.2-1.1+deb12u1: the upstream version the tree holds.
upstream_version() {
  local v=$1
  v=${v#*:}
  case "$v" in *really*) v=${v#*really} ;; esac
  v=${v%%-*}
  v=${v%%+*}
  echo "v$v"
}

build_tree() {
  local tree=$1 out=$2 version=$3 major minor
  major=${version#v}; major=${major%%.*}
  minor=${version#v*.}; minor=${minor%%.*}
  mkdir -p "$tree/.go/src/k8s.io"
  ln -sfn "$tree" "$tree/.go/src/k8s.io/kubernetes"
  local what=""
  for c in "${COMPONENTS[@]}"; do what="$what cmd/$c"; done
  (
    cd "$tree/.go/src/k8s.io/kubernetes"
    export GOPATH="$tree/.go" GO111MODULE=off CGO_ENABLED=0 GOCACHE="$tree/.gocache"
    export KUBE_GIT_VERSION=$version KUBE_GIT_TREE_STATE=clean KUBE_GIT_MAJOR=$major KUBE_GIT_MINOR=$minor
    export KUBE_GIT_COMMIT=faecb196815e248d3ecfb03c680a4507229c2a56
    make WHAT="${what# }" >"$tree/build.log" 2>&1 || { tail -n 40 "$tree/build.log" >&2; die "make failed"; }
  )
  mkdir -p "$out"
  for c in "${COMPONENTS[@]}"; do
    install -m 0755 "$tree/_output/local/bin/linux/amd64/$c" "$out/$c" 2>/dev/null \
      || install -m 0755 "$tree/_output/bin/$c" "$out/$c"
  done
}

main() {
  local print_only=0
  [ "${1:-}" = --print ] && print_only=1
  local key_file="$CACHE_ROOT/current"
  local cached=""
  [ -f "$key_file" ] && cached="$CACHE_ROOT/$(cat "$key_file")/bin"
  # A cached build is reused when every component is there and the recipe key still matches.
  if [ -n "$cached" ] && [ "$(basename "$(dirname "$cached")" | sed 's/.*-//')" = "$(patch_key)" ]; then
    local ok=1
    for c in "${COMPONENTS[@]}"; do [ -x "$cached/$c" ] || ok=0; done
    if [ $ok = 1 ]; then echo "$cached"; return 0; fi
  fi
  [ $print_only = 1 ] && return 1
  [ "$(id -u)" = 0 ] || die "building needs root (apt-get source, /var/cache)"
  command -v go >/dev/null || die "go is missing: apt-get install golang-go"
  command -v dpkg-source >/dev/null || die "dpkg-source is missing: apt-get install dpkg-dev"
  # hack/lib/golang.sh places each built binary with rsync; without it the build stops at its
  # first code generator ("_output/bin/prerelease-lifecycle-gen: Permission denied").
  command -v rsync >/dev/null || die "rsync is missing: apt-get install rsync"
  WORK=""
  WORK=$(mktemp -d /var/tmp/node-attach-k8s.XXXXXX)
  local work=$WORK
  trap 'rm -rf "$WORK"' EXIT
  fetch_source "$work"
  local ver key dir
  ver=$(source_version "$work")
  [ -n "$ver" ] || die "cannot read the kubernetes source version"
  key="$(echo "$ver" | tr -c 'A-Za-z0-9.+\n' '_')-$(patch_key)"
  dir="$CACHE_ROOT/$key"
  echo "building Kubernetes from Debian source $ver (cache $dir)" >&2
  patch_tree "$work/src/tree"
  build_tree "$work/src/tree" "$dir.tmp/bin" "$(upstream_version "$ver")"
  "$dir.tmp/bin/kubeadm" version -o short >"$dir.tmp/version"
  rm -rf "$dir"
  mv "$dir.tmp" "$dir"
  echo "$key" >"$CACHE_ROOT/current.tmp"
  mv "$CACHE_ROOT/current.tmp" "$key_file"
  echo "$dir/bin"
}

main "$@"
