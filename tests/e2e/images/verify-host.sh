#!/usr/bin/env bash
# Checks build.sh's images on this host with private runtimes, leaving the host's own
# containerd/docker state, iptables, links and ip_forward alone:
#   - a containerd (Debian's) with its own config, root, state and socket, no CRI plugin:
#     `ctr -n k8s.io images import` of both archives (digests as in images.env), busybox echo,
#     /pause exits 0 within 1 s of SIGTERM and of SIGINT, and reaps orphans as PID 1;
#   - unless --no-docker: Debian's docker.io unpacked into the temp dir (`apt-get download`,
#     not installed), its dockerd on that containerd with --iptables=false --ip-masq=false
#     --ip-forward=false --bridge=none: `docker load` of both, IDs, busybox echo, docker stop.
# Stops what it started by PID; removes its temp dir, and the /run/containerd, /run/docker
# and top-level k8s.io, docker cgroups only if they did not exist before. Needs root.
# usage: verify-host.sh [--no-docker]
set -Eeuo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
DOCKER=1
[ "${1:-}" = --no-docker ] && DOCKER=0
[ "$(id -u)" = 0 ] || { echo "needs root" >&2; exit 1; }
T=$(mktemp -d)
chmod 0755 "$T"
FAIL=0
PIDS=()
PRE=()
for p in /run/containerd /run/docker /sys/fs/cgroup/*/k8s.io /sys/fs/cgroup/*/docker; do [ -e "$p" ] && PRE+=("$p"); done
# shellcheck disable=SC2317  # run by the EXIT trap
cleanup() {
  local i p ns id
  # Containers left by a failed check: killed through our own containerd only.
  for ns in k8s.io moby; do
    for id in $(ctr --address "$T/c.sock" -n "$ns" task ls -q 2>/dev/null); do
      ctr --address "$T/c.sock" -n "$ns" task kill -s SIGKILL "$id" 2>/dev/null || true
      sleep 0.2
      ctr --address "$T/c.sock" -n "$ns" task delete "$id" >/dev/null 2>&1 || true
    done
  done
  for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
    p=${PIDS[i]}
    kill -TERM "$p" 2>/dev/null || continue
    for _ in $(seq 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null || true
  done
  for p in /sys/fs/cgroup/*/k8s.io /sys/fs/cgroup/*/docker /run/containerd /run/docker; do
    [ -e "$p" ] || continue
    [[ " ${PRE[*]} " == *" $p "* ]] && continue
    case $p in /sys/*) rmdir "$p" 2>/dev/null || true ;; *) rm -rf "$p" ;; esac
  done
  rm -rf "$T"
}
trap cleanup EXIT
ms() { echo $(( ($(date +%s%N) - $1) / 1000000 )); }
check() {
  local desc=$1; shift
  if "$@"; then echo "ok     $desc"; else echo "FAILED $desc"; FAIL=1; fi
}
until_ok() { # SECONDS COMMAND...: poll until it succeeds
  local end=$(( $(date +%s) + $1 )); shift
  until "$@" >/dev/null 2>&1; do [ "$(date +%s)" -lt "$end" ] || return 1; sleep 0.02; done
}
host_net() { cat /proc/sys/net/ipv4/ip_forward; ip -o link; (iptables -S; iptables -t nat -S) 2>/dev/null || true; }
host_net > "$T/net.before"

s=$(date +%s%N)
bash "$HERE/build.sh" "$T/img" > "$T/build.log"
echo "build.sh: $(ms "$s") ms"
# shellcheck source=/dev/null
. "$T/img/images.env"

cat > "$T/containerd.toml" <<EOF
version = 2
root = "$T/c/root"
state = "$T/c/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$T/c.sock"
[ttrpc]
  address = "$T/c.sock.ttrpc"
EOF
containerd --config "$T/containerd.toml" > "$T/containerd.log" 2>&1 &
PIDS+=($!)
C=(ctr --address "$T/c.sock" -n k8s.io)
until_ok 10 "${C[@]}" version || { cat "$T/containerd.log"; exit 1; }

s=$(date +%s%N)
check "ctr import pause.tar" "${C[@]}" images import "$T/img/pause.tar"
check "ctr import pod.tar" "${C[@]}" images import "$T/img/pod.tar"
echo "ctr import: $(ms "$s") ms"
for ref in $PAUSE_REFS; do
  check "ctr: $ref is $PAUSE_CTR_MANIFEST" sh -c "${C[*]} images ls | grep -q '^$ref .* $PAUSE_CTR_MANIFEST '"
done
check "ctr: $POD_REF is $POD_CTR_MANIFEST" sh -c "${C[*]} images ls | grep -q '^$POD_REF .* $POD_CTR_MANIFEST '"
check "ctr run: busybox echo hello" sh -c "timeout 30 ${C[*]} run --rm $POD_REF v-echo busybox echo hello | grep -qx hello"

# /pause as PID 1 stops on SIGTERM / SIGINT: ctr run's status is the container's.
for sig in TERM INT; do
  ref=${PAUSE_REFS%% *}
  ( timeout 30 "${C[@]}" run --rm "$ref" "v-$sig" > /dev/null 2>&1; echo $? > "$T/rc-$sig" ) &
  until_ok 10 sh -c "${C[*]} task ls | grep -q '^v-$sig .*RUNNING'"
  s=$(date +%s%N)
  "${C[@]}" task kill -s "SIG$sig" "v-$sig"
  wait $!
  t=$(ms "$s")
  check "pause: SIG$sig -> exit $(cat "$T/rc-$sig") in $t ms (want 0, < 1000)" test "$(cat "$T/rc-$sig")" = 0 -a "$t" -lt 1000
done

# Reaping: /pause (bind-mounted into the busybox image) as PID 1 adopts 3 orphans and reaps them.
tar -xOf "$T/img/pause.tar" --wildcards '*/layer.tar' | tar -xO pause > "$T/pause"
chmod 0755 "$T/pause"
"${C[@]}" run -d --mount "type=bind,src=$T/pause,dst=/pause,options=rbind:ro" "$POD_REF" v-reap /pause > /dev/null
until_ok 10 sh -c "${C[*]} task ls | grep -q '^v-reap .*RUNNING'"
"${C[@]}" task exec --exec-id orphans v-reap sh -c \
  'for i in 1 2 3; do (trap "" HUP TERM INT PIPE; exec sleep 1) >/dev/null 2>&1 </dev/null & done'
ps_in() { "${C[@]}" task exec --exec-id "ps$1" v-reap ps -o ppid,stat,comm; }
check "pause: adopted 3 orphans" test "$(ps_in 1 | grep -c '^ *1 S *sleep')" = 3
sleep 1.5
check "pause: reaped them (no zombie, no sleep left)" test "$(ps_in 2 | grep -c -e ' Z ' -e sleep)" = 0
"${C[@]}" task kill -s SIGTERM v-reap
until_ok 5 sh -c "${C[*]} task ls | grep -q '^v-reap .*STOPPED'"
"${C[@]}" task delete v-reap > /dev/null && "${C[@]}" container rm v-reap

if [ "$DOCKER" = 1 ]; then
  s=$(date +%s%N)
  (cd "$T" && apt-get download -qq -o APT::Sandbox::User=root docker.io) && dpkg-deb -x "$T"/docker.io_*.deb "$T/docker"
  echo "docker.io download+unpack: $(ms "$s") ms ($(dpkg-deb -f "$T"/docker.io_*.deb Version))"
  printf '{"deprecated-key-path": "%s/key.json"}\n' "$T" > "$T/daemon.json"
  "$T/docker/usr/sbin/dockerd" --config-file "$T/daemon.json" --data-root "$T/d/data" --exec-root "$T/d/exec" \
    --pidfile "$T/dockerd.pid" -H "unix://$T/d.sock" --containerd "$T/c.sock" --iptables=false --ip6tables=false \
    --ip-masq=false --ip-forward=false --bridge=none --userland-proxy=false > "$T/dockerd.log" 2>&1 &
  PIDS+=($!)
  D=("$T/docker/usr/bin/docker" -H "unix://$T/d.sock")
  until_ok 30 "${D[@]}" version || { tail "$T/dockerd.log"; exit 1; }
  s=$(date +%s%N)
  check "docker load pause.tar" sh -c "${D[*]} load -i $T/img/pause.tar > /dev/null"
  check "docker load pod.tar" sh -c "${D[*]} load -i $T/img/pod.tar > /dev/null"
  echo "docker load: $(ms "$s") ms"
  for ref in $PAUSE_REFS; do
    check "docker: $ref is $PAUSE_ID" test "$("${D[@]}" image inspect -f '{{.Id}}' "$ref")" = "$PAUSE_ID"
  done
  check "docker: $POD_REF is $POD_ID" test "$("${D[@]}" image inspect -f '{{.Id}}' "$POD_REF")" = "$POD_ID"
  check "docker run: busybox echo hello" sh -c "timeout 30 ${D[*]} run --rm --network none $POD_REF busybox echo hello | grep -qx hello"
  "${D[@]}" run -d --name v-pause --network none "${PAUSE_REFS%% *}" > /dev/null
  s=$(date +%s%N)
  "${D[@]}" stop -t 10 v-pause > /dev/null
  t=$(ms "$s")
  rc=$("${D[@]}" inspect -f '{{.State.ExitCode}}' v-pause)
  check "docker stop pause: exit $rc in $t ms (want 0, < 1000)" test "$rc" = 0 -a "$t" -lt 1000
  "${D[@]}" rm v-pause > /dev/null
fi
host_net > "$T/net.after"
check "host ip_forward, links and iptables unchanged" cmp -s "$T/net.before" "$T/net.after"
exit "$FAIL"
