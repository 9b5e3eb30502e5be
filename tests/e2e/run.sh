#!/usr/bin/env bash
# node-attach end-to-end test, against REAL Kubernetes 1.20.2: one real control plane per run
# (tests/kubernetes/cluster.sh: etcd, kube-apiserver, kube-controller-manager set up by kubeadm's
# init phases, in a netns of their own), and for each userdata form a Debian bookworm guest
# booted with systemd-nspawn (systemd as PID 1) in a netns linked only to the cluster's. The
# guest runs the REAL kubelet 1.20.2, Debian's containerd 1.6.20 (or docker.io 20.10.24 through
# the kubelet's dockershim) and Debian's CNI plugins; cloud-init's NoCloud datasource delivers
# the form, which runs the real one-line install (`curl … | bash -s -- …`) against the product's
# own `node-attach serve` (values by openapi token, and the installer files at /files/…, over
# HTTPS) in the cluster netns. Each form must end with its Node Ready in the real API server and
# one pod Running on it; then `systemctl start node-attach-reset` in the guest must stop the
# kubelet, remove the pod's sandbox (through the CRI: its netns and veth go too) and put every
# path join touched back to the image's state, and the Node must be gone: the values service
# deletes it on reset's report, authenticated with the kubelet's client certificate. A real API
# server refuses a node deleting its own Node (the Node authorizer grants no delete): for the
# scale-out form, which has no values service, when reset's only failed step is that 403, the
# harness deletes the Node as the control plane would and prints a KNOWN line (listed again at
# the end; not a failure). No kubelet stand-in is used: every form
# runs on the real kubelet.
#
#   tests/e2e/run.sh            the forms (E2E_FORMS, default: manual-add scale-out autoscaler
#                               manual-add.yaml):
#       manual-add       packaging/userdata/manual-add.sh: openapi token, values from the service
#                        (label workload_type=cpu, taint e2e=true:NoSchedule), containerd
#       scale-out        scale-out.sh: --docker-version 20.10.24 --token --endpoint --cluster-dns and
#                        the CA pin spelled out, docker.io and the real kubelet's dockershim
#       autoscaler       autoscaler.sh: a pool's openapi token, --ess true --labels
#                        k8s.io/cluster-autoscaler=true,workload_type=cpu, --provider-id; the
#                        restricted label is reported, not self-set, and applied by the service
#       manual-add.yaml  manual-add.yaml as MIME multi-part (prelude part + cloud-config), the
#                        token in a 0600 config file
#       plain            manual-add.sh on a PLAIN guest (the image without kubelet, CNI plugins
#                        or containerd): the one-liner, with the mirror's key pinned
#                        (--artifacts-key; its URL comes with the values), installs the real
#                        kubelet 1.20.2 and Debian's CNI plugins from the run's signed mirror
#                        (node-attach artifacts publish, served by node-attach serve --files),
#                        containerd at --runtime-version from the package manager (a flat apt
#                        repository of Debian's containerd and runc on the same service), and
#                        imports the pause and pod images from the mirror (--air-gap). Before
#                        it, the same one-liner against four broken mirrors — a tampered
#                        kubelet, a signed manifest naming another digest, a signature by
#                        another key, only a kubelet newer than the API server — must exit 46,
#                        46, 45 and 47 and install nothing. After reset the guest's installed-
#                        package list is the image's again.
#   tests/e2e/run.sh --peers    node-attach join (openapi token) and the real `kubeadm join`
#                               1.20.2, side by side on the same image and control plane: wall
#                               time from the join command to Node Ready, split at the kubelet's
#                               start (join → kubelet start → registered → Ready), the join
#                               process's CPU time and its API requests (audit log), medians of
#                               E2E_PEER_RUNS (default 5) runs each, and each run's timeline
#                               (audit log, the kubelet's journal, node-attach's phase events, the
#                               Ready condition's messages); JSON in E2E_PEERS_JSON (default
#                               target/bench/peers.json) and a table on stdout; with
#                               E2E_PEERS_BASELINE=BINARY a third peer, that node-attach binary,
#                               in every run beside the others (a before → after under the same
#                               load)
#
# What the guest gets before the join, standing in for an image builder and a CNI daemonset (the
# "prelude", a shell part run by cloud-init before the form): the test CA in the system store; the
# real kubelet from the file server into /usr/bin/kubelet; a bridge + host-local CNI conflist
# with a pod subnet of its own inside the cluster's 10.244.0.0/16; the pause and pod images
# (tests/e2e/images/build.sh, offline) imported into containerd (docker: `docker load` once join
# has started docker). No registry is reachable, so the pod uses imagePullPolicy Never. The
# plain form's prelude does none of this but the CA, an apt source and the CNI conflist: join
# installs the rest. attach.sh checks the binary's Ed25519 signature for every form (the run's
# key is pinned in it, as make serve does).
#
# Workarounds for the real kubelet in nspawn on these machines, all in the image or the nspawn
# command line, none in node-attach (see /work/shared/notes/real-kubernetes.md):
# - the cgroup v1 controllers are remounted read-write (e2e-cgroup-rw.service, before the
#   runtimes): nspawn mounts them read-only;
# - vm/overcommit_memory, kernel/panic and kernel/panic_on_oops, which the kubelet writes and
#   which are host-global, get small writable files bound over them inside the guest
#   (e2e-kubelet-sysctls.service); the host's stay read-only;
# - /dev/kmsg is bound read-only (the kubelet's OOM watcher reads it);
# - the private netns makes net.ipv4.ip_forward and the bridge sysctls writable; no swap here;
# - root here lacks CAP_SYS_RESOURCE, so no oom_score_adj can be lowered and runc cannot start a
#   pod sandbox (the CRI and dockershim give it -998): the image's containerd config sets
#   containerd's own restrict_oom_score_adj = true, and the image's docker daemon.json makes a
#   runc wrapper that raises negative scores to 0 (/usr/local/sbin/runc-e2e) docker's default
#   runtime; node-attach merges its settings into both files and reset gives them back;
# - the image's resolv.conf names 127.0.0.1: the host's nameserver is unreachable from the guest,
#   so lookups fail at once instead of hanging (kubeadm's Hostname check would wait 10 s).
#
# Needs root (it skips, loudly, otherwise) and the real Kubernetes binaries
# (tests/kubernetes/build.sh; cached). Every stage is bounded in time and prints its duration;
# every wait polls a condition with a deadline. Cleanup stops exactly what this run started
# (processes by PID, containers by name, netns by name via cluster.sh unlink/down, cgroups).
# Knobs: E2E_CACHE (image cache, default /var/cache/node-attach-e2e), E2E_FORMS, E2E_PEER_RUNS,
# E2E_PEERS_JSON, E2E_PEERS_BASELINE (see --peers), E2E_KUBELET_ARGS (--peers only, for
# diagnosis: extra kubelet flags such as --v=4, through /etc/default/kubelet),
# E2E_PEERS_IMDS=reject (--peers only: 169.254.169.254 refused at once in the guests instead of
# dropped), E2E_MIRROR (default: this machine's apt sources), E2E_KEEP=1 (keep the run
# directory).
set -Eeuo pipefail
# The whole script is one compound command, read before it runs: editing the file mid-run
# cannot change what a running test does.
{
REPO=$(cd "$(dirname "$0")/../.." && pwd)
MODE=forms
case "${1:-}" in
  "") ;;
  --peers) MODE=peers ;;
  *) echo "usage: $0 [--peers]" >&2; exit 2 ;;
esac
if [ "$(id -u)" != 0 ]; then
  echo "######## SKIPPED: the end-to-end test needs root (systemd-nspawn, network namespaces); CI runs as root ########"
  exit 0
fi
# shellcheck source=tests/e2e/apt-mirror.sh
. "$REPO/tests/e2e/apt-mirror.sh"

CACHE=${E2E_CACHE:-/var/cache/node-attach-e2e}
# Each userdata form; a .yaml form is the cloud-config variant, delivered as MIME multi-part
# (the e2e prelude as a shell part, then the cloud-config).
FORMS=${E2E_FORMS:-manual-add scale-out autoscaler manual-add.yaml plain}
PEER_RUNS=${E2E_PEER_RUNS:-5}
PEERS_JSON=${E2E_PEERS_JSON:-$REPO/target/bench/peers.json}
PEERS_BASELINE=${E2E_PEERS_BASELINE:-}
BIN=$REPO/target/x86_64-unknown-linux-musl/release/node-attach
POD_IMAGE=e2e.node-attach.test/busybox:1
# kubeadm 1.20's sandbox image (imageRepository k8s.gcr.io), which node-attach configures; and
# containerd 1.6's built-in default, which the kubeadm peer's untouched containerd uses.
PAUSE_IMAGE=k8s.gcr.io/pause:3.2
PAUSE_CONTAINERD_DEFAULT=k8s.gcr.io/pause:3.6
SERVE_PORT=8443
RECIPE=4
T0=$(date +%s%N)
PASS=0
FAIL=0

elapsed() { echo "$(( ($(date +%s%N) - T0) / 1000000 ))"; }
log() { printf '[e2e %7.1fs] %s\n' "$(echo "$(elapsed) / 1000" | bc -l)" "$*"; }
STAGE_T=0
TIMINGS=()
stage() { STAGE_T=$(date +%s%N); STAGE_NAME=$*; log "== $*"; }
stage_done() {
  local ms=$(( ($(date +%s%N) - STAGE_T) / 1000000 ))
  TIMINGS+=("$(printf '%8d ms  %s' "$ms" "$STAGE_NAME")")
  log "   done in $ms ms ${1:-}"
}
check() {
  local desc=$1; shift
  if "$@" >/dev/null 2>&1; then PASS=$((PASS + 1)); log "ok     $desc"; else FAIL=$((FAIL + 1)); log "FAILED $desc"; fi
}
# A check of a condition that settles (a unit restarting, a Node turning Ready): polled until it
# holds or DEADLINE s pass; never a fixed sleep.
check_within() {
  local deadline=$1 desc=$2 start; shift 2
  start=$(date +%s%N)
  until "$@" >/dev/null 2>&1; do
    if [ $(( ($(date +%s%N) - start) / 1000000000 )) -ge "$deadline" ]; then FAIL=$((FAIL + 1)); log "FAILED $desc (within ${deadline}s)"; return 0; fi
    sleep 0.2
  done
  PASS=$((PASS + 1)); log "ok     $desc ($(( ($(date +%s%N) - start) / 1000000 )) ms)"
}
# wait_for DEADLINE WHAT COMMAND...: like check_within, for a precondition (dies on the deadline).
wait_for() {
  local deadline=$1 what=$2 start; shift 2
  start=$(date +%s%N)
  until "$@" >/dev/null 2>&1; do
    [ $(( ($(date +%s%N) - start) / 1000000000 )) -lt "$deadline" ] || die "timed out after ${deadline}s waiting for $what"
    sleep 0.2
  done
}
die() { log "error: $*"; exit 1; }
# Known gaps of node-attach the run shows (printed again at the end; they do not fail it).
KNOWN=()
known() { KNOWN+=("$*"); log "KNOWN  $*"; }

[ -x "$BIN" ] || die "$BIN is missing: run make static (make e2e does)"
[ -z "$PEERS_BASELINE" ] || [ -x "$PEERS_BASELINE" ] || die "E2E_PEERS_BASELINE=$PEERS_BASELINE is not an executable file"
K8S_BIN=$(bash "$REPO/tests/kubernetes/build.sh" --print 2>/dev/null) ||
  die "the real Kubernetes 1.20.2 binaries are not built: run  bash tests/kubernetes/build.sh  (as root; ~20 min cold, then cached)"
for b in kubelet kubeadm; do [ -x "$K8S_BIN/$b" ] || die "$K8S_BIN/$b is missing"; done

