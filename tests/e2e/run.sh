#!/usr/bin/env bash
# node-attach end-to-end test: a Debian bookworm guest booted with systemd-nspawn (systemd as
# PID 1), each userdata form delivered through cloud-init's NoCloud datasource, running the real
# one-line install (`curl … | bash -s -- …`) against the test control plane over HTTPS, with
# containerd (or docker) really starting with the configuration node-attach wrote; then
# `systemctl start node-attach-reset` inside the guest.
#
# No kubelet binary is packaged in these registries: the guest gets the kubelet stand-in
# (tests/control-plane/src/bin/kubelet-standin.rs) as /usr/bin/kubelet; it registers the Node
# with the certificate node-attach bootstrapped and records its command line.
#
# Needs root (it skips, loudly, otherwise). Every stage is bounded in time and prints its
# duration; cleanup stops exactly what this run started (processes by PID, the container by
# name, its netns and cgroups). Knobs: E2E_CACHE (image cache, default
# /var/cache/node-attach-e2e), E2E_FORMS, E2E_MIRROR, E2E_KEEP=1 (keep the run directory).
set -Eeuo pipefail

REPO=$(cd "$(dirname "$0")/../.." && pwd)
if [ "$(id -u)" != 0 ]; then
  echo "######## SKIPPED: the end-to-end test needs root (systemd-nspawn); CI runs as root ########"
  exit 0
fi

CACHE=${E2E_CACHE:-/var/cache/node-attach-e2e}
# Each userdata form; a .yaml form is the cloud-config variant, delivered as MIME multi-part
# (the e2e prelude as a shell part, then the cloud-config).
FORMS=${E2E_FORMS:-manual-add scale-out autoscaler manual-add.yaml}
BIN=$REPO/target/x86_64-unknown-linux-musl/release/node-attach
CP_BIN=$REPO/target/debug/test-control-plane
STANDIN=$REPO/target/debug/kubelet-standin
TOKEN=e2eabc.0123456789e2e0ab
TOKEN_SECRET=0123456789e2e0ab
OPENAPI=e2e-openapi-token-000001
RECIPE=3
T0=$(date +%s%N)
PASS=0
FAIL=0

elapsed() { echo "$(( ($(date +%s%N) - T0) / 1000000 ))"; }
log() { printf '[e2e %7.1fs] %s\n' "$(echo "$(elapsed) / 1000" | bc -l)" "$*"; }
STAGE_T=0
stage() { STAGE_T=$(date +%s%N); log "== $*"; }
stage_done() { log "   done in $(( ($(date +%s%N) - STAGE_T) / 1000000 )) ms ${1:-}"; }
check() {
  local desc=$1; shift
  if "$@" >/dev/null 2>&1; then PASS=$((PASS + 1)); log "ok     $desc"; else FAIL=$((FAIL + 1)); log "FAILED $desc"; fi
}
# A check of a condition that settles (a unit restarting): polled until it holds or DEADLINE s pass.
check_within() {
  local deadline=$1 desc=$2 start; shift 2
  start=$(date +%s)
  until "$@" >/dev/null 2>&1; do
    if [ $(( $(date +%s) - start )) -ge "$deadline" ]; then FAIL=$((FAIL + 1)); log "FAILED $desc (within ${deadline}s)"; return; fi
    sleep 0.2
  done
  PASS=$((PASS + 1)); log "ok     $desc"
}
die() { log "error: $*"; exit 1; }

for f in "$BIN" "$CP_BIN" "$STANDIN"; do
  [ -x "$f" ] || die "$f is missing: run make static build (make e2e does)"
done

