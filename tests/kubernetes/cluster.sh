#!/usr/bin/env bash
# A real Kubernetes v1.20.2 control plane for tests: etcd, kube-apiserver and
# kube-controller-manager in a network namespace of their own, set up by the real kubeadm's init
# phases, so RBAC, cluster-info, kubeadm-config and kubelet-config-1.20 are exactly what kubeadm
# 1.20 makes. Shared by the Rust integration tests (agent/tests/integration/real_cluster.rs) and
# the bash end-to-end test. Needs root; the components come from tests/kubernetes/build.sh.
#
#   cluster.sh up DIR [--owner-pid PID] [--token ID.SECRET] [--kubelet-config FILE]
#       Starts the cluster; prints only progress, on stderr. On success DIR holds:
#         admin.conf   cluster-admin kubeconfig (server https://NS_IP:6443, reachable from the host)
#         ca.crt       the cluster CA
#         ca.pin       sha256:<hex> of the CA's SubjectPublicKeyInfo (--discovery-token-ca-cert-hash)
#         endpoint     NS_IP:6443
#         token        the bootstrap token (ID.SECRET; random unless --token), made by kubeadm's
#                      bootstrap-token phase and already signed into kube-public/cluster-info
#         env          KEY=VALUE lines (no quoting; DIR is restricted to [A-Za-z0-9._+/-]):
#                      NETNS NS_IP HOST_IP ENDPOINT CA_PIN TOKEN VERSION PKI_DIR AUDIT_LOG CA_CERT
#                      ADMIN_KUBECONFIG BIN_DIR POD_SUBNET SERVICE_SUBNET CLUSTER_DNS
#                      ETCD_PID KUBE_APISERVER_PID KUBE_CONTROLLER_MANAGER_PID [SUPERVISOR_PID]
#         pids         one "NAME PID STARTTIME" line per process (STARTTIME: /proc/PID/stat field 22)
#         audit.log    the apiserver's audit log, JSON lines, level Metadata, stage RequestReceived
#                      omitted (one ResponseComplete event per request; watches also ResponseStarted)
#         etcd.log kube-apiserver.log kube-controller-manager.log kubeadm.log (supervisor.log)
#       With --owner-pid PID a detached supervisor (setsid) runs `down DIR` once PID has exited,
#       so a test process that dies does not leak the cluster. --kubelet-config FILE: a
#       KubeletConfiguration document (kubelet.config.k8s.io/v1beta1) given to kubeadm with the
#       init configuration, as an operator sets the cluster's kubelet defaults; kubeadm merges it
#       into kubelet-config-1.20. Without it, kubelet-config-1.20 is kubeadm's default. A failed
#       `up` tears down what it started (logs stay) and exits non-zero with the relevant log tail
#       on stderr.
#
#   cluster.sh down DIR
#       Stops every recorded process (TERM, bounded wait, KILL), removes the links, the netns and
#       the veth it made, and the runtime state (etcd data, env, pids); logs, pki and kubeconfigs
#       stay. Idempotent; safe after an `up` that failed midway.
#
#   cluster.sh link DIR NAME
#       Makes network namespace NAME (for a guest: systemd-nspawn
#       --network-namespace-path=/run/netns/NAME) joined by a veth pair (eth0 inside NAME) straight
#       to the cluster's netns, on its own /30 with a default route via the cluster side; prints
#       "GUEST_IP=... GATEWAY=...". The apiserver answers there at ENDPOINT. Only the cluster netns
#       is reachable from NAME: it does not forward, so a server the guest needs must listen in
#       the cluster netns (ip netns exec NETNS ...).
#   cluster.sh unlink DIR NAME
#       Removes that link and namespace (down also removes links still there).
#
# Addresses: cluster N (0..253, picked free under a global flock) has netns and host veth
# na-k8s-N, NS_IP 10.250.N.1/24 (eth0 in the netns, default route via the host side),
# HOST_IP 10.250.N.254; its links are 10.251.N.(4k+1) (cluster side) / 10.251.N.(4k+2) (guest).
# kubeadm writes nothing outside DIR: every kubeadm command gets --config/--kubeconfig(-dir) in
# DIR, certificatesDir is DIR/pki, and the static-pod manifests (whose command lines give the
# components' flags) are generated under a --rootfs chroot in DIR.
set -euo pipefail