# ------------------------------------------------------------------ host tools
stage "host tools"
need=()
command -v systemd-nspawn >/dev/null || need+=(systemd-container)
command -v mmdebstrap >/dev/null || need+=(mmdebstrap)
command -v zstd >/dev/null || need+=(zstd)
command -v bc >/dev/null || need+=(bc)
command -v musl-gcc >/dev/null || need+=(musl-tools)
command -v etcd >/dev/null || need+=(etcd-server)
command -v dpkg-scanpackages >/dev/null || need+=(dpkg-dev)
[ -x /usr/lib/cni/loopback ] || need+=(containernetworking-plugins)
for t in kubectl openssl python3 curl; do command -v "$t" >/dev/null || die "$t is needed"; done
if [ "${#need[@]}" -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
stage_done

# ------------------------------------------------------------------ image cache
mkdir -p "$CACHE"
MIRROR=${E2E_MIRROR:-$(apt_mirror bookworm || true)}
[ -n "$MIRROR" ] || die "no Debian bookworm mirror in this machine's apt sources (/etc/apt/sources.list.d/*.sources URIs:, or deb lines): add one, or set E2E_MIRROR"
PKGS=(systemd systemd-sysv dbus cloud-init iproute2 iptables ca-certificates curl containerd runc docker.io
  containernetworking-plugins conntrack time util-linux procps)
KEY=$(printf '%s\n' "$RECIPE" bookworm "$MIRROR" "${PKGS[@]}" | sha256sum | cut -c1-12)
TARBALL=$CACHE/rootfs-$KEY.tar.zst

customize() {
  local t=$1
  mkdir -p "$t/etc/cloud/cloud.cfg.d" "$t/etc/systemd/system/sysinit.target.wants" "$t/usr/local/sbin"
  cat > "$t/etc/cloud/cloud.cfg.d/99-e2e.cfg" <<'CFG'
datasource_list: [ NoCloud, None ]
network: {config: disabled}
locale: false
ssh_genkeytypes: []
CFG
  # nspawn mounts the cgroup v1 controllers read-only; the runtime and the kubelet need them writable.
  cat > "$t/etc/systemd/system/e2e-cgroup-rw.service" <<'UNIT'
[Unit]
Description=e2e: remount cgroup v1 controllers read-write for the container runtime
DefaultDependencies=no
Before=containerd.service docker.service sysinit.target
ConditionVirtualization=systemd-nspawn
[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/sh -c 'for d in /sys/fs/cgroup/*/; do [ "$(stat -fc %%T "$d")" = cgroupfs ] && mount -o remount,bind,rw "$d"; done; true'
[Install]
WantedBy=sysinit.target
UNIT
  # The kubelet's ContainerManager writes three host-global sysctls nspawn keeps read-only (and
  # which must stay so: they are not namespaced). Small writable files, bound over them in the
  # guest's mount namespace only, take the writes.
  cat > "$t/usr/local/sbin/e2e-kubelet-sysctls" <<'SH'
#!/bin/sh
set -eu
mkdir -p /run/e2e-sysctls
for k in vm/overcommit_memory kernel/panic kernel/panic_on_oops; do
  f=/run/e2e-sysctls/$(echo "$k" | tr / .)
  cat "/proc/sys/$k" > "$f"
  mount --bind "$f" "/proc/sys/$k"
done
SH
  chmod 0755 "$t/usr/local/sbin/e2e-kubelet-sysctls"
  cat > "$t/etc/systemd/system/e2e-kubelet-sysctls.service" <<'UNIT'
[Unit]
Description=e2e: writable stand-ins for the host-global sysctls the kubelet writes
DefaultDependencies=no
After=systemd-sysctl.service
Before=kubelet.service sysinit.target
ConditionVirtualization=systemd-nspawn
[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/local/sbin/e2e-kubelet-sysctls
[Install]
WantedBy=sysinit.target
UNIT
  ln -sf /etc/systemd/system/e2e-cgroup-rw.service "$t/etc/systemd/system/sysinit.target.wants/e2e-cgroup-rw.service"
  ln -sf /etc/systemd/system/e2e-kubelet-sysctls.service "$t/etc/systemd/system/sysinit.target.wants/e2e-kubelet-sysctls.service"
  # docker starts only when a join asks for it.
  rm -f "$t/etc/systemd/system/multi-user.target.wants/docker.service" "$t/etc/systemd/system/sockets.target.wants/docker.socket"
  # Root on these machines lacks CAP_SYS_RESOURCE, so no process may lower an oom_score_adj, and
  # runc fails to start a pod sandbox, which the CRI gives -998 ("nsexec: failed to update
  # /proc/self/oom_score_adj: Permission denied"). containerd's own knob for such hosts (made
  # for rootless and user-namespaced nodes) clamps it to containerd's own score; it is part of
  # the image, so node-attach's merge must keep it and reset must give it back.
  grep -q '^  \[plugins."io.containerd.grpc.v1.cri"\]$' "$t/etc/containerd/config.toml" ||
    die "Debian's containerd config has no [plugins.\"io.containerd.grpc.v1.cri\"] table"
  sed -i 's/^  \[plugins."io.containerd.grpc.v1.cri"\]$/&\n    restrict_oom_score_adj = true/' "$t/etc/containerd/config.toml"
  # docker has no such knob: its default runtime is a runc that raises a negative
  # process.oomScoreAdj to 0 first (dockershim also asks -998 for the sandbox). Also part of the
  # image: node-attach merges its settings into this daemon.json.
  cat > "$t/usr/local/sbin/runc-e2e" <<'SH'
#!/bin/sh
# e2e: runc, with a negative process.oomScoreAdj raised to 0 in the bundle's config.json (root
# here lacks CAP_SYS_RESOURCE, so lowering a score fails and runc cannot start the container).
bundle=.
prev=""
for a in "$@"; do
  case "$prev" in --bundle|-b) bundle=$a ;; esac
  case "$a" in --bundle=*) bundle=${a#--bundle=} ;; esac
  prev=$a
done
if [ -f "$bundle/config.json" ]; then
  python3 - "$bundle/config.json" <<'PY'
import json, sys
p = sys.argv[1]
with open(p) as f:
    c = json.load(f)
proc = c.get("process") or {}
if proc.get("oomScoreAdj", 0) < 0:
    proc["oomScoreAdj"] = 0
    with open(p, "w") as f:
        json.dump(c, f)
PY
fi
exec /usr/sbin/runc "$@"
SH
  chmod 0755 "$t/usr/local/sbin/runc-e2e"
  # The guest reaches only the cluster netns, so the host's nameserver is unreachable and every
  # lookup would hang for its full timeout (kubeadm's Hostname preflight check: 10 s). A local
  # nameserver that is not there fails at once, as a VM's resolver answering NXDOMAIN would.
  rm -f "$t/etc/resolv.conf"
  printf 'nameserver 127.0.0.1\n' > "$t/etc/resolv.conf"
  mkdir -p "$t/etc/docker"
  printf '{\n  "runtimes": {"runc-e2e": {"path": "/usr/local/sbin/runc-e2e"}},\n  "default-runtime": "runc-e2e"\n}\n' > "$t/etc/docker/daemon.json"
}

# The unpacked tree is keyed by the tarball and by what customize does to it.
TREE=$CACHE/tree-$KEY-$(declare -f customize | sha256sum | cut -c1-8)
GUEST_TREE=$TREE
stage "image (cache $CACHE)"
exec 9>"$CACHE/.lock"
flock -w 900 9 || die "cannot lock $CACHE/.lock"
if [ ! -s "$TARBALL" ]; then
  log "building $(basename "$TARBALL") from $MIRROR"
  timeout 900 mmdebstrap --variant=minbase --include="$(IFS=,; echo "${PKGS[*]}")" bookworm "$CACHE/.build.tar.zst" "$MIRROR" \
    > "$CACHE/build.log" 2>&1 9>&- || { tail -n 30 "$CACHE/build.log"; rm -f "$CACHE/.build.tar.zst"; die "mmdebstrap failed"; }
  mv -f "$CACHE/.build.tar.zst" "$TARBALL"
  rm -rf --one-file-system "$TREE"
fi
if [ ! -f "$TREE/.complete" ]; then
  rm -rf --one-file-system "$TREE" "$TREE.tmp"
  mkdir "$TREE.tmp"
  zstd -q -dc "$TARBALL" | timeout 300 tar -C "$TREE.tmp" --numeric-owner -xf -
  customize "$TREE.tmp"
  touch "$TREE.tmp/.complete"
  mv "$TREE.tmp" "$TREE"
fi
# The pause and pod images, built offline (deterministic; keyed by their recipe).
IMG_KEY=$(cat "$REPO/tests/e2e/images/build.sh" "$REPO/tests/e2e/images/pause.c" <(echo "$PAUSE_IMAGE $PAUSE_CONTAINERD_DEFAULT $POD_IMAGE") | sha256sum | cut -c1-12)
IMAGES=$CACHE/images-$IMG_KEY
if [ ! -s "$IMAGES/images.env" ]; then
  rm -rf "$IMAGES.tmp"
  timeout 300 bash "$REPO/tests/e2e/images/build.sh" "$IMAGES.tmp" --pause-ref "$PAUSE_IMAGE" \
    --pause-ref "$PAUSE_CONTAINERD_DEFAULT" --pod-ref "$POD_IMAGE" > "$CACHE/images.log" 2>&1 9>&- ||
    { cat "$CACHE/images.log"; die "building the pause and pod images failed"; }
  rm -rf "$IMAGES"
  mv "$IMAGES.tmp" "$IMAGES"
fi
# The plain guest: the same image without a kubelet, CNI plugins or container runtime (what a
# plain cloud VM has), plus one workaround for nspawn in the image, as the others are: an apt
# hook that gives Debian's containerd config, once the package installs it, the
# restrict_oom_score_adj the image's own config has (see the header).
plain_customize() {
  local t=$1
  chroot "$t" env DEBIAN_FRONTEND=noninteractive dpkg --purge docker.io containerd runc containernetworking-plugins
  cat > "$t/usr/local/sbin/e2e-containerd-oom" <<'SH'
#!/bin/sh
# e2e: containerd's restrict_oom_score_adj in a config.toml the package just installed.
f=/etc/containerd/config.toml
[ -f "$f" ] || exit 0
grep -q restrict_oom_score_adj "$f" && exit 0
sed -i 's/^  \[plugins."io.containerd.grpc.v1.cri"\]$/&\n    restrict_oom_score_adj = true/' "$f"
SH
  chmod 0755 "$t/usr/local/sbin/e2e-containerd-oom"
  echo 'DPkg::Post-Invoke { "/usr/local/sbin/e2e-containerd-oom"; };' > "$t/etc/apt/apt.conf.d/99e2e-containerd-oom"
}
PLAIN_TREE=""
case " $FORMS " in
  *" plain "*)
    PLAIN_TREE=$TREE-plain-$(declare -f plain_customize | sha256sum | cut -c1-8)
    if [ ! -f "$PLAIN_TREE/.complete" ]; then
      rm -rf --one-file-system "$PLAIN_TREE" "$PLAIN_TREE.tmp"
      cp -a --reflink=auto "$TREE" "$PLAIN_TREE.tmp"
      plain_customize "$PLAIN_TREE.tmp" > "$CACHE/plain.log" 2>&1 || { cat "$CACHE/plain.log"; die "making the plain image failed"; }
      for gone in usr/bin/containerd usr/sbin/runc usr/lib/cni/loopback usr/bin/kubelet; do
        [ ! -e "$PLAIN_TREE.tmp/$gone" ] || die "the plain image still has /$gone"
      done
      mv "$PLAIN_TREE.tmp" "$PLAIN_TREE"
    fi ;;
esac
flock -u 9
exec 9>&-
stage_done "$(du -sh "$TARBALL" | cut -f1) image, images in $(basename "$IMAGES")${PLAIN_TREE:+, plain image}"

# ------------------------------------------------------------------ run state and cleanup
RUNROOT=$(mktemp -d "$CACHE/run.XXXXXX")
CLUSTER=$RUNROOT/cluster
SERVE_PID=""; NSPAWN_PID=""; LINK=""; RUN=""; LEADER=""; CG_DIRS=()
cleanup_guest() {
  if [ -n "$NSPAWN_PID" ] && kill -0 "$NSPAWN_PID" 2>/dev/null; then
    kill -TERM "$NSPAWN_PID" 2>/dev/null || true
    for _ in $(seq 1 300); do kill -0 "$NSPAWN_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$NSPAWN_PID" 2>/dev/null || true
    wait "$NSPAWN_PID" 2>/dev/null || true
  fi
  NSPAWN_PID=""; LEADER=""
  if [ -n "$LINK" ]; then bash "$REPO/tests/kubernetes/cluster.sh" unlink "$CLUSTER" "$LINK" 2>/dev/null || true; fi
  LINK=""
  for ((i = ${#CG_DIRS[@]} - 1; i >= 0; i--)); do
    find "${CG_DIRS[$i]}" -depth -type d -exec rmdir {} \; 2>/dev/null || true
  done
  CG_DIRS=()
  if [ -n "$RUN" ] && [ "${E2E_KEEP:-0}" != 1 ]; then rm -rf --one-file-system "$RUN"; fi
  RUN=""
}
cleanup() {
  local rc=$?
  trap - EXIT
  cleanup_guest
  if [ -n "$SERVE_PID" ]; then
    kill -TERM "$SERVE_PID" 2>/dev/null || true
    wait "$SERVE_PID" 2>/dev/null || true
  fi
  if [ -d "$CLUSTER" ]; then bash "$REPO/tests/kubernetes/cluster.sh" down "$CLUSTER" 2>/dev/null || true; fi
  if [ "${E2E_KEEP:-0}" != 1 ]; then rm -rf --one-file-system "$RUNROOT"; else log "kept $RUNROOT"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ------------------------------------------------------------------ the .deb
if [ "$MODE" = forms ]; then
  stage ".deb package"
  # In this run's own directory: two runs at once built into one shared directory and each
  # read the other's half-written package.
  bash "$REPO/packaging/deb/build.sh" "$BIN" "$RUNROOT/deb" > "$RUNROOT/deb.log" 2>&1 || { cat "$RUNROOT/deb.log"; die "building the .deb failed"; }
  DEB=$(ls "$RUNROOT"/deb/node-attach_*.deb)
  check ".deb holds the binary" sh -c "dpkg-deb --contents '$DEB' | grep -q ' ./usr/bin/node-attach$'"
  check ".deb holds the units" sh -c "dpkg-deb --contents '$DEB' | grep -q 'lib/systemd/system/node-attach-reset.service'"
  check ".deb holds the default config, 0600" sh -c "dpkg-deb --contents '$DEB' | grep -q '^-rw------- .* ./etc/node-attach/config.yaml$'"
  check ".deb units run /usr/bin/node-attach" sh -c "dpkg-deb --fsys-tarfile '$DEB' | tar -xO ./lib/systemd/system/node-attach-reset.service | grep -q 'ExecStart=/usr/bin/node-attach reset'"
  stage_done "$(basename "$DEB")"
fi

# ------------------------------------------------------------------ control plane and values service
stage "real control plane (tests/kubernetes/cluster.sh up)"
# The guests' kubelets share this machine's disk, which other work fills: with the kubelet's
# default hard thresholds (imagefs 15 %, nodefs 10 % free) a disk at 86 % full evicted the test
# pods, and image GC (from 85 % used) collected the imported images, which no registry serves
# again. The cluster's kubelet defaults (kubeadm's KubeletConfiguration, which join takes from
# kubelet-config-1.20) keep disk pressure out of the test; memory keeps the kubelet's default.
cat > "$RUNROOT/kubelet-defaults.yaml" <<'YAML'
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
evictionHard:
  memory.available: 100Mi
  nodefs.available: 1%
  nodefs.inodesFree: 1%
  imagefs.available: 1%
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
YAML
bash "$REPO/tests/kubernetes/cluster.sh" up "$CLUSTER" --owner-pid $$ --kubelet-config "$RUNROOT/kubelet-defaults.yaml" 2> "$RUNROOT/cluster-up.log" ||
  { tail -n 40 "$RUNROOT/cluster-up.log"; die "cluster.sh up failed"; }
# shellcheck disable=SC1091
. "$CLUSTER/env"
ADMIN=$ADMIN_KUBECONFIG
TOKEN_SECRET=${TOKEN#*.}
SERVE_URL=https://$NS_IP:$SERVE_PORT
export HOME=$RUNROOT/home
mkdir -p "$HOME"
k() { timeout 30 kubectl --kubeconfig "$ADMIN" --cache-dir "$RUNROOT/kube-cache" --request-timeout=20s "$@"; }
stage_done "Kubernetes $VERSION at $ENDPOINT (netns $NETNS)"

# The plain form's artifact mirror ($WWW/mirror: the real kubelet 1.20.2, this machine's
# Debian CNI plugins, the pause and pod images, signed with the run's key), one broken copy per
# refusal the plain guest must meet, and the flat apt repository ($WWW/apt/debs) standing in
# for the distribution's mirror: Debian's containerd and runc, fetched with apt-get download.
make_mirrors() {
  local m=$WWW/mirror d
  [ -x /usr/lib/cni/loopback ] || die "the CNI plugins for the mirror come from this machine's containernetworking-plugins (apt-get install containernetworking-plugins)"
  "$BIN" artifacts publish --dir "$m" --key "$RUNROOT/signing.pem" --kubernetes-version "$VERSION" \
    --kubelet "$K8S_BIN/kubelet" --cni /usr/lib/cni --image "$IMAGES/pause.tar=$PAUSE_IMAGE" \
    --image "$IMAGES/pod.tar=$POD_IMAGE" > "$RUNROOT/publish.log" 2>&1 || { cat "$RUNROOT/publish.log"; die "artifacts publish failed"; }
  # A binary changed on the mirror after it was signed.
  cp -al "$m" "$WWW/mirror-tampered"
  d=$WWW/mirror-tampered/kubernetes/$VERSION/amd64
  cp --remove-destination "$m/kubernetes/$VERSION/amd64/kubelet" "$d/kubelet"
  printf '\x7fELG' | dd of="$d/kubelet" bs=1 seek=0 count=4 conv=notrunc status=none
  # A manifest, signed by the right key, naming another digest for the kubelet.
  cp -al "$m" "$WWW/mirror-digest"
  python3 - "$WWW/mirror-digest/manifest.json" <<'PY'
import json, sys
p = sys.argv[1]
doc = json.load(open(p))
doc["releases"][0]["kubelet"]["sha256"] = "0" * 64
with open(p + ".new", "w") as f:
    json.dump(doc, f, indent=2)
PY
  mv -f "$WWW/mirror-digest/manifest.json.new" "$WWW/mirror-digest/manifest.json"
  "$BIN" artifacts sign --key "$RUNROOT/signing.pem" "$WWW/mirror-digest/manifest.json" >/dev/null
  # The right files and digests, signed by another key.
  cp -al "$m" "$WWW/mirror-badsig"
  "$BIN" artifacts keygen --out "$RUNROOT/other.pem" >/dev/null
  "$BIN" artifacts sign --key "$RUNROOT/other.pem" "$WWW/mirror-badsig/manifest.json" >/dev/null
  # Only a kubelet newer than the API server (the skew policy refuses it).
  "$BIN" artifacts publish --dir "$WWW/mirror-skew" --key "$RUNROOT/signing.pem" --kubernetes-version v1.21.0 \
    --kubelet "$K8S_BIN/kubelet" --cni /usr/lib/cni >> "$RUNROOT/publish.log" 2>&1 || die "artifacts publish (skew) failed"
  # Debian's containerd and runc, as the distribution's mirror would serve them.
  local debs=$CACHE/debs-containerd
  # One run at a time fills the cache (another run may be downloading into the same place).
  exec 8>"$CACHE/.lock-debs"
  flock -w 300 8 || die "cannot lock $CACHE/.lock-debs"
  if ! ls "$debs"/containerd_*.deb "$debs"/runc_*.deb >/dev/null 2>&1; then
    rm -rf "$debs.tmp" && mkdir -p "$debs.tmp"
    (cd "$debs.tmp" && apt-get download -qq -o APT::Sandbox::User=root containerd runc) ||
      die "apt-get download containerd runc failed (run apt-get update)"
    rm -rf "$debs" && mv "$debs.tmp" "$debs"
  fi
  exec 8>&-
  mkdir -p "$WWW/apt/debs"
  cp "$debs"/*.deb "$WWW/apt/debs/"
  (cd "$WWW/apt" && dpkg-scanpackages debs /dev/null 2>/dev/null > debs/Packages)
  python3 - "$WWW/apt/debs" <<'PY'
import email.utils, hashlib, os, sys
d = sys.argv[1]
data = open(os.path.join(d, "Packages"), "rb").read()
with open(os.path.join(d, "Release"), "w") as f:
    f.write("Origin: node-attach-e2e\nLabel: node-attach-e2e\nDate: %s\nSHA256:\n %s %d Packages\n"
            % (email.utils.formatdate(usegmt=True), hashlib.sha256(data).hexdigest(), len(data)))
PY
  CONTAINERD_DEB_VERSION=$(dpkg-deb -f "$(ls "$WWW"/apt/debs/containerd_*.deb)" Version)
}

stage "values and file service (node-attach serve --files, in the cluster netns)"
WWW=$RUNROOT/www
mkdir -p "$WWW"
# What make serve publishes: attach.sh with the URL and the signing key's public half pinned,
# the binary, its digest and its signature.
"$BIN" artifacts keygen --out "$RUNROOT/signing.pem" >/dev/null
SIGNING_PUB=$("$BIN" artifacts public-key --key "$RUNROOT/signing.pem")
sed -e "s#@BASE_URL@#$SERVE_URL/files#g" -e "s#@PUBLIC_KEY@#$SIGNING_PUB#g" "$REPO/packaging/install.sh" > "$WWW/attach.sh"
cp "$BIN" "$WWW/node-attach-linux-amd64"
(cd "$WWW" && sha256sum node-attach-linux-amd64 > node-attach-linux-amd64.sha256)
"$BIN" artifacts sign --key "$RUNROOT/signing.pem" "$WWW/node-attach-linux-amd64" >/dev/null
if [ -n "$PLAIN_TREE" ]; then make_mirrors; fi
for b in kubelet kubeadm; do ln "$K8S_BIN/$b" "$WWW/$b" 2>/dev/null || cp "$K8S_BIN/$b" "$WWW/$b"; done
if [ "$MODE" = peers ] && [ -n "$PEERS_BASELINE" ]; then
  cp "$PEERS_BASELINE" "$WWW/node-attach-baseline"
  (cd "$WWW" && sha256sum node-attach-baseline > node-attach-baseline.sha256)
fi
# The serving certificate, for the address guests reach the cluster netns at (NS_IP: every link's
# gateway routes to it), signed by a CA of this run; guests get the CA through the seed.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj "/CN=node-attach e2e CA" \
  -keyout "$RUNROOT/svc-ca.key" -out "$RUNROOT/svc-ca.crt" >/dev/null 2>&1
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$NS_IP" \
  -keyout "$RUNROOT/svc.key" -out "$RUNROOT/svc.csr" >/dev/null 2>&1
printf 'subjectAltName=IP:%s\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n' "$NS_IP" > "$RUNROOT/svc.ext"
openssl x509 -req -in "$RUNROOT/svc.csr" -CA "$RUNROOT/svc-ca.crt" -CAkey "$RUNROOT/svc-ca.key" -CAcreateserial \
  -days 1 -extfile "$RUNROOT/svc.ext" -out "$RUNROOT/svc.crt" >/dev/null 2>&1
# (--pdeathsig: should this script be killed outright, the service goes too.)
ip netns exec "$NETNS" setpriv --pdeathsig TERM "$BIN" serve --kubeconfig "$ADMIN" --tls-cert "$RUNROOT/svc.crt" --tls-key "$RUNROOT/svc.key" \
  --listen "$NS_IP:$SERVE_PORT" --public-url "$SERVE_URL" --files "$WWW" --rate-per-minute 600 -v \
  < /dev/null > "$RUNROOT/serve.out" 2> "$RUNROOT/serve.log" &
SERVE_PID=$!
wait_for 30 "node-attach serve to listen" grep -q '^listening on' "$RUNROOT/serve.out"
check "the file service answers over HTTPS with the installer" \
  sh -c "curl -fsS --cacert '$RUNROOT/svc-ca.crt' '$SERVE_URL/files/attach.sh' | grep -q '$SERVE_URL/files'"
# The openapi tokens (values without a bootstrap token: each use mints one) and their values.
cat > "$RUNROOT/values.json" <<JSON
{"apiVersion": "node-attach.io/v1", "kind": "ClusterValues", "clusterDNS": ["$CLUSTER_DNS"],
 "labels": {"workload_type": "cpu"}, "taints": ["e2e=true:NoSchedule"]}
JSON
cat > "$RUNROOT/values-pool.json" <<JSON
{"apiVersion": "node-attach.io/v1", "kind": "ClusterValues", "clusterDNS": ["$CLUSTER_DNS"], "ess": true,
 "labels": {"workload_type": "cpu", "k8s.io/cluster-autoscaler": "true"}}
JSON
openapi_token() {
  "$BIN" token openapi --kubeconfig "$ADMIN" --values "$1" --uses "$2" --ttl 2h --description "e2e $3" 2>>"$RUNROOT/token.log"
}
OPENAPI=$(openapi_token "$RUNROOT/values.json" 20 manual) || die "token openapi failed: $(cat "$RUNROOT/token.log")"
OPENAPI_POOL=$(openapi_token "$RUNROOT/values-pool.json" 5 pool) || die "token openapi failed: $(cat "$RUNROOT/token.log")"
[ -n "$OPENAPI" ] && [ -n "$OPENAPI_POOL" ] || die "token openapi printed no token"
OPENAPI_PLAIN=""
if [ -n "$PLAIN_TREE" ]; then
  # The mirror's URL comes with the values; its key is pinned in the one-liner.
  cat > "$RUNROOT/values-plain.json" <<JSON
{"apiVersion": "node-attach.io/v1", "kind": "ClusterValues", "clusterDNS": ["$CLUSTER_DNS"],
 "labels": {"workload_type": "cpu"}, "taints": ["e2e=true:NoSchedule"],
 "artifacts": {"url": "$SERVE_URL/files/mirror"}}
JSON
  OPENAPI_PLAIN=$(openapi_token "$RUNROOT/values-plain.json" 8 plain) || die "token openapi failed: $(cat "$RUNROOT/token.log")"
fi
stage_done "serve pid $SERVE_PID at $SERVE_URL"

# ------------------------------------------------------------------ one guest
# boot_guest NAME USERDATA-FILE: links netns NAME to the cluster, writes the seed (userdata, the
# service CA, the images), boots the guest and waits for its systemd; sets RUN, LINK, LEADER,
# GUEST_IP, GROOT.
boot_guest() {
  local name=$1 userdata=$2 line
  RUN=$(mktemp -d "$RUNROOT/guest.XXXXXX")
  mkdir -p "$RUN/seed" "$RUN/var-lib-containerd" "$RUN/var-lib-docker"
  line=$(bash "$REPO/tests/kubernetes/cluster.sh" link "$CLUSTER" "$name" 2>>"$RUN/link.log") ||
    { cat "$RUN/link.log"; die "cluster.sh link failed"; }
  LINK=$name
  GUEST_IP=$(echo "$line" | sed -n 's/.*GUEST_IP=\([0-9.]*\).*/\1/p')
  cp "$userdata" "$RUN/seed/user-data"
  printf 'instance-id: iid-%s\nlocal-hostname: %s\n' "$name" "$name" > "$RUN/seed/meta-data"
  cp "$RUNROOT/svc-ca.crt" "$RUN/seed/ca.crt"
  ln "$IMAGES/pause.tar" "$RUN/seed/pause.tar" 2>/dev/null || cp "$IMAGES/pause.tar" "$RUN/seed/pause.tar"
  ln "$IMAGES/pod.tar" "$RUN/seed/pod.tar" 2>/dev/null || cp "$IMAGES/pod.tar" "$RUN/seed/pod.tar"
  if [ "$(stat -fc %T /sys/fs/cgroup)" = tmpfs ]; then
    local ctrls path mnt parent d
    while IFS=: read -r _ ctrls path; do
      case "$ctrls" in
        "") mnt=/sys/fs/cgroup/unified ;;
        name=systemd) mnt=/sys/fs/cgroup/systemd ;;
        name=*) continue ;;
        *) mnt=/sys/fs/cgroup/$ctrls ;;
      esac
      [ -d "$mnt" ] || continue
      parent="$mnt${path%/}"
      d="$parent/$name"
      mkdir "$d" 2>/dev/null || continue
      CG_DIRS+=("$d")
      if [ -f "$d/cpuset.cpus" ]; then cat "$parent/cpuset.cpus" > "$d/cpuset.cpus"; cat "$parent/cpuset.mems" > "$d/cpuset.mems"; fi
    done < /proc/self/cgroup
  fi
  (
    for d in "${CG_DIRS[@]}"; do echo "$BASHPID" > "$d/cgroup.procs"; done
    exec setpriv --pdeathsig TERM systemd-nspawn --register=no --keep-unit --quiet --link-journal=no -D "$GUEST_TREE" -M "$name" \
      --boot --console=read-only --volatile=overlay --bind-ro="$RUN/seed:/var/lib/cloud/seed/nocloud" \
      --private-network --network-namespace-path="/run/netns/$name" \
      --capability=all --system-call-filter='@keyring bpf' --bind-ro=/dev/kmsg --resolv-conf=off \
      --bind="$RUN/var-lib-containerd:/var/lib/containerd" --bind="$RUN/var-lib-docker:/var/lib/docker" \
      < /dev/null > "$RUN/nspawn.log" 2>&1
  ) &
  NSPAWN_PID=$!
  LEADER=""
  for _ in $(seq 1 600); do
    kill -0 "$NSPAWN_PID" 2>/dev/null || { cat "$RUN/nspawn.log"; die "systemd-nspawn exited early"; }
    LEADER=$(pgrep -P "$NSPAWN_PID" | head -n 1 || true)
    [ -n "$LEADER" ] && [ "$(cat "/proc/$LEADER/comm" 2>/dev/null)" = systemd ] && break
    LEADER=""; sleep 0.1
  done
  [ -n "$LEADER" ] || die "the guest's systemd did not start within 60s"
  GROOT=/proc/$LEADER/root
}
guest() { timeout 60 nsenter -t "$LEADER" -a -- "$@"; }
boot_finished() { guest test -f /var/lib/cloud/instance/boot-finished; }
# wait_boot_finished SECONDS: cloud-init's last stage is done (the userdata has run).
wait_boot_finished() {
  local start; start=$(date +%s)
  until boot_finished 2>/dev/null; do
    kill -0 "$LEADER" 2>/dev/null || die "the guest stopped before cloud-init finished"
    [ $(( $(date +%s) - start )) -lt "$1" ] || { log "cloud-init did not finish within $1 s"; return 1; }
    sleep 0.25
  done
}

# The prelude: what an image builder and a CNI daemonset would have put on the machine.
# prelude POD_SUBNET RUNTIME [kubeadm]
prelude() {
  local subnet=$1 runtime=$2 peer=${3:-}
  local gw=${subnet%.0/24}.1
  cat <<SH
#!/bin/bash
# e2e prelude: trust the service CA, install the real kubelet, a CNI network and the images.
set -euo pipefail
seed=/var/lib/cloud/seed/nocloud
install -m 0644 \$seed/ca.crt /usr/local/share/ca-certificates/node-attach-e2e.crt
update-ca-certificates >/dev/null
fetch() { curl -fsS --retry 5 --retry-connrefused --max-time 120 "$SERVE_URL/files/\$1" -o "\$2.tmp" && chmod 0755 "\$2.tmp" && mv -f "\$2.tmp" "\$2"; }
fetch kubelet /usr/bin/kubelet
mkdir -p /etc/cni/net.d
cat > /etc/cni/net.d/10-e2e-bridge.conflist <<'JSON'
{"cniVersion": "0.4.0", "name": "e2e", "plugins": [
  {"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": false, "hairpinMode": true,
   "ipam": {"type": "host-local", "ranges": [[{"subnet": "$subnet", "gateway": "$gw"}]],
            "routes": [{"dst": "0.0.0.0/0"}]}}]}
JSON
SH
  if [ "$runtime" = docker ]; then
    cat <<'SH'
# The kubelet's dockershim looks for CNI plugins in /opt/cni/bin; Debian ships them in /usr/lib/cni.
mkdir -p /opt/cni/bin
for p in /usr/lib/cni/*; do ln -sf "$p" /opt/cni/bin/; done
SH
  else
    cat <<'SH'
# No registry is reachable: the sandbox and pod images come from the seed.
for _ in $(seq 1 100); do ctr version >/dev/null 2>&1 && break; sleep 0.1; done
ctr -n k8s.io images import "$seed/pause.tar" >/dev/null
ctr -n k8s.io images import "$seed/pod.tar" >/dev/null
SH
  fi
  if [ "$peer" = kubeadm ]; then
    cat <<'SH'
# kubeadm 1.20 as its packages install it (kubernetes/release's kubelet and kubeadm debs):
# /usr/bin/kubeadm, kubelet.service in /lib/systemd/system, kubeadm's drop-in, kubelet enabled.
fetch kubeadm /usr/bin/kubeadm
cat > /lib/systemd/system/kubelet.service <<'UNIT'
[Unit]
Description=kubelet: The Kubernetes Node Agent
Documentation=https://kubernetes.io/docs/home/
Wants=network-online.target
After=network-online.target

[Service]
ExecStart=/usr/bin/kubelet
Restart=always
StartLimitInterval=0
RestartSec=10

[Install]
WantedBy=multi-user.target
UNIT
mkdir -p /etc/systemd/system/kubelet.service.d
cat > /etc/systemd/system/kubelet.service.d/10-kubeadm.conf <<'UNIT'
# Note: This dropin only works with kubeadm and kubelet v1.11+
[Service]
Environment="KUBELET_KUBECONFIG_ARGS=--bootstrap-kubeconfig=/etc/kubernetes/bootstrap-kubelet.conf --kubeconfig=/etc/kubernetes/kubelet.conf"
Environment="KUBELET_CONFIG_ARGS=--config=/var/lib/kubelet/config.yaml"
# This is a file that "kubeadm init" and "kubeadm join" generates at runtime, populating the KUBELET_KUBEADM_ARGS variable dynamically
EnvironmentFile=-/var/lib/kubelet/kubeadm-flags.env
# This is a file that the user can use for overrides of the kubelet args as a last resort. Preferably, the user should use
# the .NodeRegistration.KubeletExtraArgs object in the configuration files instead. KUBELET_EXTRA_ARGS should be sourced from this file.
EnvironmentFile=-/etc/default/kubelet
ExecStart=
ExecStart=/usr/bin/kubelet $KUBELET_KUBECONFIG_ARGS $KUBELET_CONFIG_ARGS $KUBELET_KUBEADM_ARGS $KUBELET_EXTRA_ARGS
UNIT
systemctl daemon-reload
systemctl enable kubelet 2>/dev/null
# kubeadm's documented prerequisites ("Letting iptables see bridged traffic", IP forwarding).
sysctl -q -w net.bridge.bridge-nf-call-iptables=1 net.ipv4.ip_forward=1
SH
  elif [ -n "$peer" ]; then
    # node-attach (or the baseline binary under comparison), checked against its digest as
    # attach.sh does.
    local file=node-attach-linux-amd64
    [ "$peer" != node-attach-baseline ] || file="node-attach-baseline"
    cat <<SH
curl -fsS --retry 5 --retry-connrefused "$SERVE_URL/files/$file.sha256" -o /tmp/na.sha256
fetch $file /usr/local/bin/node-attach
[ "\$(cut -d' ' -f1 /tmp/na.sha256)" = "\$(sha256sum /usr/local/bin/node-attach | cut -d' ' -f1)" ]
SH
  fi
  if [ -n "$peer" ] && [ "${E2E_PEERS_IMDS:-}" = reject ]; then
    # E2E_PEERS_IMDS=reject: the link-local metadata address refused at once, as on a cloud
    # whose metadata service answers there, instead of silently dropped (the guest's default
    # route leads to the cluster netns, which does not forward): the kubelet 1.20's in-tree ECR
    # credential provider then gives up at once instead of after its SDK's timeouts.
    echo 'ip route add prohibit 169.254.169.254/32'
  fi
  if [ -n "$peer" ] && [ -n "${E2E_KUBELET_ARGS:-}" ]; then
    # Diagnosis only (E2E_KUBELET_ARGS, e.g. --v=4): extra kubelet flags through the file both
    # peers' drop-ins read.
    printf 'printf "KUBELET_EXTRA_ARGS=%%s\\n" %q > /etc/default/kubelet\n' "$E2E_KUBELET_ARGS"
  fi
  echo 'echo "e2e prelude done"'
}

# The plain guest's prelude: what an image builder and a CNI daemonset would have done on a
# plain VM — trust the service CA, point apt at the e2e's repository (standing in for the
# distribution's mirror), a bridge CNI conflist — and the installed-package list, kept for the
# check after reset. No kubelet, no CNI plugins, no runtime, no images.
prelude_plain() {
  local subnet=$1
  local gw=${subnet%.0/24}.1
  cat <<SH
#!/bin/bash
set -euo pipefail
seed=/var/lib/cloud/seed/nocloud
install -m 0644 \$seed/ca.crt /usr/local/share/ca-certificates/node-attach-e2e.crt
update-ca-certificates >/dev/null
rm -f /etc/apt/sources.list /etc/apt/sources.list.d/*
echo 'deb [trusted=yes] $SERVE_URL/files/apt debs/' > /etc/apt/sources.list.d/e2e.list
mkdir -p /etc/cni/net.d /var/lib/e2e
cat > /etc/cni/net.d/10-e2e-bridge.conflist <<'JSON'
{"cniVersion": "0.4.0", "name": "e2e", "plugins": [
  {"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": false, "hairpinMode": true,
   "ipam": {"type": "host-local", "ranges": [[{"subnet": "$subnet", "gateway": "$gw"}]],
            "routes": [{"dst": "0.0.0.0/0"}]}}]}
JSON
dpkg-query -W -f '\${Package} \${Version} \${db:Status-Abbrev}\n' | grep ' ii' > /var/lib/e2e/packages-before
echo "e2e prelude done"
SH
}

# The guest's installed packages (name, version, status ii), as the prelude recorded them.
guest_packages() { nsenter -t "$LEADER" -a -- dpkg-query -W -f '${Package} ${Version} ${db:Status-Abbrev}\n' | grep ' ii'; }
packages_as_before() { guest_packages | cmp -s - "$GROOT/var/lib/e2e/packages-before"; }
# (grep without -q: with pipefail, a grep that stops reading early fails the pipeline.)
containerd_from_apt() { guest_packages | grep "^containerd $CONTAINERD_DEB_VERSION ii" >/dev/null; }
# Nothing of a refused join is on the plain guest: no kubelet, CNI plugins, runtime, journal
# or scratch directory, and the installed-package list is the image's.
nothing_installed() {
  [ ! -e "$GROOT/usr/bin/kubelet" ] && [ ! -e "$GROOT/opt/cni" ] && [ ! -e "$GROOT/etc/containerd" ] &&
    [ ! -e "$GROOT/var/lib/node-attach" ] && ! compgen -G "$GROOT/var/tmp/.node-attach-stage-*" >/dev/null &&
    packages_as_before
}

# plain_joins FLAGS SED-ARGS...: on the booted plain guest, the manual-add one-liner once per
# refusal (each must exit with its code and install nothing), then for real.
plain_joins() {
  local flags=$1 case rc want mirror t0; shift
  stage "form plain: the prelude, then the one-liner against broken mirrors (refused, nothing installed)"
  wait_boot_finished 300 || true
  check "the plain guest has no kubelet, CNI plugins or containerd" nothing_installed
  for case in tampered:46 digest:46 badsig:45 skew:47; do
    mirror=${case%:*} want=${case#*:}
    # (The override comes first: the form's own @EXTRA_FLAGS@ substitution is among "$@".)
    sed -e '1d' -e "s#@EXTRA_FLAGS@#$flags --artifacts-url $SERVE_URL/files/mirror-$mirror#g" "$@" \
      "$REPO/packaging/userdata/manual-add.sh" > "$RUN/seed/join-$mirror.sh"
    t0=$(date +%s%N)
    rc=0; timeout 180 nsenter -t "$LEADER" -a -- bash /var/lib/cloud/seed/nocloud/join-$mirror.sh > "$RUN/join-$mirror.log" 2>&1 || rc=$?
    check "mirror-$mirror: refused with exit $want (got $rc, $(( ($(date +%s%N) - t0) / 1000000 )) ms)" [ "$rc" = "$want" ]
    check "mirror-$mirror: nothing installed" nothing_installed
    [ "$rc" = "$want" ] || tail -n 15 "$RUN/join-$mirror.log"
  done
  grep -h 'artifacts\.' "$RUN"/join-*.log | sed 's/^/    /' | head -n 8 || true
  stage_done
  stage "form plain: the one-liner installs everything from the mirror and joins"
  sed -e '1d' "$@" "$REPO/packaging/userdata/manual-add.sh" > "$RUN/seed/join.sh"
  rc=0; timeout 400 nsenter -t "$LEADER" -a -- bash /var/lib/cloud/seed/nocloud/join.sh > "$RUN/join.log" 2>&1 || rc=$?
  check "the one-liner on the plain guest succeeded (exit $rc)" [ "$rc" = 0 ]
  [ "$rc" = 0 ] || tail -n 30 "$RUN/join.log"
  stage_done "$(grep -h 'joined' "$RUN/join.log" | tail -n 1)"
}

node_ready() {
  [ "$(k get node "$1" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" = True ]
}
node_gone() { ! k get node "$1" >/dev/null 2>&1; }
node_field() { k get node "$1" -o jsonpath="$2" 2>/dev/null; }
pod_running() { [ "$(k get pod "$1" -o jsonpath='{.status.phase}' 2>/dev/null)" = Running ]; }
# The first three octets of a /24, for "is this address in it".
in_subnet() { case "$1" in "${2%.0/24}".*) return 0 ;; *) return 1 ;; esac; }

# make_pod NAME NODE [TAINT-KEY]: one pod pinned to NODE, from the local image, never pulled.
make_pod() {
  local tol=""
  [ -z "${3:-}" ] || tol="  - {key: $3, operator: Exists, effect: NoSchedule}"
  k apply -f - >/dev/null <<YAML
apiVersion: v1
kind: Pod
metadata:
  name: $1
  namespace: default
spec:
  nodeName: $2
  automountServiceAccountToken: false
  terminationGracePeriodSeconds: 1
  tolerations:
  - {key: node.kubernetes.io/not-ready, operator: Exists, effect: NoExecute}
$tol
  containers:
  - name: sleep
    image: $POD_IMAGE
    imagePullPolicy: Never
    command: [sh, -c, 'echo e2e-pod-up; exec sleep 3600']
YAML
}

# Paths join recorded, compared with the image after reset.
reset_tree_check() {
  python3 - "$RUN/journal.jsonl" "$GROOT" "$GUEST_TREE" > "$RUN/reset-check.txt" 2>&1 <<'PY' || true
import json, os, sys
journal, guest, image = sys.argv[1:4]
bad = []
seen = set()
for line in open(journal):
    try:
        r = json.loads(line)
    except ValueError:
        continue
    c = r.get("change")
    if r.get("event") != "begin" or not c or c.get("kind") not in ("file", "dir", "symlink"):
        continue
    p = c["path"]
    if p in seen:
        continue
    seen.add(p)
    g, i = guest + p, image + p
    if c["kind"] == "file" and c.get("prior"):
        if not os.path.isfile(i):
            continue
        same = os.path.isfile(g) and open(g, "rb").read() == open(i, "rb").read() \
            and (os.stat(g).st_mode & 0o7777) == (os.stat(i).st_mode & 0o7777)
        if not same:
            bad.append("not restored: " + p)
    elif os.path.lexists(g) and not os.path.lexists(i):
        bad.append("left behind: " + p)
print("\n".join(bad) or "tree restored")
sys.exit(1 if bad else 0)
PY
  [ -s "$RUN/reset-check.txt" ] || echo "no result" > "$RUN/reset-check.txt"
}

# cni_check: after reset, the CNI directories hold exactly what join found there (its "found"
# records: the image's network, here the prelude's conflist when it ran before join), and
# nothing the node's pods left (host-local's leases).
cni_check() {
  python3 - "$RUN/journal.jsonl" "$GROOT" > "$RUN/cni-check.txt" 2>&1 <<'PY' || true
import json, os, sys
journal, guest = sys.argv[1:3]
found = set()
for line in open(journal):
    try:
        r = json.loads(line)
    except ValueError:
        continue
    c = r.get("change") or {}
    if r.get("event") == "begin" and c.get("kind") == "found":
        found.update(c.get("entries", []))
bad = []
for top in ("/etc/cni/net.d", "/var/lib/cni"):
    for d, dirs, files in os.walk(guest + top):
        for n in dirs + files:
            p = os.path.join(d, n)[len(guest):]
            if p not in found and not any(f.startswith(p + "/") for f in found) \
                    and not any(p.startswith(f + "/") for f in found):
                bad.append("left behind: " + p)
bad += ["removed, though there before join: " + p for p in found if not os.path.lexists(guest + p)]
print("\n".join(bad) or "cni as before join (%d kept)" % len(found))
sys.exit(1 if bad else 0)
PY
}

dump_guest() {
  log "--- cloud-init-output.log (tail)"
  tail -n 40 "$GROOT/var/log/cloud-init-output.log" 2>/dev/null || true
  log "--- kubelet (journal tail)"
  guest journalctl -u kubelet --no-pager 2>/dev/null | tail -n 25 || true
  log "--- guest processes"
  guest ps -ef 2>/dev/null | grep -v '\[' | tail -n 25 || true
}

# ------------------------------------------------------------------ one form
FORM_INDEX=0
FORM_TIMES=()
run_form() {
  local form=$1 name node runtime=containerd values_flags="" taint="" subnet fail0=$FAIL t_form
  t_form=$(date +%s%N)
  FORM_INDEX=$((FORM_INDEX + 1))
  name="na-e2e-$(( ($$ + RANDOM) % 10000 ))-$FORM_INDEX"
  subnet=10.244.$((127 + FORM_INDEX)).0/24
  stage "form $form: seed, link, boot (systemd-nspawn, systemd as PID 1)"
  local base=$SERVE_URL/files values_url="$SERVE_URL/v1/values/{token}" openapi=$OPENAPI
  case "$form" in
    manual-add.yaml) node=e2e-manual-cc; taint=e2e; values_flags="--values-url $values_url --node-name $node --node-wait-timeout 120s" ;;
    manual-add) node=e2e-manual; taint=e2e; values_flags="--values-url $values_url --node-name $node --node-wait-timeout 120s" ;;
    scale-out) node=e2e-scale-out; runtime=docker; values_flags="--node-name $node --node-wait-timeout 120s" ;;
    autoscaler) node=e2e-pool; openapi=$OPENAPI_POOL; values_flags="--values-url $values_url --node-name $node --provider-id cn-e2e.i-e2e0001 --node-wait-timeout 120s" ;;
    # manual-add.sh on the plain image: the mirror's URL from the values, its key pinned in the
    # one-liner, the images imported from the mirror, containerd from the package manager at
    # the version asked for.
    plain) node=e2e-plain; taint=e2e; openapi=$OPENAPI_PLAIN
      values_flags="--values-url $values_url --node-name $node --node-wait-timeout 120s --artifacts-key $SIGNING_PUB --air-gap --runtime-version $CONTAINERD_DEB_VERSION" ;;
    *) die "unknown form $form" ;;
  esac
  GUEST_TREE=$TREE
  [ "$form" != plain ] || GUEST_TREE=$PLAIN_TREE
  local render=(-e "s#@BASE_URL@#$base#g" -e "s#@OPENAPI_TOKEN@#$openapi#g" -e "s#@TOKEN@#$TOKEN#g"
    -e "s#@ENDPOINT@#$ENDPOINT#g" -e "s#@CLUSTER_DNS@#$CLUSTER_DNS#g" -e "s#@CA_PIN@#$CA_PIN#g"
    -e "s#@DOCKER_VERSION@#20.10.24#g" -e "s#@LABELS@#k8s.io/cluster-autoscaler=true,workload_type=cpu#g"
    -e "s#@EXTRA_FLAGS@#$values_flags#g")
  mkdir -p "$RUNROOT/userdata"
  local ud=$RUNROOT/userdata/$form
  case "$form" in
    *.yaml)
      {
        printf 'Content-Type: multipart/mixed; boundary="==E2E=="\nMIME-Version: 1.0\n\n'
        printf -- '--==E2E==\nContent-Type: text/x-shellscript; charset="us-ascii"\nMIME-Version: 1.0\n\n'
        prelude "$subnet" "$runtime"
        printf -- '\n--==E2E==\nContent-Type: text/cloud-config; charset="us-ascii"\nMIME-Version: 1.0\n\n'
        sed "${render[@]}" "$REPO/packaging/userdata/$form"
        printf -- '\n--==E2E==--\n'
      } > "$ud" ;;
    # The plain guest's userdata is the prelude alone: the harness runs the one-liner, after
    # the refusals.
    plain) prelude_plain "$subnet" > "$ud" ;;
    *)
      { prelude "$subnet" "$runtime"; sed -e '1d' "${render[@]}" "$REPO/packaging/userdata/$form.sh"; } > "$ud" ;;
  esac
  # The userdata as the guest gets it, linted first: the join's flags, no token in argv. The
  # autoscaler pool's k8s.io/cluster-autoscaler label is the one finding expected (exit 90).
  # The plain guest's userdata is its prelude alone (the harness runs the one-liner itself).
  local check_rc=0 check_allowed=""
  if [ "$form" != plain ]; then
    # Beside the userdata: no guest (and so no $RUN) exists yet.
    "$BIN" check --json "$ud" > "$ud.check.json" 2>&1 || check_rc=$?
    case "$form" in autoscaler*) check_allowed=restricted-label ;; esac
    check "node-attach check: one join in the $form userdata, findings: ${check_allowed:-none} (exit $check_rc)" python3 -c '
import json, sys
r = json.loads(open(sys.argv[1]).readline())["result"]
ids = {f["id"] for f in r["findings"]}
allowed = set(sys.argv[2].split()) if sys.argv[2] else set()
want_rc = "90" if allowed else "0"
sys.exit(len(r["invocations"]) != 1 or r["invocations"][0]["plan"] is None or ids != allowed or sys.argv[3] != want_rc)' "$ud.check.json" "$check_allowed" "$check_rc"
    [ "$check_rc" = 0 ] || log "check: $(head -c 2000 "$ud.check.json")"
  fi
  boot_guest "$name" "$ud"
  stage_done "guest $GUEST_IP (netns $name), PID 1 is host pid $LEADER, pod subnet $subnet"

  if [ "$form" = plain ]; then
    plain_joins "$values_flags" "${render[@]}"
  else
    stage "form $form: cloud-init runs the prelude, the one-line install and node-attach join"
    wait_boot_finished 300 || true
    stage_done "$(grep -h 'joined\|already joined' "$GROOT/var/log/node-attach/init.log" 2>/dev/null | tail -n 1)"
  fi

  stage "form $form: runtime, kubelet, Node Ready"
  check "cloud-init finished without errors" grep -q '"errors": \[\]' "$GROOT/var/lib/cloud/data/result.json"
  check "the prelude ran" grep -q 'e2e prelude done' "$GROOT/var/log/cloud-init-output.log"
  check "join finished (state.json written)" test -f "$GROOT/var/lib/node-attach/state.json"
  # Between the runtime's (re)start and the kubelet's start, systemd is reloaded once (for the
  # kubelet's new units; the enable right after does not reload again) and the runtime's restart
  # runs meanwhile: join waits for its API only just before starting the kubelet. (Reloads
  # before that are the distribution's: Debian's docker.io enable reloads through update-rc.d.)
  if [ "$form" != plain ]; then
    local reloads
    # A restart is "Stopping" then "Starting": counted from the stop (under load systemd may
    # run the restart job after the reload); a start alone from the start.
    reloads=$(guest journalctl -q --no-pager -o cat _PID=1 | awk -v unit="$runtime" '
      index($0, "Stopping " unit ".service") == 1 { n = 0; on = 1; stopping = 1; next }
      index($0, "Starting " unit ".service") == 1 { if (!stopping) n = 0; on = 1; stopping = 0; next }
      on && $0 == "Reloading." { n++ }
      on && index($0, "Started kubelet.service") == 1 { print n; exit }')
    check "one systemd reload between the runtime's restart and the kubelet's start (got ${reloads:-none})" [ "$reloads" = 1 ]
    [ "$reloads" = 1 ] || guest journalctl -q --no-pager -o short-unix _PID=1 | grep -B4 -A1 'Reloading\.$' | tail -n 40
  fi
  check "install log at /var/log/node-attach/init.log" grep -q 'running: node-attach join' "$GROOT/var/log/node-attach/init.log"
  check "install log also at /var/log/acs/init.log" test -s "$GROOT/var/log/acs/init.log"
  if [ "$runtime" = docker ]; then
    check_within 30 "docker is active" guest systemctl -q is-active docker
    check "docker uses the systemd cgroup driver" grep -q 'native.cgroupdriver=systemd' "$GROOT/etc/docker/daemon.json"
    check "docker reports the systemd cgroup driver" sh -c "nsenter -t $LEADER -a -- docker info 2>/dev/null | grep -q 'Cgroup Driver: systemd'"
    check "daemon.json keeps the image's default runtime (merged, not replaced)" grep -q '"default-runtime": "runc-e2e"' "$GROOT/etc/docker/daemon.json"
    check "the kubelet runs dockershim with the CNI network plugin" grep -q -- '--network-plugin=cni' "$GROOT/var/lib/kubelet/kubeadm-flags.env"
    check "the kubelet's sandbox image is $PAUSE_IMAGE" grep -q -- "--pod-infra-container-image=$PAUSE_IMAGE" "$GROOT/var/lib/kubelet/kubeadm-flags.env"
    # docker was started by join: the images are loaded now, before any pod needs them.
    check "the pause and pod images load into docker" sh -c "nsenter -t $LEADER -a -- docker load -i /var/lib/cloud/seed/nocloud/pause.tar && nsenter -t $LEADER -a -- docker load -i /var/lib/cloud/seed/nocloud/pod.tar"
  else
    local cfg=$GROOT/etc/containerd/config.toml
    check_within 30 "containerd is active" guest systemctl -q is-active containerd
    check "containerd config has SystemdCgroup = true" grep -q 'SystemdCgroup = true' "$cfg"
    check "containerd config sets the cluster's pause image $PAUSE_IMAGE" grep -q "sandbox_image = \"$PAUSE_IMAGE\"" "$cfg"
    if [ "$form" = plain ]; then
      check "containerd looks for CNI plugins where join installed them" grep -q 'bin_dir = "/opt/cni/bin"' "$cfg"
    else
      check "containerd config keeps Debian's CNI bin_dir (merged, not replaced)" grep -q 'bin_dir = "/usr/lib/cni"' "$cfg"
    fi
    check "containerd config keeps the image's restrict_oom_score_adj (merged)" grep -q 'restrict_oom_score_adj = true' "$cfg"
    check "containerd runs that configuration" sh -c "nsenter -t $LEADER -a -- containerd config dump | grep -q 'SystemdCgroup = true' && nsenter -t $LEADER -a -- containerd config dump | grep -q 'sandbox_image = \"$PAUSE_IMAGE\"'"
    check "containerd's CRI plugin is ok" sh -c "nsenter -t $LEADER -a -- ctr plugins ls | awk '\$2==\"cri\"{print \$4}' | grep -qx ok"
    check "the kubelet talks CRI to containerd (--container-runtime=remote)" grep -q -- '--container-runtime=remote' "$GROOT/var/lib/kubelet/kubeadm-flags.env"
  fi
  check "kubelet.service is enabled" guest systemctl -q is-enabled kubelet
  check_within 30 "kubelet.service is active" guest systemctl -q is-active kubelet
  check "the kubelet runs on node-attach's flags (node IP $GUEST_IP)" grep -q -- "--node-ip=$GUEST_IP" "$GROOT/var/lib/kubelet/kubeadm-flags.env"
  check_within 20 "Node $node is registered" k get node "$node"
  check_within 120 "Node $node is Ready" node_ready "$node"
  check "Node $node runs the real kubelet v1.20.2" sh -c "[ \"\$(kubectl --kubeconfig '$ADMIN' --cache-dir '$RUNROOT/kube-cache' get node $node -o jsonpath='{.status.nodeInfo.kubeletVersion}')\" = v1.20.2 ]"
  if [ "$runtime" = docker ]; then
    check "Node $node reports docker 20.10.24" sh -c "kubectl --kubeconfig '$ADMIN' --cache-dir '$RUNROOT/kube-cache' get node $node -o jsonpath='{.status.nodeInfo.containerRuntimeVersion}' | grep -q '^docker://20.10.24'"
  else
    check "Node $node reports containerd 1.6.20" sh -c "kubectl --kubeconfig '$ADMIN' --cache-dir '$RUNROOT/kube-cache' get node $node -o jsonpath='{.status.nodeInfo.containerRuntimeVersion}' | grep -q '^containerd://1.6.20'"
  fi
  case "$form" in
    scale-out)
      check "Node $node runs on the flags' values (cluster DNS in its config)" grep -q "$CLUSTER_DNS" "$GROOT/var/lib/kubelet/config.yaml" ;;
    manual-add*)
      check "Node $node has the values' workload_type label" sh -c "[ \"\$(kubectl --kubeconfig '$ADMIN' --cache-dir '$RUNROOT/kube-cache' get node $node -o jsonpath='{.metadata.labels.workload_type}')\" = cpu ]"
      check "Node $node has the values' taint" sh -c "[ \"\$(kubectl --kubeconfig '$ADMIN' --cache-dir '$RUNROOT/kube-cache' get node $node -o jsonpath='{.spec.taints[0].key}')\" = e2e ]" ;;
    autoscaler)
      check "Node $node has the pool's workload_type label" sh -c "[ \"\$(kubectl --kubeconfig '$ADMIN' --cache-dir '$RUNROOT/kube-cache' get node $node -o jsonpath='{.metadata.labels.workload_type}')\" = cpu ]"
      check "Node $node has its providerID" sh -c "[ \"\$(kubectl --kubeconfig '$ADMIN' --cache-dir '$RUNROOT/kube-cache' get node $node -o jsonpath='{.spec.providerID}')\" = cn-e2e.i-e2e0001 ]"
      check "the restricted label is reported for the control plane" grep -q 'labels for the control plane to apply.*k8s.io/cluster-autoscaler=true' "$GROOT/var/log/cloud-init-output.log"
      check "the restricted label is not self-set (not in the kubelet's --node-labels)" sh -c "! grep -q cluster-autoscaler '$GROOT/var/lib/kubelet/kubeadm-flags.env'"
      check_within 30 "the values service applied the restricted label to Node $node" sh -c "[ \"\$(kubectl --kubeconfig '$ADMIN' --cache-dir '$RUNROOT/kube-cache' get node $node -o jsonpath='{.metadata.labels.k8s\.io/cluster-autoscaler}')\" = true ]"
      check "the kubelet registered Node $node with the startup taint while the label waited" grep -q 'register-with-taints=[^ "]*node.node-attach.io/labels-pending:NoSchedule' "$GROOT/var/lib/kubelet/kubeadm-flags.env"
      check "the values service removed the startup taint with the label" sh -c "! kubectl --kubeconfig '$ADMIN' --cache-dir '$RUNROOT/kube-cache' get node $node -o jsonpath='{.spec.taints}' | grep -q labels-pending" ;;
  esac
  if [ "$form" = plain ]; then
    check "the kubelet is the mirror's real 1.20.2 (same sha256)" sh -c "[ \"\$(sha256sum < '$GROOT/usr/bin/kubelet')\" = \"\$(sha256sum < '$K8S_BIN/kubelet')\" ]"
    check "the CNI plugins are the mirror's (Debian's bridge in /opt/cni/bin)" cmp -s "$GROOT/opt/cni/bin/bridge" /usr/lib/cni/bridge
    check "containerd $CONTAINERD_DEB_VERSION came from the package manager" containerd_from_apt
    check "the journal records what the install added (containerd and runc)" sh -c "grep -q '\"kind\":\"packages-added\".*\"containerd\".*\"runc\"' '$GROOT/var/lib/node-attach/journal.jsonl'"
    check "the pause and pod images were imported from the mirror" sh -c "nsenter -t $LEADER -a -- ctr -n k8s.io images ls -q | grep -qx '$PAUSE_IMAGE' && nsenter -t $LEADER -a -- ctr -n k8s.io images ls -q | grep -qx '$POD_IMAGE'"
    check "attach.sh checked the binary's signature" grep -q "signature verified with $SIGNING_PUB" "$RUN/join.log"
  fi
  check "kubelet.conf is 0600" sh -c "[ \$(stat -c %a $GROOT/etc/kubernetes/kubelet.conf) = 600 ]"
  check "the client certificate pair is 0600" sh -c "[ \$(stat -Lc %a $GROOT/var/lib/kubelet/pki/kubelet-client-current.pem 2>/dev/null || stat -c %a $GROOT\$(readlink $GROOT/var/lib/kubelet/pki/kubelet-client-current.pem)) = 600 ]"
  # Every bootstrap token secret the cluster holds (the cluster's and each minted one), and the
  # openapi tokens: none in the logs; no bootstrap secret on disk.
  local secrets
  secrets=$(k get secrets -n kube-system --field-selector type=bootstrap.kubernetes.io/token \
    -o jsonpath='{range .items[*]}{.data.token-secret}{"\n"}{end}' | while read -r s; do echo "$s" | base64 -d; echo; done | grep . | paste -sd'|')
  [ -n "$secrets" ] || secrets=$TOKEN_SECRET
  check "no token secret in the cloud-init or install logs" sh -c "! grep -Eq '$secrets|$OPENAPI|$OPENAPI_POOL' $GROOT/var/log/cloud-init-output.log $GROOT/var/log/cloud-init.log $GROOT/var/log/node-attach/init.log"
  check "no bootstrap token secret left on disk in /etc or /var/lib" sh -c "! grep -rEqs '$secrets' $GROOT/etc $GROOT/var/lib/kubelet $GROOT/var/lib/node-attach"
  stage_done

  stage "form $form: one pod Running on $node"
  local pod=e2e-pod-$node
  check_within 30 "Pod $pod is accepted by the API server" make_pod "$pod" "$node" "$taint"
  check_within 120 "Pod $pod is Running on $node" pod_running "$pod"
  local pod_ip
  pod_ip=$(k get pod "$pod" -o jsonpath='{.status.podIP}' 2>/dev/null || true)
  check "Pod $pod has an address from the guest's CNI subnet $subnet ($pod_ip)" in_subnet "$pod_ip" "$subnet"
  check_within 30 "the API server reaches the kubelet (kubectl logs $pod)" sh -c "kubectl --kubeconfig '$ADMIN' --cache-dir '$RUNROOT/kube-cache' --request-timeout=10s logs $pod | grep -qx e2e-pod-up"
  if [ "$runtime" = docker ]; then
    check "the pod's sandbox runs in docker" sh -c "[ -n \"\$(nsenter -t $LEADER -a -- docker ps -q --filter name=k8s_POD_$pod)\" ]"
  else
    check "the pod's sandbox runs in containerd" sh -c "[ -n \"\$(nsenter -t $LEADER -a -- ctr -n k8s.io tasks ls -q)\" ]"
  fi
  stage_done "pod IP $pod_ip"

  # node-attach doctor in the guest, with the real effects (systemd, the CRI socket, /proc).
  local doctor_rc=0
  guest /usr/local/bin/node-attach doctor --json > "$RUN/doctor.json" 2> "$RUN/doctor.err" || doctor_rc=$?
  check "node-attach doctor on the joined guest: exit 0" test "$doctor_rc" = 0
  check "node-attach doctor on the joined guest: joined, every check ok" python3 -c '
import json, sys
r = json.loads(open(sys.argv[1]).readline())["result"]
bad = [c for c in r["checks"] if c["status"] != "ok"]
sys.exit(r["state"] != "joined" or bool(bad))' "$RUN/doctor.json"
  [ "$doctor_rc" = 0 ] || log "doctor: $(head -c 3000 "$RUN/doctor.json")"
  [ "$FAIL" = "$fail0" ] || dump_guest
  # What join recorded, to check reset against the image (the guest's pre-join state).
  cp "$GROOT/var/lib/node-attach/journal.jsonl" "$RUN/journal.jsonl" 2>/dev/null || true

  stage "form $form: systemctl start node-attach-reset"
  # A oneshot: systemctl start returns when the reset has run, failing if it failed.
  local reset_rc=0 failed_steps
  timeout 300 nsenter -t "$LEADER" -a -- systemctl start node-attach-reset >/dev/null 2>&1 || reset_rc=$?
  guest journalctl -u node-attach-reset --no-pager > "$RUN/reset.log" 2>&1 || true
  failed_steps=$(grep -E 'node-attach\[[0-9]+\]:   [a-z-]+ +(failed|refused) ' "$RUN/reset.log" || true)
  stage_done "exit $reset_rc"
  check "the reset unit ran to its end" grep -q 'reset.*done\|reset steps failed' "$RUN/reset.log"
  if [ "$form" != scale-out ]; then
    # Joined through the values service: reset's last report, authenticated with the kubelet's
    # client certificate, has the service delete the Node (a node may not delete it itself).
    check "systemctl start node-attach-reset succeeded (exit $reset_rc)" test "$reset_rc" = 0
    check "the values service deleted Node $node on reset's authenticated report" grep -q "deleted $node (by the values service)" "$RUN/reset.log"
  elif [ "$reset_rc" = 0 ]; then
    check "systemctl start node-attach-reset succeeded" true
  else
    # No values service (the cluster values spelled out): a real API server refuses a node
    # deleting its own Node (the Node authorizer grants nodes no delete); reset reports that one
    # step failed and exits non-zero, having done the rest. The control plane's side of the
    # removal (kubectl delete node) is then the harness's.
    check "reset's only failed step is the Node deletion the API server refused (a node may not delete its own Node)" \
      sh -c "[ \"\$(printf '%s\n' \"\$1\" | grep -c .)\" = 1 ] && printf '%s\n' \"\$1\" | grep -q 'api *failed *DELETE /api/v1/nodes/$node .*403'" _ "$failed_steps"
    known "form $form: node-attach-reset cannot delete Node $node on a real API server (403: the Node authorizer grants a node no delete; no values service to ask); exit $reset_rc (reset.incomplete); deleted by the harness as the control plane"
    k delete node "$node" --wait=false >/dev/null 2>&1 || true
  fi
  check_within 30 "Node $node is gone from the API" node_gone "$node"
  check "the kubelet is stopped" sh -c "! nsenter -t $LEADER -a -- systemctl -q is-active kubelet"
  if [ "$runtime" = docker ]; then
    check "the pod's containers are gone from docker" sh -c "[ -z \"\$(nsenter -t $LEADER -a -- docker ps -aq --filter name=k8s_)\" ]"
  else
    check "the pod's sandbox is gone from containerd (no task, no container)" sh -c "[ -z \"\$(nsenter -t $LEADER -a -- ctr -n k8s.io tasks ls -q)\" ] && [ -z \"\$(nsenter -t $LEADER -a -- ctr -n k8s.io containers ls -q)\" ]"
  fi
  check "the CNI bridge is gone" sh -c "! nsenter -t $LEADER -a -- ip link show cni0"
  if [ "$runtime" = containerd ]; then
    # Pods go through the CRI (RemovePodSandbox runs CNI DEL): the netns containerd pinned for
    # the sandbox, with the pod's end of the veth, is gone too.
    check "the pod's network namespace is gone (no /run/netns/cni-*)" sh -c "[ -z \"\$(nsenter -t $LEADER -a -- ls /run/netns 2>/dev/null)\" ]"
  fi
  check "no pod veth is left in the guest (only its own eth0)" sh -c "! nsenter -t $LEADER -a -- ip -o link show type veth | grep -v ': eth0@' | grep -q ."
  check "the journal is gone" test ! -e "$GROOT/var/lib/node-attach"
  doctor_rc=0
  guest /usr/local/bin/node-attach doctor --json > "$RUN/doctor-reset.json" 2>&1 || doctor_rc=$?
  check "node-attach doctor after reset: not-joined, exit 0" python3 -c '
import json, sys
r = json.loads(open(sys.argv[1]).readline())["result"]
sys.exit(r["state"] != "not-joined" or sys.argv[2] != "0")' "$RUN/doctor-reset.json" "$doctor_rc"
  [ "$doctor_rc" = 0 ] || log "doctor after reset: $(head -c 3000 "$RUN/doctor-reset.json")"
  reset_tree_check
  check "every path join touched is back to the image's state" grep -qx 'tree restored' "$RUN/reset-check.txt"
  cni_check
  check "the CNI directories hold what was there before join, nothing the pods left" grep -q '^cni as before join' "$RUN/cni-check.txt"
  log "cni check: $(head -c 2000 "$RUN/cni-check.txt")"
  if [ "$form" = plain ]; then
    check "the installed-package list is back to the image's (containerd and runc removed)" packages_as_before
    check "the kubelet and the CNI plugins are gone" sh -c "[ ! -e '$GROOT/usr/bin/kubelet' ] && [ ! -e '$GROOT/opt/cni' ]"
  fi
  [ "$FAIL" = "$fail0" ] || log "reset check: $(cat "$RUN/reset-check.txt")"
  k delete pod "$pod" --force --grace-period=0 --wait=false >/dev/null 2>&1 || true

  stage "form $form: stop"
  if [ "$FAIL" != "$fail0" ] && [ "${E2E_KEEP:-0}" = 1 ]; then
    cp -a "$GROOT/var/log" "$RUN/guest-log" 2>/dev/null || true
  fi
  cleanup_guest
  stage_done
  FORM_TIMES+=("$(printf '%6.1f s  %s (%s)' "$(echo "($(date +%s%N) - $t_form) / 1000000000" | bc -l)" "$form" "$([ "$FAIL" = "$fail0" ] && echo ok || echo FAILED)")")
}

# ------------------------------------------------------------------ the peers, side by side
# peer_measure PEER RUN: a fresh guest with the peer's prelude; then, from the host, the join
# command in the guest under /usr/bin/time, Node Ready polled through the API server; then
# peer_sample turns what the run left (the audit log, the kubelet's journal, node-attach's
# --output json phase events, systemd's start stamp of the kubelet) into one JSON sample:
#   wall_to_ready_ms: from just before the join command starts to the first poll that sees Ready
#        (every 50 ms); join_to_ready_write_ms: to the status write that carried Ready (audit log)
#   join_to_kubelet_start_ms: from that start to the kubelet's last start (systemd's
#        ExecMainStartTimestampMonotonic; the guest shares the host's clocks)
#   kubelet_start_to_registered_ms: from the kubelet's start to its Node create (audit log)
#   kubelet_start_to_ready_ms: from the kubelet's start to Ready seen (the issue's "≤ 3 s from
#        kubelet start"); for kubeadm this includes the kubelet's own TLS bootstrap
#   ready_write_after_kubelet_start_ms: from the kubelet's start to the status write that carried
#        Ready (the last Node create or status write by the node before Ready was seen)
#   cpu: user+system of the join process and the children it waited for (GNU time), not the
#        kubelet (a systemd service; its own CPU to Ready is reported apart)
#   requests: audit events (unique auditID) received in [start, Ready] whose user is a bootstrap
#        token (system:bootstrap:*) or the node (system:node:NAME), or whose user agent is
#        node-attach/* or kubeadm/*; so the kubelet's own requests until Ready count for both
# and a timeline of both sides (printed, and kept in the sample).
PEER_DIR=""
# CPU time of kubelet.service so far in ns: systemd's accounting, else the main process's
# utime+stime (+ its waited children) from /proc.
kubelet_cpu_ns() {
  local v pid
  v=$(guest systemctl show -p CPUUsageNSec --value kubelet 2>/dev/null || true)
  if [[ "$v" =~ ^[0-9]+$ ]]; then echo "$v"; return; fi
  pid=$(guest systemctl show -p MainPID --value kubelet 2>/dev/null || echo 0)
  if [ "${pid:-0}" != 0 ]; then
    guest cat "/proc/$pid/stat" 2>/dev/null |
      awk -v hz="$(getconf CLK_TCK)" '{sub(/^.*\) /, ""); printf "%d", ($12 + $13 + $14 + $15) * 1000000000 / hz}'
  else
    echo 0
  fi
}
# The kubelet's last start on the host's realtime clock, in ns: systemd's CLOCK_MONOTONIC stamp
# (µs; an nspawn guest shares the host's kernel clocks) moved by the realtime-monotonic offset.
kubelet_started_ns() {
  local mono
  mono=$(guest systemctl show -p ExecMainStartTimestampMonotonic --value kubelet 2>/dev/null || true)
  [[ "$mono" =~ ^[1-9][0-9]*$ ]] || { echo 0; return; }
  python3 -c 'import sys, time; print(int(sys.argv[1]) * 1000 + time.time_ns() - time.monotonic_ns())' "$mono"
}
# peer_sample NODE OUT PEER RUN T0 T1 KUBELET-START JOIN-CPU-MS KUBELET-CPU-MS JOIN-LOG JOURNAL READY-LOG:
# prints the timeline, writes the sample to OUT.
peer_sample() {
  python3 - "$AUDIT_LOG" "$@" <<'PY'
import calendar, json, re, sys, time
audit, node, out, peer, run, t0, t1, ks, join_cpu, kubelet_cpu, join_log, journal, conds = sys.argv[1:14]
t0, t1, ks = int(t0), int(t1), int(ks)
def ns(ts):
    # RFC 3339 in UTC, with or without a fraction ("2026-12-01T20:26:29.123456Z")
    m = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?Z$", ts)
    secs = calendar.timegm(time.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S"))
    return secs * 1000000000 + int((m.group(2) or "0")[:9].ljust(9, "0"))
ms = lambda t: round((t - t0) / 1e6)
seen, events, writes, created = {}, [], [], None
for line in open(audit):
    try:
        e = json.loads(line)
    except ValueError:
        continue
    t = ns(e["requestReceivedTimestamp"])
    if not t0 <= t <= t1:
        continue
    user = e.get("user", {}).get("username", "")
    ua = e.get("userAgent", "")
    node_side = user.startswith("system:bootstrap:") or user == "system:node:" + node \
        or user == "system:anonymous"
    ours = ua.startswith(("node-attach/", "kubeadm/"))
    if ours and node_side:
        seen[e["auditID"]] = "joiner"
    elif ours:
        seen[e["auditID"]] = "service"  # node-attach serve (the admin), minting the use's token
    elif node_side and user != "system:anonymous":
        seen[e["auditID"]] = "kubelet"
    if e.get("stage") != "ResponseComplete" or e.get("responseStatus", {}).get("code", 0) >= 300:
        continue
    ref, verb = e.get("objectRef", {}), e.get("verb")
    res, sub, name = ref.get("resource"), ref.get("subresource", ""), ref.get("name", "")
    done = ns(e.get("stageTimestamp", e["requestReceivedTimestamp"]))
    who = "kubelet" if not ours else peer
    if res == "certificatesigningrequests" and verb == "create":
        events.append((done, "api", f"CSR created ({who})"))
    elif res == "certificatesigningrequests" and sub == "approval":
        events.append((done, "api", "CSR approved (controller manager)"))
    elif res == "certificatesigningrequests" and sub == "status":
        events.append((done, "api", "certificate issued (controller manager)"))
    elif res == "nodes" and name == node and verb == "create":
        created = done
        writes.append(done)
        events.append((done, "api", "Node registered (create, status included)"))
    elif res == "nodes" and name == node and sub == "status" and user == "system:node:" + node:
        writes.append(done)
        events.append((done, "api", f"node status written ({verb})"))
    elif res == "nodes" and name == node and verb == "patch" and not sub and not node_side and not ours:
        events.append((done, "api", f"Node patched by {user.rsplit(':', 1)[-1]}"))
n = lambda kind: sum(1 for v in seen.values() if v == kind)
if ks:
    events.append((ks, "systemd", "kubelet started"))
# The kubelet's own words (journald's realtime stamps, µs), first occurrence of each.
marks = [("Version: v", "flags parsed"),
         ("Creating Container Manager object", "container manager created (cAdvisor up)"),
         ("initialized, version", "CRI runtime connected"),
         ("while getting AWS credentials", "in-tree AWS ECR credential probe gave up"),
         ("] Started kubelet", "Started kubelet (Run begins)"),
         ("Attempting to register node", "attempting to register the Node"),
         ("Successfully registered node", "registered the Node"),
         ("Setting Pod CIDR", "podCIDR seen: the fast status update runs"),
         ("iptables rules", "iptables chains ensured (initNetworkUtil)"),
         ("Starting kubelet main sync loop", "PLEG started, main sync loop"),
         ("Container runtime network not ready", "runtime network not ready"),
         ("Unable to update node status", "node status update failed")]
found, run_at = set(), None
for line in open(journal, errors="replace"):
    parts = line.split(" ", 1)
    try:
        t = int(float(parts[0]) * 1e9)
    except ValueError:
        continue
    if ks and t < ks:
        continue
    for needle, what in marks:
        if needle in line and needle not in found:
            found.add(needle)
            events.append((t, "kubelet", what))
            if needle == "] Started kubelet":
                run_at = t
# node-attach's phase events (elapsed from its own start, just after t0).
if peer.startswith("node-attach"):
    for line in open(join_log, errors="replace"):
        try:
            e = json.loads(line)
        except ValueError:
            continue
        if e.get("status") in ("done", "unchanged", "skipped") and "phase" in e:
            events.append((t0 + e["elapsed_ms"] * 1000000, "node-attach", f"{e['phase']} {e['status']} ({e.get('duration_ms', 0)} ms)"))
# The Ready condition as the poll saw it change (status: message).
for line in open(conds, errors="replace"):
    t, _, text = line.rstrip("\n").partition(" ")
    if text and not text.startswith("True:"):
        events.append((int(t), "poll", "Ready " + text))
events.append((t1, "poll", "Ready seen"))
events.sort()
ready_write = max((w for w in writes if w <= t1), default=None)
sample = {
    "peer": peer, "run": int(run),
    "wall_to_ready_ms": ms(t1), "join_cpu_ms": int(join_cpu),
    "api_requests": len(seen), "api_requests_by_joiner": n("joiner"),
    "api_requests_by_service": n("service"), "api_requests_by_kubelet": n("kubelet"),
    "kubelet_cpu_to_ready_ms": int(kubelet_cpu),
    "join_to_kubelet_start_ms": ms(ks) if ks else None,
    "kubelet_start_to_registered_ms": round((created - ks) / 1e6) if ks and created else None,
    "kubelet_start_to_ready_ms": round((t1 - ks) / 1e6) if ks else None,
    "ready_write_after_kubelet_start_ms": round((ready_write - ks) / 1e6) if ks and ready_write else None,
    "join_to_ready_write_ms": ms(ready_write) if ready_write else None,
    # The kubelet's own start-up (process start to Kubelet.Run), and Run to the Ready write:
    # a few hundred ms when the early status writes carry Ready, one nodeStatusUpdateFrequency
    # (10 s) more when they do not.
    "kubelet_start_to_run_ms": round((run_at - ks) / 1e6) if ks and run_at else None,
    "run_to_ready_write_ms": round((ready_write - run_at) / 1e6) if run_at and ready_write else None,
    "node_status_writes_to_ready": len([w for w in writes if w <= t1]),
    "timeline": [{"ms": ms(t), "by": by, "event": what} for t, by, what in events],
}
with open(out, "w") as f:
    json.dump(sample, f, indent=1)
for e in sample["timeline"]:
    print(f"    {e['ms']:>7} ms  {e['by']:<11} {e['event']}")
PY
}
# wait_ready NODE CONDITIONS-FILE: polls the Node every 50 ms on one kept-alive TLS connection as
# the admin (light: no process or handshake per poll), appends each change of its Ready
# condition ("STATUS: message", or "not registered") with the host clock in ns to the file, and
# prints the time it first saw Ready=True; exits 1 after 240 s without.
wait_ready() {
  python3 - "$ENDPOINT" "$CA_CERT" "$RUNROOT/admin.crt" "$RUNROOT/admin.key" "$1" "$2" <<'PY'
import http.client, json, ssl, sys, time
endpoint, ca, crt, key, node, out = sys.argv[1:7]
host, port = endpoint.rsplit(":", 1)
ctx = ssl.create_default_context(cafile=ca)
ctx.load_cert_chain(crt, key)
conn, last, deadline = None, None, time.monotonic() + 240
with open(out, "a") as f:
    while time.monotonic() < deadline:
        text = None
        try:
            if conn is None:
                conn = http.client.HTTPSConnection(host, int(port), context=ctx, timeout=2)
            conn.request("GET", "/api/v1/nodes/" + node)
            r = conn.getresponse()
            body = r.read()
            if r.status == 404:
                text = "not registered"
            elif r.status == 200:
                c = [x for x in json.loads(body)["status"].get("conditions", []) if x["type"] == "Ready"]
                text = c[0]["status"] + ": " + c[0].get("message", "") if c else "no Ready condition"
        except (OSError, ValueError, http.client.HTTPException):
            conn = None
        now = time.time_ns()
        if text is not None and text != last:
            f.write(f"{now} {text}\n")
            f.flush()
            last = text
        if text is not None and text.startswith("True:"):
            print(now)
            sys.exit(0)
        time.sleep(0.05)
sys.exit(1)
PY
}
peer_measure() {
  local peer=$1 run=$2 name node ud t0 t1 rc
  node=peer-$peer-$run
  name="na-peer-$(( ($$ + RANDOM) % 10000 ))-$run"
  stage "peers: $peer run $run: boot a fresh guest (prelude only)"
  ud=$RUNROOT/userdata/peer-$peer
  mkdir -p "$RUNROOT/userdata"
  prelude 10.244.$((150 + run)).0/24 containerd "$peer" > "$ud"
  boot_guest "$name" "$ud"
  wait_boot_finished 300 || die "the prelude did not finish"
  grep -q 'e2e prelude done' "$GROOT/var/log/cloud-init-output.log" ||
    { tail -n 30 "$GROOT/var/log/cloud-init-output.log"; die "the prelude failed"; }
  stage_done "guest $GUEST_IP"

  stage "peers: $peer run $run: join until Node $node is Ready"
  local cmd
  if [ "$peer" = kubeadm ]; then
    # Preflight checks nspawn cannot satisfy: SystemVerification reads the kernel config
    # (/proc/config.gz, /boot/config-*: absent in a container), and crictl, which kubeadm 1.20
    # runs for the FileExisting-crictl and CRI checks, is packaged nowhere here.
    # The flags' equivalent as a JoinConfiguration (ENDPOINT --token --discovery-token-ca-cert-hash
    # --node-name --cri-socket), for one field no flag sets: caCertPath. kubeadm 1.20 join writes
    # the CA to /etc/kubernetes/pki/ca.crt unless told, but the cluster's kubelet-config names
    # <certificatesDir>/ca.crt as the kubelet's clientCAFile, and cluster.sh's certificatesDir is
    # its DIR/pki: without this the kubelet exits ("unable to load client CA file").
    # One preflight error is ignored: FileExisting-crictl (kubeadm 1.20 requires crictl with a
    # CRI socket; crictl is packaged nowhere here). SystemVerification and the rest pass.
    cat > "$GROOT/root/kubeadm-join.yaml" <<YAML
apiVersion: kubeadm.k8s.io/v1beta2
kind: JoinConfiguration
caCertPath: $PKI_DIR/ca.crt
discovery:
  bootstrapToken:
    apiServerEndpoint: $ENDPOINT
    token: $TOKEN
    caCertHashes: [$CA_PIN]
nodeRegistration:
  name: $node
  criSocket: /run/containerd/containerd.sock
  ignorePreflightErrors: [FileExisting-crictl]
YAML
    chmod 0600 "$GROOT/root/kubeadm-join.yaml"
    cmd=(/usr/bin/kubeadm join --config /root/kubeadm-join.yaml)
  else
    # --output json: the phase events, with their elapsed times, go into the timeline.
    cmd=(env NODE_ATTACH_OPENAPI_TOKEN="$OPENAPI" /usr/local/bin/node-attach join --output json
      --values-url "$SERVE_URL/v1/values/{token}" --node-name "$node" --node-wait-timeout 120s)
  fi
  t0=$(date +%s%N)
  nsenter -t "$LEADER" -a -- /usr/bin/time -f '%e %U %S' -o /run/join.time "${cmd[@]}" > "$RUN/join.log" 2>&1 &
  local jpid=$! ready=0 conds=$PEER_DIR/ready-$peer-$run.txt
  : > "$conds"
  # Each change of the Ready condition (its status and message: what the kubelet still waits
  # for) is kept for the timeline.
  if t1=$(wait_ready "$node" "$conds"); then ready=1; else t1=$(date +%s%N); fi
  local kubelet_ns kubelet_start
  kubelet_ns=$(kubelet_cpu_ns)
  kubelet_start=$(kubelet_started_ns)
  rc=0; wait "$jpid" || rc=$?
  [ "$ready" = 1 ] || { tail -n 30 "$RUN/join.log"; dump_guest; die "$peer: Node $node not Ready within 240 s"; }
  [ "$rc" = 0 ] || { tail -n 30 "$RUN/join.log"; die "$peer join exited $rc"; }
  [ "$kubelet_start" != 0 ] || die "$peer: systemd has no start stamp for kubelet.service"
  local cpu_ms
  cpu_ms=$(awk '{printf "%d", ($2 + $3) * 1000}' "$GROOT/run/join.time")
  # The apiserver writes an event once the response completes: wait for the Ready read to land.
  wait_for 10 "the audit log to catch up" sh -c "[ \"\$(stat -c %Y '$AUDIT_LOG')\" -ge $(( t1 / 1000000000 )) ]"
  guest journalctl -u kubelet -o short-unix --no-pager > "$PEER_DIR/kubelet-$peer-$run.log" 2>&1 || true
  # With E2E_KEEP=1, the guest's whole journal too (systemd's reloads, the runtime's restart).
  if [ "${E2E_KEEP:-0}" = 1 ]; then guest journalctl -o short-unix --no-pager > "$PEER_DIR/journal-$peer-$run.log" 2>&1 || true; fi
  cp "$RUN/join.log" "$PEER_DIR/join-$peer-$run.log"
  peer_sample "$node" "$PEER_DIR/sample-$peer-$run.json" "$peer" "$run" "$t0" "$t1" "$kubelet_start" \
    "$cpu_ms" "$(( kubelet_ns / 1000000 ))" "$PEER_DIR/join-$peer-$run.log" "$PEER_DIR/kubelet-$peer-$run.log" "$conds" \
    > "$PEER_DIR/timeline-$peer-$run.txt" || die "reading the timeline of $peer run $run failed"
  log "$peer: Ready after $(( (t1 - t0) / 1000000 )) ms, $(( (t1 - kubelet_start) / 1000000 )) ms after the kubelet started ($(( (kubelet_start - t0) / 1000000 )) ms after the join command); join CPU $cpu_ms ms; timeline (ms from the join command):"
  cat "$PEER_DIR/timeline-$peer-$run.txt"
  stage_done
  guest systemctl stop kubelet >/dev/null 2>&1 || true
  cleanup_guest
  k delete node "$node" --wait=false >/dev/null 2>&1 || true
}

run_peers() {
  # The admin's client certificate, for the lightweight Ready poll.
  python3 - "$ADMIN" "$RUNROOT/admin.crt" "$RUNROOT/admin.key" <<'PY'
import base64, re, sys
text = open(sys.argv[1]).read()
for key, out in (("client-certificate-data", sys.argv[2]), ("client-key-data", sys.argv[3])):
    m = re.search(key + r":\s*(\S+)", text)
    open(out, "wb").write(base64.b64decode(m.group(1)))
PY
  chmod 0600 "$RUNROOT/admin.key"
  PEER_DIR=$RUNROOT/peers
  mkdir -p "$PEER_DIR"
  local run
  for run in $(seq 1 "$PEER_RUNS"); do
    peer_measure node-attach "$run"
    peer_measure kubeadm "$run"
    if [ -n "$PEERS_BASELINE" ]; then peer_measure node-attach-baseline "$run"; fi
  done
  mkdir -p "$(dirname "$PEERS_JSON")"
  python3 - "$PEERS_JSON" "$VERSION" "$PEER_RUNS" "$PEER_DIR" <<'PY'
import glob, json, os, statistics, sys
out, version, runs, d = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
samples = [json.load(open(p)) for p in sorted(glob.glob(os.path.join(d, "sample-*.json")))]
samples.sort(key=lambda s: (s["peer"], s["run"]))
keys = ["wall_to_ready_ms", "join_to_ready_write_ms", "join_to_kubelet_start_ms", "kubelet_start_to_registered_ms",
        "kubelet_start_to_ready_ms", "ready_write_after_kubelet_start_ms", "kubelet_start_to_run_ms",
        "run_to_ready_write_ms", "node_status_writes_to_ready",
        "join_cpu_ms", "api_requests", "api_requests_by_joiner", "api_requests_by_service",
        "api_requests_by_kubelet", "kubelet_cpu_to_ready_ms"]
doc = {"kubernetes": version, "runs": runs,
       "rule": {"wall_to_ready_ms": "from just before the join command starts (host clock, which the guest shares) to the first poll (every 0.05 s, GET /api/v1/nodes/NAME as the admin on one kept-alive connection) that sees Ready=True",
                "join_to_ready_write_ms": "from that start to the completion of the status write that carried Ready (audit log stageTimestamp): the server-side moment, without the poll's delay",
                "join_to_kubelet_start_ms": "from that start to the kubelet's last start: systemd's ExecMainStartTimestampMonotonic of kubelet.service in the guest, on the host's clock (an nspawn guest shares the host's kernel clocks)",
                "kubelet_start_to_registered_ms": "from the kubelet's start to the completion of its Node create (audit log stageTimestamp)",
                "kubelet_start_to_ready_ms": "from the kubelet's start to Ready seen: the issue's 'from kubelet start'; for kubeadm it includes the kubelet's own TLS bootstrap",
                "ready_write_after_kubelet_start_ms": "from the kubelet's start to the last Node create or status write by the node before Ready was seen: the write that carried Ready",
                "node_status_writes_to_ready": "Node create and status writes by the node up to Ready",
                "kubelet_start_to_run_ms": "from the kubelet's start to its 'Started kubelet' (Kubelet.Run begins; its journal): the kubelet's own start-up",
                "run_to_ready_write_ms": "from Kubelet.Run to the status write that carried Ready: a few hundred ms when the status written at registration or by the fast update (fastStatusUpdateOnce) is Ready, one nodeStatusUpdateFrequency (10 s) more when not",
                "missed_early_status": "runs whose run_to_ready_write_ms exceeds 5 s (Ready came with a 10 s status tick)",
                "join_cpu_ms": "user+system CPU of the join process and the children it waited for (GNU time); not the kubelet, a systemd service",
                "api_requests": "kube-apiserver audit events (DIR/audit.log, Metadata level, counted by unique auditID) whose requestReceivedTimestamp is in [start, Ready seen] and whose user.username is system:bootstrap:<id> or system:node:<node>, or whose userAgent starts with node-attach/ or kubeadm/",
                "api_requests_by_joiner": "of those, the join command's own: userAgent node-attach/* or kubeadm/* as the bootstrap token, the node or anonymous (cluster-info)",
                "api_requests_by_service": "of those, node-attach serve's (userAgent node-attach/*, the admin): minting the use's bootstrap token, the use count, the restricted-label check; kubeadm's token was made before the window",
                "api_requests_by_kubelet": "of those, the kubelet's (the bootstrap token or the node, another user agent)",
                "kubelet_cpu_to_ready_ms": "CPU of kubelet.service (cpuacct.usage of its cgroup) when Ready was seen; for kubeadm the kubelet also does the TLS bootstrap",
                "timeline": "per sample: ms from the join command; api = audit log (completion), kubelet = its journal (first occurrence), node-attach = its --output json phase events, systemd = the kubelet's start"},
       "medians": {}, "min": {}, "max": {}, "samples": samples}
peers = [p for p in ("node-attach", "kubeadm", "node-attach-baseline") if any(x["peer"] == p for x in samples)]
for peer in peers:
    s = [x for x in samples if x["peer"] == peer]
    for agg, f in (("medians", statistics.median), ("min", min), ("max", max)):
        doc[agg][peer] = {k: f(v) if (v := [x[k] for x in s if x.get(k) is not None]) else None for k in keys}
doc["missed_early_status"] = {peer: sum(1 for x in samples if x["peer"] == peer and (x.get("run_to_ready_write_ms") or 0) > 5000)
                               for peer in peers}
na, ka = doc["medians"]["node-attach"], doc["medians"]["kubeadm"]
doc["goals"] = {
    "kubelet_start_to_ready_ms <= 3000": na["kubelet_start_to_ready_ms"] is not None and na["kubelet_start_to_ready_ms"] <= 3000,
    "wall_to_ready_ms <= 0.3 x kubeadm's": na["wall_to_ready_ms"] <= 0.3 * ka["wall_to_ready_ms"],
}
with open(out, "w") as f:
    json.dump(doc, f, indent=2)
    f.write("\n")
print(f"node-attach vs kubeadm join, Kubernetes {version}, same image and control plane (medians of {runs} runs)")
base = doc["medians"].get("node-attach-baseline")
print(f"{'metric':<36} {'node-attach':>12} {'kubeadm':>12} {'ratio':>8}" + (f" {'baseline':>12} {'ratio':>8}" if base else ""))
fmt = lambda v: "-" if v is None else f"{v:g}"
ratio = lambda a, b: f"{a / b:.2f}" if a is not None and b else "-"
for k in keys:
    row = f"{k:<36} {fmt(na[k]):>12} {fmt(ka[k]):>12} {ratio(na[k], ka[k]):>8}"
    if base:
        row += f" {fmt(base[k]):>12} {ratio(na[k], base[k]):>8}"
    print(row)
lo, hi = doc["min"], doc["max"]
for k in ("wall_to_ready_ms", "kubelet_start_to_ready_ms"):
    print(f"{k} min..max: " + ", ".join(f"{p} {fmt(lo[p][k])}..{fmt(hi[p][k])}" for p in peers))
m = doc["missed_early_status"]
print("Ready with a 10 s status tick (the kubelet's early writes not Ready): "
      + ", ".join(f"{p} {m[p]} of {runs}" for p in peers))
for goal, met in doc["goals"].items():
    print(f"goal {goal}: {'met' if met else 'NOT met'}")
print(f"(written to {out}; each run's timeline is printed above and kept in its sample)")
PY
}

if [ "$MODE" = peers ]; then
  run_peers
else
  for form in $FORMS; do
    run_form "$form"
  done
fi
log "stage timings:"
printf '  %s\n' "${TIMINGS[@]}"
if [ "${#FORM_TIMES[@]}" -gt 0 ]; then
  log "forms:"
  printf '  %s\n' "${FORM_TIMES[@]}"
fi
if [ "${#KNOWN[@]}" -gt 0 ]; then
  log "known gaps (not failures of this test; see the report):"
  printf '  %s\n' "${KNOWN[@]}"
fi
log "total $(( $(elapsed) / 1000 )) s; $PASS passed, $FAIL failed"
echo "$PASS passed, $FAIL failed"
[ "$FAIL" = 0 ]
exit
}
