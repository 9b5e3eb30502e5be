#!/usr/bin/env bash
# Checks node-attach's CRI client (agent/src/effects/cri.rs) against a real containerd: starts a
# PRIVATE containerd (its own root, state, sockets, runc root, CNI dirs and cgroup, all under one
# temp dir) with the CRI plugin, then runs the module's ignored test `real_runtime` against it:
# Version and ListPodSandbox over runtime.v1 and runtime.v1alpha2, and (unless --no-sandboxes)
# two host-network pod sandboxes made with RunPodSandbox (no CNI needed), then StopPodSandbox,
# RemovePodSandbox and remove_all_pods. The pause image comes from tests/e2e/images/build.sh
# (or --images DIR holding its pause.tar and images.env), imported with ctr.
#
# It never uses the host's /run/containerd or /var/lib/containerd, with one exception containerd
# 1.6 imposes: runc-v2 shims put their sockets in /run/containerd/s whatever --state says. The
# script removes the shim sockets it created there (and the directories, if it created them).
# Everything it started is stopped by PID.
#
# usage: tests/cri/check.sh [--no-sandboxes] [--images DIR] [--keep]
#   needs root, containerd and ctr (Debian: apt-get install containerd runc), cargo.
#   --keep leaves the temp dir (logs, config) for a look; containerd is stopped all the same.
set -Eeuo pipefail

usage() { echo "usage: $0 [--no-sandboxes] [--images DIR] [--keep]" >&2; exit 2; }
SANDBOXES=1
IMAGES=""
KEEP=""
while [ $# -gt 0 ]; do
  case $1 in
    --no-sandboxes) SANDBOXES=""; shift ;;
    --images) [ $# -ge 2 ] || usage; IMAGES=$(realpath "$2"); shift 2 ;;
    --keep) KEEP=1; shift ;;
    *) usage ;;
  esac
done
[ "$(id -u)" = 0 ] || { echo "check.sh needs root (containerd, runc, mounts, cgroups)" >&2; exit 1; }
for tool in containerd ctr runc containerd-shim-runc-v2 cargo findmnt; do
  command -v "$tool" >/dev/null || { echo "$tool is missing (apt-get install containerd runc)" >&2; exit 1; }
done
ROOT_DIR=$(cd "$(dirname "$0")/../.." && pwd)

TMP=$(mktemp -d /tmp/node-attach-cri.XXXXXX)
chmod 0711 "$TMP"
SOCK=$TMP/containerd.sock
CGROUP=node-attach-cri-test-$$
CONTAINERD_PID=""
SHIM_DIR=/run/containerd/s
had_run_containerd=""; [ -e /run/containerd ] && had_run_containerd=1
had_shim_dir=""; [ -e $SHIM_DIR ] && had_shim_dir=1
shims_before=""
for s in "$SHIM_DIR"/*; do [ -e "$s" ] && shims_before+="$s"$'\n'; done

log() { echo "check.sh: $*" >&2; }

ctr_() { ctr --address "$SOCK" --namespace k8s.io "$@"; }

# The PIDs of processes started with our socket as their containerd address (the shims).
our_shims() {
  local p
  for p in /proc/[0-9]*; do
    tr '\0' ' ' 2>/dev/null < "$p/cmdline" | grep -qF -- "-address $SOCK " && echo "${p#/proc/}"
  done
  return 0
}

stop_pid() {
  local pid=$1
  kill -TERM "$pid" 2>/dev/null || return 0
  for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.2; done
  log "PID $pid did not stop on SIGTERM: SIGKILL"
  kill -KILL "$pid" 2>/dev/null || true
}

cleanup() {
  local rc=$? t pid m s
  set +e
  if [ -n "$CONTAINERD_PID" ] && kill -0 "$CONTAINERD_PID" 2>/dev/null; then
    # Whatever a failed test left: its sandboxes' tasks and containers.
    for t in $(ctr_ tasks list -q 2>/dev/null); do
      log "left over task $t: killing it"
      ctr_ tasks kill -s SIGKILL "$t" >/dev/null 2>&1
      sleep 0.5
      ctr_ tasks delete -f "$t" >/dev/null 2>&1
    done
    for t in $(ctr_ containers list -q 2>/dev/null); do ctr_ containers delete "$t" >/dev/null 2>&1; done
    stop_pid "$CONTAINERD_PID"
    wait "$CONTAINERD_PID" 2>/dev/null
  fi
  for pid in $(our_shims); do log "left over shim PID $pid: stopping it"; stop_pid "$pid"; done
  # Mounts under the temp dir (sandbox shm, rootfs binds), deepest first.
  findmnt -rn -o TARGET | grep -F "$TMP/" | sort -r | while read -r m; do umount -l "$m"; done
  # Shim sockets this run created in the host's /run/containerd/s, and the directories if new.
  for s in "$SHIM_DIR"/*; do
    [ -e "$s" ] || continue
    grep -qxF -- "$s" <<<"$shims_before" || { log "removing shim socket $s"; rm -f "$s"; }
  done
  [ -n "$had_shim_dir" ] || rmdir $SHIM_DIR 2>/dev/null
  [ -n "$had_run_containerd" ] || rmdir /run/containerd 2>/dev/null
  # The test's cgroup in every hierarchy (runc removed the sandboxes' own cgroups below it).
  for m in /sys/fs/cgroup/*/"$CGROUP" /sys/fs/cgroup/"$CGROUP"; do
    [ -d "$m" ] && rmdir "$m"
  done
  if [ -n "$KEEP" ]; then
    log "kept $TMP"
  else
    rm -rf --one-file-system "$TMP"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The pause image, tagged as the CRI plugin's sandbox_image.