SELF=$(readlink -f "${BASH_SOURCE[0]}")
HERE=$(dirname "$SELF")
NODE_NAME=node-attach-control-plane
POD_SUBNET=10.244.0.0/16
SERVICE_SUBNET=10.96.0.0/12
CLUSTER_DNS=10.96.0.10
GLOBAL_LOCK=/run/lock/node-attach-cluster.lock
KUBECTL=${KUBECTL:-kubectl}
T0=$(date +%s%N)

log() { printf 'cluster.sh [%5.1fs] %s\n' "$(( ($(date +%s%N) - T0) / 1000000 ))e-3" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# --- processes -----------------------------------------------------------------------------------

# Prints "STATE STARTTIME" of PID from /proc/PID/stat (fields 3 and 22), or nothing.
proc_stat() {
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 0
  stat=${stat##*) }  # comm may hold spaces and parentheses: cut after the last ")"
  # shellcheck disable=SC2086
  set -- $stat
  echo "$1 ${20}"
}

# True while PID runs and is the same process (start time) as when recorded; zombies are dead.
alive() {
  local s
  s=$(proc_stat "$1")
  [ -n "$s" ] && [ "${s%% *}" != Z ] && [ "${s#* }" = "$2" ]
}

record_pid() {
  local name=$1 pid=$2 s
  s=$(proc_stat "$pid")
  [ -n "$s" ] || die "$name (pid $pid) exited at once; see its log"
  echo "$name $pid ${s#* }" >>"$DIR/pids"
}

# Starts NAME (its log DIR/NAME.log) in the cluster netns, detached from the caller's session and
# file descriptors (the lock fds 7 and 8 above all: a daemon holding them would lock DIR for
# good), and records its PID. setsid and `ip netns exec` both exec in place.
start_in_netns() {
  local name=$1
  shift
  setsid ip netns exec "$NETNS" "$@" </dev/null >>"$DIR/$name.log" 2>&1 7>&- 8>&- &
  record_pid "$name" "$!"
  disown "$!"
}

pid_of() { [ -f "$DIR/pids" ] && awk -v n="$1" '$1 == n {pid = $2} END {print pid}' "$DIR/pids"; }

# Dies unless the recorded process NAME still runs (after showing its log tail).
check_running() {
  local line pid start
  line=$(awk -v n="$1" '$1 == n' "$DIR/pids" | tail -n 1)
  pid=$(echo "$line" | cut -d' ' -f2)
  start=$(echo "$line" | cut -d' ' -f3)
  alive "$pid" "$start" && return 0
  tail_log "$DIR/$1.log"
  die "$1 (pid $pid) has exited"
}

tail_log() {
  [ -f "$1" ] || return 0
  echo "----- last lines of $1" >&2
  tail -n 40 "$1" >&2 || true
  echo "-----" >&2
}

# wait_until DESCRIPTION SECONDS LOGFILE COMMAND...: polls COMMAND every 0.2s until it succeeds;
# on the deadline dies with LOGFILE's tail. Each poll also checks the processes started so far.
wait_until() {
  local what=$1 secs=$2 logf=$3 deadline
  shift 3
  deadline=$(( $(date +%s%N) + secs * 1000000000 ))
  while ! "$@" >/dev/null 2>&1; do
    for p in $(awk '$1 != "supervisor" {print $1}' "$DIR/pids" 2>/dev/null); do check_running "$p"; done
    if [ "$(date +%s%N)" -gt "$deadline" ]; then
      tail_log "$logf"
      die "timed out after ${secs}s waiting for $what"
    fi
    sleep 0.2
  done
}

# --- locking -------------------------------------------------------------------------------------

# One up/down/link/unlink at a time per DIR (fd 8 on DIR/.lock); re-entrant within one process.
DIR_LOCKED=0
lock_dir() {
  [ "$DIR_LOCKED" = 1 ] && return 0
  exec 8>"$DIR/.lock"
  flock -w "${1:-300}" 8 || die "$DIR is locked by another cluster.sh for over ${1:-300}s"
  DIR_LOCKED=1
}

# --- state ---------------------------------------------------------------------------------------

# DIR/state records what exists as soon as it exists, so down can undo a partial up.
state_get() {
  [ -f "$DIR/state" ] || return 0
  awk -F= -v k="$1" '$1 == k {v = substr($0, length(k) + 2)} END {print v}' "$DIR/state"
}
state_set() { echo "$1=$2" >>"$DIR/state"; }

set_dir() {
  [ -n "${1:-}" ] || die "DIR is required"
  case "$1" in /*) DIR=$1 ;; *) DIR=$PWD/$1 ;; esac
  DIR=${DIR%/}
  [[ "$DIR" =~ ^[A-Za-z0-9._+/-]+$ ]] || die "DIR must match [A-Za-z0-9._+/-]+ (it is written into flags and env): $DIR"
}

need_root() { [ "$(id -u)" = 0 ] || die "needs root (network namespaces, veths)"; }

# --- up ------------------------------------------------------------------------------------------

kubeadm_ns() {
  echo "+ kubeadm $*" >>"$DIR/kubeadm.log"
  timeout 120 ip netns exec "$NETNS" "$BIN/kubeadm" "$@" >>"$DIR/kubeadm.log" 2>&1 || {
    tail_log "$DIR/kubeadm.log"
    die "kubeadm $* failed"
  }
}

kubectl_admin() {
  timeout 30 "$KUBECTL" --kubeconfig "$DIR/admin.conf" --cache-dir "$DIR/kube-cache" --request-timeout=20s "$@"
}

# Picks a free N (no netns, no address or route in 10.250.N.0/24) and creates the netns and its
# veth under the global lock, so concurrent runs never collide.
make_netns() {
  mkdir -p "$(dirname "$GLOBAL_LOCK")"
  exec 7>"$GLOBAL_LOCK"
  flock -w 60 7 || die "cannot take $GLOBAL_LOCK within 60s"
  local n used
  used=$( { ip -o -4 addr show; ip -4 route show table all; } 2>/dev/null)
  for n in $(seq 0 253); do
    [ -e "/run/netns/na-k8s-$n" ] && continue
    ip link show "na-k8s-$n" >/dev/null 2>&1 && continue
    grep -qE "(^|[^0-9])10\.25[01]\.$n\." <<<"$used" && continue
    N=$n
    break
  done
  [ -n "${N:-}" ] || die "no free 10.250.N.0/24 (N in 0..253)"
  NETNS=na-k8s-$N
  NS_IP=10.250.$N.1
  HOST_IP=10.250.$N.254
  state_set N "$N"
  state_set NETNS "$NETNS"
  ip netns add "$NETNS"
  state_set HOST_VETH "$NETNS"
  ip link add "$NETNS" type veth peer name eth0 netns "$NETNS"
  ip addr add "$HOST_IP/24" dev "$NETNS"
  ip link set "$NETNS" up
  ip -n "$NETNS" link set lo up
  ip -n "$NETNS" addr add "$NS_IP/24" dev eth0
  ip -n "$NETNS" link set eth0 up
  ip -n "$NETNS" route add default via "$HOST_IP"
  flock -u 7
  exec 7>&-
  log "netns $NETNS: $NS_IP (host side $HOST_IP)"
}

write_configs() {
  cat >"$DIR/kubeadm.yaml" <<EOF
apiVersion: kubeadm.k8s.io/v1beta2
kind: InitConfiguration
bootstrapTokens:
- token: $TOKEN
localAPIEndpoint:
  advertiseAddress: $NS_IP
  bindPort: 6443
nodeRegistration:
  name: $NODE_NAME
  criSocket: /run/containerd/containerd.sock
---
apiVersion: kubeadm.k8s.io/v1beta2
kind: ClusterConfiguration
kubernetesVersion: v1.20.2
clusterName: kubernetes
controlPlaneEndpoint: $NS_IP:6443
certificatesDir: $DIR/pki
etcd:
  external:
    endpoints:
    - http://127.0.0.1:2379
networking:
  dnsDomain: cluster.local
  podSubnet: $POD_SUBNET
  serviceSubnet: $SERVICE_SUBNET
apiServer:
  certSANs:
  - 127.0.0.1
  - $NS_IP
EOF
  if [ -n "$KUBELET_CONFIG" ]; then
    grep -q '^kind: KubeletConfiguration$' "$KUBELET_CONFIG" || die "$KUBELET_CONFIG is no KubeletConfiguration"
    { echo '---'; cat "$KUBELET_CONFIG"; } >>"$DIR/kubeadm.yaml"
  fi
  cp "$HERE/audit-policy.yaml" "$DIR/audit-policy.yaml"
}

# The command line (one argument a line, without the binary) of a static-pod manifest kubeadm
# generated; values are plain (kubeadm quotes none of these), anything quoted is refused.
manifest_args() {
  local f=$DIR/kubeadm-rootfs/etc/kubernetes/manifests/$1.yaml
  [ -f "$f" ] || die "kubeadm made no $f"
  awk '/^  - command:$/ {on = 1; next} on && /^    - / {sub(/^    - /, ""); print; next} on {exit}' "$f" |
    tail -n +2 >"$DIR/$1.args"
  [ -s "$DIR/$1.args" ] || die "no command line in $f"
  if grep -q "^[\"']" "$DIR/$1.args"; then die "quoted argument in $f"; fi
}

# with_overrides FILE --flag=value...: FILE's arguments, each --flag given replaced (or appended),
# into the global array ARGS.
with_overrides() {
  local file=$1 a o found
  shift
  ARGS=()
  while IFS= read -r a; do
    for o in "$@"; do [ "${a%%=*}" = "${o%%=*}" ] && a=$o; done
    ARGS+=("$a")
  done <"$file"
  for o in "$@"; do
    found=0
    for a in "${ARGS[@]}"; do [ "${a%%=*}" = "${o%%=*}" ] && found=1; done
    [ $found = 1 ] || ARGS+=("$o")
  done
  for a in "${ARGS[@]}"; do
    case "$a" in *=/etc/kubernetes*) die "argument still points into /etc/kubernetes: $a" ;; esac
  done
}

etcd_healthy() { ip netns exec "$NETNS" curl -fsS --max-time 2 http://127.0.0.1:2379/health | grep -q '"health":"true"'; }
api_ready() { [ "$(kubectl_admin get --raw /readyz 2>/dev/null)" = ok ]; }
# As the admin, not anonymously: the audit log's system:anonymous entries are then all a test's own.
jws_signed() {
  kubectl_admin get configmap -n kube-public cluster-info -o json | grep -q "\"jws-kubeconfig-${TOKEN%%.*}\""
}
# The controllers a join needs, by the controller manager's own "Started" lines: they start one
# by one in random order, and nodeipam's start alone takes 10s (its first node list polls after
# 10s), so the signer's JWS alone does not prove the CSR approver and signer run.
kcm_started() {
  local c
  for c in "$@"; do grep -q "Started \"$c\"" "$DIR/kube-controller-manager.log" || return 1; done
}
node_gone() { ! kubectl_admin get node "$NODE_NAME" >/dev/null 2>&1; }

up_failed() {
  local rc=$?
  trap - EXIT HUP INT TERM
  [ "$rc" = 0 ] && return 0
  log "up failed (exit $rc): tearing down what it started; logs stay in $DIR"
  down_locked || true
  exit "$rc"
}

cmd_up() {
  local owner="" a
  set_dir "${1:-}"
  shift || true
  TOKEN=""
  KUBELET_CONFIG=""
  while [ $# -gt 0 ]; do
    case "$1" in
      --owner-pid) owner=${2:?--owner-pid needs a PID}; shift 2 ;;
      --kubelet-config) KUBELET_CONFIG=${2:?--kubelet-config needs a FILE}; shift 2 ;;
      --token) TOKEN=${2:?--token needs ID.SECRET}; shift 2 ;;
      *) die "unknown argument to up: $1" ;;
    esac
  done
  need_root
  if [ -n "$TOKEN" ] && ! [[ "$TOKEN" =~ ^[a-z0-9]{6}\.[a-z0-9]{16}$ ]]; then
    die "--token must match [a-z0-9]{6}.[a-z0-9]{16}"
  fi
  BIN=$(bash "$HERE/build.sh" --print) ||
    die "the Kubernetes components are not built: run  bash $HERE/build.sh  (as root; ~20 min cold)"
  for a in etcd curl openssl "$KUBECTL" ip setsid flock timeout; do
    command -v "$a" >/dev/null || die "$a is missing"
  done
  mkdir -p "$DIR"
  lock_dir
  # A previous cluster in DIR: refuse while it runs, otherwise clear its leftovers.
  if [ -f "$DIR/pids" ]; then
    local name pid start
    while read -r name pid start; do
      [ "$name" = supervisor ] && continue
      alive "$pid" "$start" && die "a cluster is already up in $DIR ($name pid $pid): run down first"
    done <"$DIR/pids"
  fi
  down_locked
  rm -rf "${DIR:?}/pki" "$DIR/kubeadm-rootfs"
  rm -f "$DIR"/{admin.conf,controller-manager.conf,ca.crt,ca.pin,endpoint,token,env,pids,state} \
    "$DIR"/{etcd,kube-apiserver,kube-controller-manager,kubeadm,supervisor}.log "$DIR"/*.args \
    "$DIR"/{audit.log,audit-policy.yaml,kubeadm.yaml}
  trap up_failed EXIT
  # bash skips the EXIT trap when a signal kills it: turn the usual ones into an exit.
  trap 'exit 129' HUP
  trap 'exit 130' INT
  trap 'exit 143' TERM

  if [ -n "$owner" ]; then
    local owner_start
    owner_start=$(proc_stat "$owner")
    [ -n "$owner_start" ] || die "--owner-pid $owner is not running"
    setsid bash "$SELF" __supervise "$DIR" "$owner" "${owner_start#* }" </dev/null >>"$DIR/supervisor.log" 2>&1 8>&- &
    record_pid supervisor "$!"
    disown "$!"
    log "supervisor pid $! will run down once pid $owner exits"
  fi

  make_netns
  [ -n "$TOKEN" ] || TOKEN=$("$BIN/kubeadm" token generate)
  write_configs

  # Certificates, kubeconfigs and the manifests the components' flags are taken from.
  kubeadm_ns init phase certs all --config "$DIR/kubeadm.yaml"
  kubeadm_ns init phase kubeconfig admin --config "$DIR/kubeadm.yaml" --kubeconfig-dir "$DIR"
  kubeadm_ns init phase kubeconfig controller-manager --config "$DIR/kubeadm.yaml" --kubeconfig-dir "$DIR"
  mkdir -p "$DIR/kubeadm-rootfs"
  cp "$DIR/kubeadm.yaml" "$DIR/kubeadm-rootfs/kubeadm.yaml"
  kubeadm_ns init phase control-plane apiserver --config /kubeadm.yaml --rootfs "$DIR/kubeadm-rootfs"
  kubeadm_ns init phase control-plane controller-manager --config /kubeadm.yaml --rootfs "$DIR/kubeadm-rootfs"
  manifest_args kube-apiserver
  manifest_args kube-controller-manager
  log "kubeadm: certificates, kubeconfigs, manifests"

  start_in_netns etcd etcd --name=default --data-dir="$DIR/etcd" \
    --listen-client-urls=http://127.0.0.1:2379 --advertise-client-urls=http://127.0.0.1:2379 \
    --listen-peer-urls=http://127.0.0.1:2380 --initial-advertise-peer-urls=http://127.0.0.1:2380 \
    --initial-cluster=default=http://127.0.0.1:2380 --initial-cluster-state=new
  wait_until "etcd /health" 30 "$DIR/etcd.log" etcd_healthy
  log "etcd healthy (pid $(pid_of etcd))"

  with_overrides "$DIR/kube-apiserver.args" --bind-address=0.0.0.0 \
    --audit-policy-file="$DIR/audit-policy.yaml" --audit-log-path="$DIR/audit.log" \
    --audit-log-format=json --audit-log-mode=blocking
  start_in_netns kube-apiserver "$BIN/kube-apiserver" "${ARGS[@]}"
  wait_until "kube-apiserver /readyz" 90 "$DIR/kube-apiserver.log" api_ready
  log "kube-apiserver ready at https://$NS_IP:6443 (pid $(pid_of kube-apiserver))"

  # The controller manager starts now: its informers (so every controller) start only after its
  # slowest controller, nodeipam, which always spends 10s before its first node list; the
  # upload-config phases run meanwhile.
  with_overrides "$DIR/kube-controller-manager.args" --kubeconfig="$DIR/controller-manager.conf" \
    --authentication-kubeconfig="$DIR/controller-manager.conf" \
    --authorization-kubeconfig="$DIR/controller-manager.conf" --leader-elect=false \
    --flex-volume-plugin-dir="$DIR/flexvolume"
  start_in_netns kube-controller-manager "$BIN/kube-controller-manager" "${ARGS[@]}"
  kubeadm_ns init phase upload-config kubeadm --config "$DIR/kubeadm.yaml" --kubeconfig "$DIR/admin.conf"
  # upload-config kubelet ends by annotating the control-plane Node's CRI socket and waits (2 min)
  # for that Node (with its hostname label): there is no control-plane kubelet, so a bare Node
  # stands in for the phase and is deleted right after, well before the controller manager's
  # informers start.
  printf 'apiVersion: v1\nkind: Node\nmetadata:\n  name: %s\n  labels:\n    kubernetes.io/hostname: %s\n' "$NODE_NAME" "$NODE_NAME" |
    kubectl_admin create -f - >>"$DIR/kubeadm.log" 2>&1 || { tail_log "$DIR/kubeadm.log"; die "cannot create Node $NODE_NAME"; }
  kubeadm_ns init phase upload-config kubelet --config "$DIR/kubeadm.yaml" --kubeconfig "$DIR/admin.conf"
  kubectl_admin delete node "$NODE_NAME" --wait=true >>"$DIR/kubeadm.log" 2>&1 || { tail_log "$DIR/kubeadm.log"; die "cannot delete Node $NODE_NAME"; }
  wait_until "Node $NODE_NAME to be gone" 30 "$DIR/kubeadm.log" node_gone
  log "kubeadm: kubeadm-config, kubelet-config-1.20"

  kubeadm_ns init phase bootstrap-token --config "$DIR/kubeadm.yaml" --kubeconfig "$DIR/admin.conf" --skip-token-print
  wait_until "the bootstrap signer to add jws-kubeconfig-${TOKEN%%.*} to kube-public/cluster-info" 60 \
    "$DIR/kube-controller-manager.log" jws_signed
  log "kubeadm: bootstrap token ${TOKEN%%.*} signed into cluster-info"
  wait_until "the controller manager's certificate and token controllers" 60 "$DIR/kube-controller-manager.log" \
    kcm_started csrapproving csrsigning csrcleaner bootstrapsigner tokencleaner
  log "kube-controller-manager: csrapproving, csrsigning, csrcleaner, bootstrapsigner, tokencleaner started (pid $(pid_of kube-controller-manager))"

  local version pin
  version=$(kubectl_admin get --raw /version | sed -n 's/.*"gitVersion": *"\([^"]*\)".*/\1/p')
  [ -n "$version" ] || die "cannot read the apiserver's /version"
  pin=sha256:$(openssl x509 -in "$DIR/pki/ca.crt" -noout -pubkey | openssl pkey -pubin -outform DER | sha256sum | cut -d' ' -f1)
  cp "$DIR/pki/ca.crt" "$DIR/ca.crt"
  echo "$pin" >"$DIR/ca.pin"
  echo "$NS_IP:6443" >"$DIR/endpoint"
  (umask 077 && echo "$TOKEN" >"$DIR/token")
  {
    echo "NETNS=$NETNS"
    echo "NS_IP=$NS_IP"
    echo "HOST_IP=$HOST_IP"
    echo "ENDPOINT=$NS_IP:6443"
    echo "CA_PIN=$pin"
    echo "TOKEN=$TOKEN"
    echo "VERSION=$version"
    echo "PKI_DIR=$DIR/pki"
    echo "AUDIT_LOG=$DIR/audit.log"
    echo "CA_CERT=$DIR/ca.crt"
    echo "ADMIN_KUBECONFIG=$DIR/admin.conf"
    echo "BIN_DIR=$BIN"
    echo "POD_SUBNET=$POD_SUBNET"
    echo "SERVICE_SUBNET=$SERVICE_SUBNET"
    echo "CLUSTER_DNS=$CLUSTER_DNS"
    echo "ETCD_PID=$(pid_of etcd)"
    echo "KUBE_APISERVER_PID=$(pid_of kube-apiserver)"
    echo "KUBE_CONTROLLER_MANAGER_PID=$(pid_of kube-controller-manager)"
    [ -z "$owner" ] || echo "SUPERVISOR_PID=$(pid_of supervisor)"
  } >"$DIR/env.tmp"
  mv "$DIR/env.tmp" "$DIR/env"
  trap - EXIT HUP INT TERM
  log "up: Kubernetes $version at https://$NS_IP:6443 in netns $NETNS, DIR $DIR (took $(( ($(date +%s%N) - T0) / 1000000 )) ms)"
}

# --- down ----------------------------------------------------------------------------------------

# TERM, up to 20s for it to exit, then KILL and up to 5s more.
stop_process() {
  local name=$1 pid=$2 start=$3 deadline
  kill -TERM "$pid" 2>/dev/null || true
  deadline=$(( $(date +%s%N) + 20000000000 ))
  while alive "$pid" "$start" && [ "$(date +%s%N)" -lt "$deadline" ]; do sleep 0.05; done
  alive "$pid" "$start" || return 0
  log "$name (pid $pid) ignored TERM for 20s: KILL"
  kill -KILL "$pid" 2>/dev/null || true
  deadline=$(( $(date +%s%N) + 5000000000 ))
  while alive "$pid" "$start" && [ "$(date +%s%N)" -lt "$deadline" ]; do sleep 0.05; done
  if alive "$pid" "$start"; then log "WARNING: $name (pid $pid) survives KILL"; fi
}

down_locked() {
  local lines=() name pid start i stopped=0
  if [ -f "$DIR/pids" ]; then
    mapfile -t lines <"$DIR/pids"
  fi
  # Last started first (controller manager, apiserver, etcd, then the supervisor): an apiserver
  # whose etcd vanished first takes long to stop.
  for ((i = ${#lines[@]} - 1; i >= 0; i--)); do
    read -r name pid start <<<"${lines[$i]}"
    [ "$pid" = "$$" ] && continue  # the supervisor running this down
    alive "$pid" "$start" || continue
    stop_process "$name" "$pid" "$start"
    stopped=$((stopped + 1))
  done
  local l
  for l in "$DIR"/links/*; do
    [ -f "$l" ] || continue
    unlink_locked "$(basename "$l")"
  done
  local netns veth
  netns=$(state_get NETNS)
  veth=$(state_get HOST_VETH)
  if [ -n "$veth" ] && ip link show "$veth" >/dev/null 2>&1; then ip link del "$veth" || true; fi
  if [ -n "$netns" ] && [ -e "/run/netns/$netns" ]; then
    local others
    others=$(ip netns pids "$netns" 2>/dev/null | tr '\n' ' ')
    [ -z "$others" ] || log "WARNING: processes not started by cluster.sh still in netns $netns: $others"
    ip netns del "$netns" || true
  fi
  rm -rf "${DIR:?}/etcd" "$DIR/links" "$DIR/kube-cache"
  rm -f "$DIR/pids" "$DIR/env" "$DIR/state"
  if [ "$stopped" != 0 ] || [ -n "$netns" ]; then
    log "down: stopped $stopped process(es), removed netns ${netns:-(none)}"
  fi
}

cmd_down() {
  set_dir "${1:-}"
  need_root
  [ -d "$DIR" ] || return 0
  lock_dir
  down_locked
}

# Internal: run by `up --owner-pid`, detached. Polls the owner's liveness (it is no child of ours,
# so it cannot be waited for); once it is gone, takes the DIR lock (so a running up finishes or
# fails first) and runs down.
cmd_supervise() {
  set_dir "$1"
  local owner=$2 start=$3
  log "supervising pid $owner"
  while alive "$owner" "$start"; do sleep 0.5; done
  log "pid $owner exited: down"
  lock_dir 900
  down_locked
}

# --- link ----------------------------------------------------------------------------------------

valid_name() {
  [[ "$1" =~ ^[A-Za-z0-9][A-Za-z0-9_.-]{0,40}$ ]] || die "NAME must match [A-Za-z0-9][A-Za-z0-9_.-]{0,40}: $1"
}

cmd_link() {
  set_dir "${1:-}"
  local name=${2:-} k="" i netns n gw ip
  [ -n "$name" ] || die "usage: link DIR NAME"
  valid_name "$name"
  need_root
  [ -d "$DIR" ] || die "no cluster in $DIR"
  lock_dir
  netns=$(state_get NETNS)
  n=$(state_get N)
  [ -n "$netns" ] && [ -e "/run/netns/$netns" ] || die "no cluster netns recorded in $DIR/state: is it up?"
  [ ! -e "/run/netns/$name" ] || die "network namespace $name exists already"
  mkdir -p "$DIR/links"
  for i in $(seq 0 63); do
    grep -qx "$i" "$DIR"/links/* 2>/dev/null && continue
    k=$i
    break
  done
  [ -n "$k" ] || die "all 64 links of $DIR are in use"
  echo "$k" >"$DIR/links/$name"
  gw=10.251.$n.$((4 * k + 1))
  ip=10.251.$n.$((4 * k + 2))
  ip netns add "$name"
  ip -n "$netns" link add "lnk$k" type veth peer name eth0 netns "$name"
  ip -n "$netns" addr add "$gw/30" dev "lnk$k"
  ip -n "$netns" link set "lnk$k" up
  ip -n "$name" link set lo up
  ip -n "$name" addr add "$ip/30" dev eth0
  ip -n "$name" link set eth0 up
  ip -n "$name" route add default via "$gw"
  log "link $name: $ip via $gw (lnk$k in $netns)"
  echo "GUEST_IP=$ip GATEWAY=$gw"
}

unlink_locked() {
  local name=$1 k netns
  [ -f "$DIR/links/$name" ] || die "$name is not a link of $DIR"
  k=$(cat "$DIR/links/$name")
  netns=$(state_get NETNS)
  if [ -n "$netns" ] && ip -n "$netns" link show "lnk$k" >/dev/null 2>&1; then ip -n "$netns" link del "lnk$k" || true; fi
  if [ -e "/run/netns/$name" ]; then
    local others
    others=$(ip netns pids "$name" 2>/dev/null | tr '\n' ' ')
    [ -z "$others" ] || log "WARNING: processes still in netns $name: $others"
    ip netns del "$name" || true
  fi
  rm -f "$DIR/links/$name"
  log "unlinked $name"
}

cmd_unlink() {
  set_dir "${1:-}"
  [ -n "${2:-}" ] || die "usage: unlink DIR NAME"
  valid_name "$2"
  need_root
  lock_dir
  unlink_locked "$2"
}

usage() { sed -n '2,/^set -euo/p' "$SELF" | sed '$d; s/^# \{0,1\}//' >&2; exit 2; }

case "${1:-}" in
  up) shift; cmd_up "$@" ;;
  down) shift; cmd_down "$@" ;;
  link) shift; cmd_link "$@" ;;
  unlink) shift; cmd_unlink "$@" ;;
  __supervise) shift; cmd_supervise "$@" ;;
  *) usage ;;
esac