# ------------------------------------------------------------------ host tools
stage "host tools"
need=()
command -v systemd-nspawn >/dev/null || need+=(systemd-container)
command -v mmdebstrap >/dev/null || need+=(mmdebstrap)
command -v zstd >/dev/null || need+=(zstd)
command -v bc >/dev/null || need+=(bc)
command -v kubectl >/dev/null || die "kubectl is needed to read the test control plane"
if [ "${#need[@]}" -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
stage_done

# ------------------------------------------------------------------ image cache
mkdir -p "$CACHE"
MIRROR=${E2E_MIRROR:-$(sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -n1)}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
PKGS=(systemd systemd-sysv dbus cloud-init iproute2 iptables ca-certificates curl containerd runc docker.io util-linux procps)
KEY=$(printf '%s\n' "$RECIPE" bookworm "$MIRROR" "${PKGS[@]}" | sha256sum | cut -c1-12)
TARBALL=$CACHE/rootfs-$KEY.tar.zst
TREE=$CACHE/tree-$KEY

customize() {
  local t=$1
  mkdir -p "$t/etc/cloud/cloud.cfg.d"
  cat > "$t/etc/cloud/cloud.cfg.d/99-e2e.cfg" <<'CFG'
datasource_list: [ NoCloud, None ]
network: {config: disabled}
locale: false
ssh_genkeytypes: []
CFG
  # nspawn mounts the cgroup v1 controllers read-only; the runtime needs them writable.
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
  mkdir -p "$t/etc/systemd/system/sysinit.target.wants"
  ln -sf /etc/systemd/system/e2e-cgroup-rw.service "$t/etc/systemd/system/sysinit.target.wants/e2e-cgroup-rw.service"
  # docker starts only when a join asks for it.
  rm -f "$t/etc/systemd/system/multi-user.target.wants/docker.service" "$t/etc/systemd/system/sockets.target.wants/docker.socket"
}

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
flock -u 9
exec 9>&-
stage_done "$(du -sh "$TARBALL" | cut -f1) image"

# ------------------------------------------------------------------ the .deb
stage ".deb package"
rm -rf "$CACHE/deb-check"
bash "$REPO/packaging/deb/build.sh" "$BIN" "$CACHE/deb-check" > "$CACHE/deb-check.log" 2>&1 || { cat "$CACHE/deb-check.log"; die "building the .deb failed"; }
DEB=$(ls "$CACHE"/deb-check/node-attach_*.deb)
check ".deb holds the binary" sh -c "dpkg-deb --contents '$DEB' | grep -q ' ./usr/bin/node-attach$'"
check ".deb holds the units" sh -c "dpkg-deb --contents '$DEB' | grep -q 'lib/systemd/system/node-attach-reset.service'"
check ".deb holds the default config, 0600" sh -c "dpkg-deb --contents '$DEB' | grep -q '^-rw------- .* ./etc/node-attach/config.yaml$'"
check ".deb units run /usr/bin/node-attach" sh -c "dpkg-deb --fsys-tarfile '$DEB' | tar -xO ./lib/systemd/system/node-attach-reset.service | grep -q 'ExecStart=/usr/bin/node-attach reset'"
stage_done "$(basename "$DEB")"

# ------------------------------------------------------------------ one form
CP_PID=""; NSPAWN_PID=""; NETNS=""; RUN=""; CG_DIRS=()
cleanup_form() {
  if [ -n "$NSPAWN_PID" ] && kill -0 "$NSPAWN_PID" 2>/dev/null; then
    kill -TERM "$NSPAWN_PID" 2>/dev/null || true
    for _ in $(seq 1 300); do kill -0 "$NSPAWN_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$NSPAWN_PID" 2>/dev/null || true
    wait "$NSPAWN_PID" 2>/dev/null || true
  fi
  NSPAWN_PID=""
  if [ -n "$CP_PID" ]; then kill -TERM "$CP_PID" 2>/dev/null || true; wait "$CP_PID" 2>/dev/null || true; fi
  CP_PID=""
  if [ -n "$NETNS" ]; then ip netns del "$NETNS" 2>/dev/null || true; fi
  NETNS=""
  for ((i = ${#CG_DIRS[@]} - 1; i >= 0; i--)); do
    find "${CG_DIRS[$i]}" -depth -type d -exec rmdir {} \; 2>/dev/null || true
  done
  CG_DIRS=()
  if [ -n "$RUN" ] && [ "${E2E_KEEP:-0}" != 1 ]; then rm -rf --one-file-system "$RUN"; fi
  RUN=""
}
trap cleanup_form EXIT

run_form() {
  local form=$1 id host_ip guest_ip octet name kube_version node values_flags=""
  id=$(( ($$ + RANDOM) % 10000 ))
  name="na-e2e-$id"
  RUN=$(mktemp -d "$CACHE/run.XXXXXX")
  stage "form $form: network, control plane, seed"
  # Concurrent runs (a developer's and CI's) must not pick the same /30.
  exec 8>"$CACHE/.net.lock"
  flock -w 60 8 || die "cannot lock $CACHE/.net.lock"
  octet=""
  for o in $(seq 200 254); do
    ip -o -4 addr show | grep -qF " 10.213.$o." && continue
    octet=$o; break
  done
  [ -n "$octet" ] || die "no free /30 in 10.213.200-254"
  host_ip=10.213.$octet.1; guest_ip=10.213.$octet.2
  NETNS="na-e2e-$id"
  ip netns add "$NETNS"
  ip link add "nae$id" type veth peer name eth0 netns "$NETNS"
  ip addr add "$host_ip/30" dev "nae$id"
  ip link set "nae$id" up
  ip -n "$NETNS" link set lo up
  ip -n "$NETNS" addr add "$guest_ip/30" dev eth0
  ip -n "$NETNS" link set eth0 up
  ip -n "$NETNS" route add default via "$host_ip"
  flock -u 8
  exec 8>&-

  kube_version=v1.31.2
  case "$form" in scale-out) kube_version=v1.23.17 ;; esac  # docker without cri-dockerd: dockershim era
  local base="https://$host_ip:6443"
  mkdir -p "$RUN/www" "$RUN/seed" "$RUN/var-lib-containerd" "$RUN/var-lib-docker"
  sed "s#@BASE_URL@#$base/files#g" "$REPO/packaging/install.sh" > "$RUN/www/attach.sh"
  cp "$BIN" "$RUN/www/node-attach-linux-amd64"
  (cd "$RUN/www" && sha256sum node-attach-linux-amd64 > node-attach-linux-amd64.sha256)
  cp "$STANDIN" "$RUN/www/kubelet"
  cat > "$RUN/values.json" <<JSON
{"apiVersion": "node-attach.io/v1", "kind": "ClusterValues",
 "apiServerEndpoints": ["@ENDPOINT@"], "bootstrapToken": "$TOKEN", "caCertHashes": ["@CA_PIN@"],
 "clusterDNS": ["10.96.0.10"], "labels": {"workload_type": "cpu"}, "taints": ["e2e=true:NoSchedule"]}
JSON
  "$CP_BIN" --state-dir "$RUN/cp" --listen "$host_ip:6443" --advertise "$host_ip" --token "$TOKEN" \
    --values "$OPENAPI=$RUN/values.json" --files "$RUN/www" --kubernetes-version "$kube_version" \
    > "$RUN/cp.log" 2>&1 &
  CP_PID=$!
  for _ in $(seq 1 100); do [ -s "$RUN/cp/ca.pin" ] && break; sleep 0.1; done
  [ -s "$RUN/cp/ca.pin" ] || { cat "$RUN/cp.log"; die "the test control plane did not start"; }
  local pin; pin=$(cat "$RUN/cp/ca.pin")

  case "$form" in
    manual-add.yaml) node=e2e-manual-cc; values_flags="--values-url $base/v1/values/{token} --node-name $node --node-wait-timeout 90s" ;;
    manual-add) node=e2e-manual; values_flags="--values-url $base/v1/values/{token} --node-name $node --node-wait-timeout 90s" ;;
    scale-out) node=e2e-scale-out; values_flags="--node-name $node --node-wait-timeout 90s" ;;
    autoscaler) node=e2e-pool; values_flags="--values-url $base/v1/values/{token} --node-name $node --provider-id cn-e2e.i-e2e0001 --node-wait-timeout 90s" ;;
  esac
  cp "$RUN/cp/ca.crt" "$RUN/seed/ca.crt"
  printf 'instance-id: iid-%s\nlocal-hostname: %s\n' "$name" "$name" > "$RUN/seed/meta-data"
  local render=(-e "s#@BASE_URL@#$base/files#g" -e "s#@OPENAPI_TOKEN@#$OPENAPI#g" -e "s#@TOKEN@#$TOKEN#g"
    -e "s#@ENDPOINT@#$host_ip:6443#g" -e "s#@CLUSTER_DNS@#10.96.0.10#g" -e "s#@CA_PIN@#$pin#g"
    -e "s#@DOCKER_VERSION@#20.10.24#g" -e "s#@LABELS@#k8s.io/cluster-autoscaler=true,workload_type=cpu#g"
    -e "s#@EXTRA_FLAGS@#$values_flags#g")
  prelude() {
    echo '#!/bin/bash'
    echo '# e2e prelude: trust the test CA, install the kubelet stand-in.'
    echo 'set -euo pipefail'
    echo 'install -m 0644 /var/lib/cloud/seed/nocloud/ca.crt /usr/local/share/ca-certificates/node-attach-e2e.crt'
    echo 'update-ca-certificates >/dev/null'
    echo "echo $kube_version > /etc/kubelet-standin.version"
    echo "curl -fsS --retry 5 --retry-connrefused $base/files/kubelet -o /usr/bin/kubelet && chmod 0755 /usr/bin/kubelet"
  }
  case "$form" in
    *.yaml)
      {
        printf 'Content-Type: multipart/mixed; boundary="==E2E=="\nMIME-Version: 1.0\n\n'
        printf -- '--==E2E==\nContent-Type: text/x-shellscript; charset="us-ascii"\nMIME-Version: 1.0\n\n'
        prelude
        printf -- '\n--==E2E==\nContent-Type: text/cloud-config; charset="us-ascii"\nMIME-Version: 1.0\n\n'
        sed "${render[@]}" "$REPO/packaging/userdata/$form"
        printf -- '\n--==E2E==--\n'
      } > "$RUN/seed/user-data" ;;
    *)
      { prelude; sed -e '1d' "${render[@]}" "$REPO/packaging/userdata/$form.sh"; } > "$RUN/seed/user-data" ;;
  esac
  stage_done "host $host_ip, guest $guest_ip, control plane pid $CP_PID ($kube_version)"

  stage "form $form: boot (systemd-nspawn, systemd as PID 1)"
  if [ "$(stat -fc %T /sys/fs/cgroup)" = tmpfs ]; then
    while IFS=: read -r _ ctrls path; do
      local mnt
      case "$ctrls" in
        "") mnt=/sys/fs/cgroup/unified ;;
        name=systemd) mnt=/sys/fs/cgroup/systemd ;;
        name=*) continue ;;
        *) mnt=/sys/fs/cgroup/$ctrls ;;
      esac
      [ -d "$mnt" ] || continue
      local parent="$mnt${path%/}" d
      d="$parent/$name"
      mkdir "$d" 2>/dev/null || continue
      CG_DIRS+=("$d")
      if [ -f "$d/cpuset.cpus" ]; then cat "$parent/cpuset.cpus" > "$d/cpuset.cpus"; cat "$parent/cpuset.mems" > "$d/cpuset.mems"; fi
    done < /proc/self/cgroup
  fi
  (
    for d in "${CG_DIRS[@]}"; do echo "$BASHPID" > "$d/cgroup.procs"; done
    exec systemd-nspawn --register=no --keep-unit --quiet --link-journal=no -D "$TREE" -M "$name" \
      --boot --console=read-only --volatile=overlay --bind-ro="$RUN/seed:/var/lib/cloud/seed/nocloud" \
      --private-network --network-namespace-path="/run/netns/$NETNS" \
      --capability=all --system-call-filter='@keyring bpf' \
      --bind="$RUN/var-lib-containerd:/var/lib/containerd" --bind="$RUN/var-lib-docker:/var/lib/docker" \
      < /dev/null > "$RUN/nspawn.log" 2>&1
  ) &
  NSPAWN_PID=$!
  local leader=""
  for _ in $(seq 1 600); do
    kill -0 "$NSPAWN_PID" 2>/dev/null || { cat "$RUN/nspawn.log"; die "systemd-nspawn exited early"; }
    leader=$(pgrep -P "$NSPAWN_PID" | head -n 1 || true)
    [ -n "$leader" ] && [ "$(cat "/proc/$leader/comm" 2>/dev/null)" = systemd ] && break
    leader=""; sleep 0.1
  done
  [ -n "$leader" ] || die "the guest's systemd did not start within 60s"
  local groot="/proc/$leader/root"
  guest() { timeout 60 nsenter -t "$leader" -a -- "$@"; }
  stage_done "guest PID 1 is host pid $leader"

  stage "form $form: cloud-init runs the one-line install and node-attach join"
  for _ in $(seq 1 720); do
    nsenter -t "$leader" -a -- test -f /var/lib/cloud/instance/boot-finished 2>/dev/null && break
    kill -0 "$leader" 2>/dev/null || break
    sleep 0.25
  done
  stage_done "$(grep -h 'joined\|already joined' "$groot/var/log/node-attach/init.log" 2>/dev/null | tail -n 1)"

  stage "form $form: checks"
  export HOME=$RUN KUBECONFIG=$RUN/cp/admin.conf
  check "cloud-init finished without errors" grep -q '"errors": \[\]' "$groot/var/lib/cloud/data/result.json"
  check "join finished (state.json written)" test -f "$groot/var/lib/node-attach/state.json"
  check "install log at /var/log/node-attach/init.log" grep -q 'running: node-attach join' "$groot/var/log/node-attach/init.log"
  check "install log also at /var/log/acs/init.log" test -s "$groot/var/log/acs/init.log"
  if [ "$form" = scale-out ]; then
    check_within 30 "docker is active" guest systemctl -q is-active docker
    check "docker uses the systemd cgroup driver" grep -q 'native.cgroupdriver=systemd' "$groot/etc/docker/daemon.json"
    check "docker reports the systemd cgroup driver" sh -c "nsenter -t $leader -a -- docker info 2>/dev/null | grep -q 'Cgroup Driver: systemd'"
  else
    check_within 30 "containerd is active" guest systemctl -q is-active containerd
    check "containerd config has SystemdCgroup = true" grep -q 'SystemdCgroup = true' "$groot/etc/containerd/config.toml"
    check "containerd config sets the pause image" grep -q 'sandbox_image = "registry.k8s.io/pause:3.10"' "$groot/etc/containerd/config.toml"
    check "containerd runs that configuration" sh -c "nsenter -t $leader -a -- containerd config dump | grep -q 'SystemdCgroup = true'"
    check "containerd's CRI plugin is ok" sh -c "nsenter -t $leader -a -- ctr plugins ls | awk '\$2==\"cri\"{print \$4}' | grep -qx ok"
  fi
  check "kubelet.service is enabled" guest systemctl -q is-enabled kubelet
  check_within 30 "kubelet.service is active" guest systemctl -q is-active kubelet
  check "the kubelet stand-in got node-attach's flags" grep -q -- "--node-ip=$guest_ip" "$groot/var/lib/kubelet-standin/record.json"
  check "Node $node is registered" kubectl get node "$node"
  case "$form" in
    scale-out)
      check "Node $node runs on the flags' values (cluster DNS in its config)" grep -q '10.96.0.10' "$groot/var/lib/kubelet/config.yaml" ;;
    manual-add*)
      check "Node $node has the values' workload_type label" sh -c "kubectl get node $node -o jsonpath='{.metadata.labels.workload_type}' | grep -qx cpu"
      check "Node $node has the values' taint" sh -c "kubectl get node $node -o jsonpath='{.spec.taints[0].key}' | grep -qx e2e" ;;
    autoscaler)
      check "Node $node has the pool's workload_type label" sh -c "kubectl get node $node -o jsonpath='{.metadata.labels.workload_type}' | grep -qx cpu"
      check "Node $node has its providerID" sh -c "kubectl get node $node -o jsonpath='{.spec.providerID}' | grep -qx cn-e2e.i-e2e0001"
      check "the restricted label is reported for the control plane" grep -q 'labels for the control plane to apply.*k8s.io/cluster-autoscaler=true' "$groot/var/log/cloud-init-output.log"
      check "the restricted label was not self-set" sh -c "! kubectl get node $node -o jsonpath='{.metadata.labels}' | grep -q cluster-autoscaler" ;;
  esac
  check "kubelet.conf is 0600" sh -c "[ \$(stat -c %a $groot/etc/kubernetes/kubelet.conf) = 600 ]"
  check "the client certificate pair is 0600" sh -c "[ \$(stat -Lc %a $groot/var/lib/kubelet/pki/kubelet-client-current.pem 2>/dev/null || stat -c %a $groot\$(readlink $groot/var/lib/kubelet/pki/kubelet-client-current.pem)) = 600 ]"
  check "no token secret in the cloud-init logs" sh -c "! grep -q '$TOKEN_SECRET\|$OPENAPI' $groot/var/log/cloud-init-output.log $groot/var/log/cloud-init.log $groot/var/log/node-attach/init.log"
  check "no token secret left on disk in /etc or /var/lib" sh -c "! grep -rqs '$TOKEN_SECRET' $groot/etc $groot/var/lib/kubelet $groot/var/lib/node-attach"

  if [ "$FAIL" != 0 ]; then
    log "--- cloud-init-output.log (tail)"
    tail -n 40 "$groot/var/log/cloud-init-output.log" 2>/dev/null || true
    log "--- guest processes and logs"
    guest ps -ef 2>/dev/null | grep -v '\[' | tail -n 25 || true
    ls -la "$groot/var/log/node-attach" "$groot/var/log/acs" 2>&1 || true
    cat "$groot/var/log/node-attach/init.log" 2>/dev/null | tail -n 30 || true
  fi
  # What join recorded, to check reset against the image (the guest's pre-join state).
  cp "$groot/var/lib/node-attach/journal.jsonl" "$RUN/journal.jsonl" 2>/dev/null || true

  stage "form $form: systemctl start node-attach-reset"
  # A oneshot: systemctl start returns when the reset has run, failing if it failed.
  check "systemctl start node-attach-reset succeeded" guest systemctl start node-attach-reset
  stage_done
  check "the reset unit logged its run" sh -c "nsenter -t $leader -a -- journalctl -u node-attach-reset --no-pager | grep -q 'reset.*done'"
  check "Node $node is gone from the API" sh -c "! kubectl get node $node"
  check "the kubelet is stopped" sh -c "! nsenter -t $leader -a -- systemctl -q is-active kubelet"
  check "the journal is gone" test ! -e "$groot/var/lib/node-attach"
  python3 - "$RUN/journal.jsonl" "$groot" "$TREE" > "$RUN/reset-check.txt" 2>&1 <<'PY' || true
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
  check "every path join touched is back to the image's state" grep -qx 'tree restored' "$RUN/reset-check.txt"
  [ "$FAIL" = 0 ] || log "reset check: $(cat "$RUN/reset-check.txt")"

  stage "form $form: stop"
  cleanup_form
  stage_done
}

for form in $FORMS; do
  run_form "$form"
done
log "$PASS passed, $FAIL failed"
echo "$PASS passed, $FAIL failed"
[ "$FAIL" = 0 ]