if [ -n "$SANDBOXES" ]; then
  if [ -z "$IMAGES" ]; then
    IMAGES=$TMP/images
    "$ROOT_DIR/tests/e2e/images/build.sh" "$IMAGES" >/dev/null
  fi
  # shellcheck disable=SC1091
  . "$IMAGES/images.env"
  # shellcheck disable=SC2153 # PAUSE_REFS comes from images.env
  PAUSE_REF=${PAUSE_REFS%% *}
else
  PAUSE_REF=registry.k8s.io/pause:3.10
fi

mkdir -p "$TMP/root" "$TMP/state" "$TMP/runc" "$TMP/opt" "$TMP/cni/bin" "$TMP/cni/conf"
cat > "$TMP/config.toml" <<EOF
version = 2
root = "$TMP/root"
state = "$TMP/state"
# Snapshotters that are of no use here.
disabled_plugins = [
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
]

[grpc]
  address = "$SOCK"

[ttrpc]
  address = "$SOCK.ttrpc"

# The v1 runtime serves no task here, but the tasks service needs it: not the host's runc root.
[plugins."io.containerd.runtime.v1.linux"]
  runtime_root = "$TMP/runc-v1"

[plugins."io.containerd.internal.v1.opt"]
  path = "$TMP/opt"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_REF"
  disable_apparmor = true
  # The sandbox's oom_score_adj -998 needs CAP_SYS_RESOURCE, which some VMs' root lacks
  # (runc: "failed to update /proc/self/oom_score_adj: Permission denied").
  restrict_oom_score_adj = true
  enable_selinux = false
  disable_hugetlb_controller = true
  tolerate_missing_hugetlb_controller = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"

  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "native"
    default_runtime_name = "runc"

    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"

      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        Root = "$TMP/runc"
        SystemdCgroup = false

  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "$TMP/cni/bin"
    conf_dir = "$TMP/cni/conf"
EOF

# Build the test binary before containerd runs: the build is the slow part.
log "building the test binary"
(cd "$ROOT_DIR" && cargo test -q -p node-attach --lib --no-run)

log "starting containerd ($(containerd --version)) on $SOCK"
containerd --config "$TMP/config.toml" > "$TMP/containerd.log" 2>&1 &
CONTAINERD_PID=$!
for _ in $(seq 100); do
  ctr --address "$SOCK" version >/dev/null 2>&1 && break
  kill -0 "$CONTAINERD_PID" 2>/dev/null || { tail -20 "$TMP/containerd.log" >&2; exit 1; }
  sleep 0.1
done
ctr --address "$SOCK" version >/dev/null || { log "containerd did not answer"; tail -20 "$TMP/containerd.log" >&2; exit 1; }
if ! ctr --address "$SOCK" plugins ls | grep -q 'io.containerd.grpc.v1.*cri.*ok'; then
  log "the CRI plugin did not start"
  ctr --address "$SOCK" plugins ls | grep cri >&2
  tail -20 "$TMP/containerd.log" >&2
  exit 1
fi

if [ -n "$SANDBOXES" ]; then
  ctr_ images import --snapshotter native "$IMAGES/pause.tar" >/dev/null
  log "imported $PAUSE_REF"
fi

export NODE_ATTACH_CRI_SOCKET=$SOCK
export NODE_ATTACH_CRI_CGROUP_PARENT=/$CGROUP
if [ -n "$SANDBOXES" ]; then export NODE_ATTACH_CRI_SANDBOXES=1; fi
rc=0
(cd "$ROOT_DIR" && cargo test -q -p node-attach --lib effects::cri::tests::real_runtime -- \
  --ignored --exact --nocapture) || rc=$?
if [ "$rc" != 0 ]; then
  log "the test failed; containerd's log ends:"
  tail -30 "$TMP/containerd.log" >&2
  exit "$rc"
fi
# What the runtime did, from its own log (the CNI-less host-network sandboxes).
grep -E 'RunPodSandbox|StopPodSandbox|RemovePodSandbox' "$TMP/containerd.log" | sed 's/^/containerd: /' | tail -12 >&2 || true
log "passed"
