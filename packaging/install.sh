#!/bin/sh
# node-attach installer: the target of
#   curl -fsSL https://HOST/attach.sh | bash -s -- --openapi-token T [flags]
# It downloads node-attach for this machine's architecture from the host it was served from,
# checks it against the sha256 digest served beside it and, when a public key is pinned (in
# this script by `make serve`, or NODE_ATTACH_PUBLIC_KEY), against its Ed25519 signature
# (NAME.sig, checked with `openssl pkeyutl -verify -rawin`, OpenSSL 3): a mismatch stops
# everything before anything runs. It installs it to /usr/local/bin atomically, then runs
# `node-attach join` with every flag passed through unchanged, and exits with join's exit code. Output goes to stdout
# and to /var/log/node-attach/init.log (and /var/log/acs/init.log, where ACK's attach_node.sh
# logged). It needs no TTY and may run any number of times.
#
# Environment:
#   NODE_ATTACH_BASE_URL  where to download from (default: the URL this script was published
#                         under, filled in by `make serve`)
#   NODE_ATTACH_CA_FILE   extra CA bundle for the download (e.g. a private mirror's CA)
#   NODE_ATTACH_BIN_DIR   install directory (default /usr/local/bin)
#   NODE_ATTACH_PUBLIC_KEY  the Ed25519 key (ed25519:<base64>) the binary must be signed with
#                         (default: the key pinned by `make serve`; with none, the digest alone
#                         is checked and a warning says so)
set -eu

BASE_URL=${NODE_ATTACH_BASE_URL:-@BASE_URL@}
PUBLIC_KEY=${NODE_ATTACH_PUBLIC_KEY:-@PUBLIC_KEY@}
BIN_DIR=${NODE_ATTACH_BIN_DIR:-/usr/local/bin}
LOG_DIR=/var/log/node-attach
ACK_LOG_DIR=/var/log/acs

say() { printf '%s node-attach-install: %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$*"; }
die() { say "error: $*" >&2; exit 1; }

case "$BASE_URL" in
  @*@|"") die "no download location: set NODE_ATTACH_BASE_URL (this copy of install.sh was not published with one)" ;;
  https://*) ;;
  *) die "NODE_ATTACH_BASE_URL must be an https URL (got $BASE_URL)" ;;
esac
[ "$(id -u)" = 0 ] || die "run as root (userdata and 'sudo bash' do)"

case "$(uname -m)" in
  x86_64|amd64) ARCH=amd64 ;;
  aarch64|arm64) ARCH=arm64 ;;
  *) die "unsupported architecture $(uname -m): node-attach is built for x86_64 and aarch64" ;;
esac
command -v curl >/dev/null 2>&1 || die "curl is required"
command -v sha256sum >/dev/null 2>&1 || die "sha256sum (coreutils) is required"
case "$PUBLIC_KEY" in
  @*@|"") PUBLIC_KEY="" ;;
  ed25519:*)
    KEY_B64=${PUBLIC_KEY#ed25519:}
    # 32 bytes of standard base64: 43 characters and one '='.
    case "$KEY_B64" in *[!A-Za-z0-9+/=]*) die "NODE_ATTACH_PUBLIC_KEY is not ed25519:<base64 of 32 bytes>" ;; esac
    [ "${#KEY_B64}" = 44 ] || die "NODE_ATTACH_PUBLIC_KEY is not ed25519:<base64 of 32 bytes>"
    command -v openssl >/dev/null 2>&1 || die "openssl (3.0 or later) is required to check the binary's signature"
    command -v base64 >/dev/null 2>&1 || die "base64 (coreutils) is required to check the binary's signature"
    ;;
  *) die "NODE_ATTACH_PUBLIC_KEY must be ed25519:<base64> (got $PUBLIC_KEY)" ;;
esac

mkdir -p "$LOG_DIR" "$ACK_LOG_DIR"
chmod 0700 "$LOG_DIR"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/node-attach-install.XXXXXX")
trap 'rm -rf "$WORK"' EXIT INT TERM

