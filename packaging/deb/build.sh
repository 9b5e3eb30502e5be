#!/bin/sh
# Builds dist/node-attach_<version>_<arch>.deb from a static binary: /usr/bin/node-attach, the
# units in /lib/systemd/system (ExecStart pointed at /usr/bin), and a default, commented
# /etc/node-attach/config.yaml (a conffile, 0600). Uses only dpkg-deb.
set -eu
BIN=${1:?usage: build.sh BINARY OUTDIR}
OUT=${2:?usage: build.sh BINARY OUTDIR}
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' "$REPO/Cargo.toml" | head -n 1)
ARCH=$(dpkg --print-architecture 2>/dev/null || echo amd64)
STAGE=$(mktemp -d)
chmod 0755 "$STAGE"
trap 'rm -rf "$STAGE"' EXIT

install -D -m 0755 "$BIN" "$STAGE/usr/bin/node-attach"
for unit in node-attach.service node-attach-reset.service node-attach-reset-on-shutdown.service; do
  sed 's#/usr/local/bin/node-attach#/usr/bin/node-attach#g' "$REPO/systemd/$unit" > "$STAGE/$unit"
  install -D -m 0644 "$STAGE/$unit" "$STAGE/lib/systemd/system/$unit"
  rm -f "$STAGE/$unit"
done
install -D -m 0600 "$HERE/config.yaml" "$STAGE/etc/node-attach/config.yaml"
install -D -m 0644 "$REPO/README.md" "$STAGE/usr/share/doc/node-attach/README.md"
for d in "$REPO"/docs/*.md; do install -D -m 0644 "$d" "$STAGE/usr/share/doc/node-attach/$(basename "$d")"; done

mkdir -p "$STAGE/DEBIAN"
cat > "$STAGE/DEBIAN/control" <<CONTROL
Package: node-attach
Version: $VERSION
Architecture: $ARCH
Maintainer: node-attach developers <node-attach@users.noreply.github.com>
Section: admin
Priority: optional
Recommends: ca-certificates, iproute2, iptables, mount, util-linux
Description: turn a Linux machine into a Kubernetes worker node, and back
 node-attach joins a machine to a Kubernetes cluster the way kubeadm join does
 (bootstrap token, cluster-info JWS, CA pin, TLS bootstrap), configures the
 container runtime and the kubelet, and undoes exactly that on reset.
CONTROL
echo /etc/node-attach/config.yaml > "$STAGE/DEBIAN/conffiles"
cat > "$STAGE/DEBIAN/postinst" <<'POSTINST'
#!/bin/sh
set -e
if [ "$1" = configure ] && [ -d /run/systemd/system ]; then
  systemctl daemon-reload >/dev/null 2>&1 || true
fi
POSTINST
chmod 0755 "$STAGE/DEBIAN/postinst"
mkdir -p "$OUT"
DEB="$OUT/node-attach_${VERSION}_${ARCH}.deb"
dpkg-deb --root-owner-group --build "$STAGE" "$DEB" >/dev/null
echo "built $DEB"
dpkg-deb --contents "$DEB"
