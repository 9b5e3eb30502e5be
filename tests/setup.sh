#!/usr/bin/env bash
# `make setup`: installs what `make test` needs and is missing, and does nothing when all of it
# is there (so `make test` runs it first, every time). As root on Debian or Ubuntu it installs
# the missing apt packages (from this machine's own apt sources); not as root it names them and
# the one command to run (`sudo make setup`), and fails. The rust components and targets are
# added with rustup, which needs no root. The real Kubernetes 1.20.2 components are built (and
# cached) by tests/kubernetes/build.sh, which `make unit` runs as root.
set -euo pipefail
cd "$(dirname "$0")/.."

# What the tests use, by package: the static build (musl-tools), shell lint (shellcheck), the
# end-to-end test (systemd-container, mmdebstrap, zstd, iproute2, util-linux, procps, bc, and in
# its guests containerd, runc, containernetworking-plugins, etcd-server for the control plane),
# the real Kubernetes build (golang-go, golang-github-modern-go-reflect2-dev, dpkg-dev, and rsync,
# which Kubernetes' hack/lib/golang.sh places every built binary with), TLS
# cross-checks (openssl), man page rendering (groff-base, man-db).
APT_PACKAGES=(openssl musl-tools shellcheck systemd-container mmdebstrap zstd bc iproute2 util-linux
  procps golang-go golang-github-modern-go-reflect2-dev dpkg-dev rsync etcd-server containerd runc
  containernetworking-plugins groff-base man-db)
# kubectl, for the fidelity tests: any recent one; Debian's kubernetes-client when there is none.
KUBECTL_PACKAGE=kubernetes-client
# The commands those packages provide, for machines without dpkg.
COMMANDS=(openssl musl-gcc shellcheck systemd-nspawn mmdebstrap zstd bc ip kubectl groff man)
RUST_COMPONENTS=(clippy rustfmt)
RUST_TARGETS=(x86_64-unknown-linux-musl)

root=false
[ "$(id -u)" = 0 ] && root=true

missing=()
if command -v dpkg >/dev/null && command -v apt-get >/dev/null; then
  for pkg in "${APT_PACKAGES[@]}"; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
  done
  command -v kubectl >/dev/null || missing+=("$KUBECTL_PACKAGE")
  if [ "${#missing[@]}" -gt 0 ]; then
    if ! $root; then
      echo "make setup: missing apt packages: ${missing[*]}" >&2
      echo "make setup: run: sudo make setup" >&2
      exit 1
    fi
    echo "make setup: installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
  fi
else
  for c in "${COMMANDS[@]}"; do command -v "$c" >/dev/null || missing+=("$c"); done
  if [ "${#missing[@]}" -gt 0 ]; then
    echo "make setup: not a Debian or Ubuntu machine, and these commands are missing: ${missing[*]}" >&2
    echo "make setup: install them with this system's package manager, then run make test" >&2
    exit 1
  fi
fi

if command -v rustup >/dev/null; then
  for c in "${RUST_COMPONENTS[@]}"; do
    rustup component list --installed 2>/dev/null | grep -q "^$c" || rustup component add "$c"
  done
  for t in "${RUST_TARGETS[@]}"; do
    rustup target list --installed | grep -qx "$t" || rustup target add "$t"
  done
else
  if ! cargo clippy --version >/dev/null 2>&1 || ! cargo fmt --version >/dev/null 2>&1; then
    echo "make setup: cargo clippy and cargo fmt are missing (install rustup, or the distribution's)" >&2
    exit 1
  fi
fi
echo "make setup: everything make test needs is installed"