fetch() {
  # fetch URL FILE: bounded, retried, https only, no redirect to plain http.
  if [ -n "${NODE_ATTACH_CA_FILE:-}" ]; then
    curl -fsSL --proto '=https' --proto-redir '=https' --retry 5 --retry-connrefused --retry-delay 2 \
      --connect-timeout 10 --max-time 300 --cacert "$NODE_ATTACH_CA_FILE" -o "$2" "$1"
  else
    curl -fsSL --proto '=https' --proto-redir '=https' --retry 5 --retry-connrefused --retry-delay 2 \
      --connect-timeout 10 --max-time 300 -o "$2" "$1"
  fi
}

NAME="node-attach-linux-$ARCH"
say "downloading $BASE_URL/$NAME"
fetch "$BASE_URL/$NAME.sha256" "$WORK/digest" || die "cannot download $BASE_URL/$NAME.sha256"
WANT=$(cut -d' ' -f1 < "$WORK/digest")
case "$WANT" in
  *[!0-9a-f]*|"") die "the digest file $BASE_URL/$NAME.sha256 is malformed" ;;
esac
[ "${#WANT}" = 64 ] || die "the digest file $BASE_URL/$NAME.sha256 is malformed"

# verify FILE: its Ed25519 signature (fetched as NAME.sig) checks with the pinned key.
verify() {
  if [ -z "$PUBLIC_KEY" ]; then
    say "warning: no public key is pinned (NODE_ATTACH_PUBLIC_KEY): only the sha256 digest served beside the binary is checked"
    return 0
  fi
  fetch "$BASE_URL/$NAME.sig" "$WORK/sig" || die "cannot download $BASE_URL/$NAME.sig: the binary must be signed"
  base64 -d < "$WORK/sig" > "$WORK/sig.bin" 2>/dev/null || die "the signature $BASE_URL/$NAME.sig is malformed"
  printf -- '-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEA%s\n-----END PUBLIC KEY-----\n' "$KEY_B64" > "$WORK/key.pem"
  openssl pkeyutl -verify -pubin -inkey "$WORK/key.pem" -rawin -in "$1" -sigfile "$WORK/sig.bin" >/dev/null 2>&1 ||
    die "the signature of $NAME does not verify with $PUBLIC_KEY; refusing to run it"
  say "signature verified with $PUBLIC_KEY"
}

TARGET="$BIN_DIR/node-attach"
HAVE=""
[ -x "$TARGET" ] && HAVE=$(sha256sum "$TARGET" | cut -d' ' -f1)
if [ "$HAVE" = "$WANT" ]; then
  verify "$TARGET"
  say "node-attach is already installed at $TARGET (sha256 $WANT)"
else
  fetch "$BASE_URL/$NAME" "$WORK/node-attach" || die "cannot download $BASE_URL/$NAME"
  GOT=$(sha256sum "$WORK/node-attach" | cut -d' ' -f1)
  [ "$GOT" = "$WANT" ] || die "sha256 mismatch for $NAME: expected $WANT, got $GOT; refusing to run it"
  verify "$WORK/node-attach"
  mkdir -p "$BIN_DIR"
  install -m 0755 "$WORK/node-attach" "$BIN_DIR/.node-attach.new"
  mv -f "$BIN_DIR/.node-attach.new" "$TARGET"
  say "installed $TARGET (sha256 $WANT)"
fi

# Everything join prints goes to stdout and to the logs; join's exit code is ours.
FIFO="$WORK/log.fifo"
mkfifo "$FIFO"
tee -a "$LOG_DIR/init.log" "$ACK_LOG_DIR/init.log" < "$FIFO" &
# (stdin stays: with `curl … | bash -s`, the rest of this script is read from it.)
exec > "$FIFO" 2>&1
# Both ends are open: the work directory (and the fifo's name) can go before join takes over.
trap - EXIT INT TERM
rm -rf "$WORK"
say "running: node-attach join (flags passed through)"
exec "$TARGET" join "$@" < /dev/null
