#!/usr/bin/env bash
# Where one join's CPU goes, for `make bench-profile`: the user-space instructions of each phase
# (valgrind's callgrind counts instructions, so the figures repeat whatever else the machine is
# doing) and the system calls the join makes (strace -c: the kernel's share, fsyncs above all).
# Runs one join into a scratch root against the test control plane on loopback, with the kubelet
# stand-in registering the Node, as `make bench` does.
#
# Usage: tests/bench/profile.sh BINARY   (a node-attach built with symbols: the split happens at
# each call of node_attach::report::process_cpu, which every phase calls at its start and end)
set -euo pipefail

bin=$(realpath "${1:?usage: profile.sh NODE_ATTACH_BINARY}")
top=$(cd "$(dirname "$0")/../.." && pwd)
debug=$top/target/debug
for tool in valgrind strace; do
  command -v "$tool" >/dev/null || { echo "profile.sh: $tool is missing: apt-get install $tool" >&2; exit 1; }
done

work=$(mktemp -d)
cp_pid=
cleanup() {
  [ -n "$cp_pid" ] && kill "$cp_pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

# The test token of `make bench`; it reaches node-attach through the environment, never argv.
export NODE_ATTACH_TOKEN=abcdef.0123456789abcdef
"$debug/test-control-plane" --state-dir "$work/cp" --token "$NODE_ATTACH_TOKEN" >"$work/cp.log" 2>&1 &
cp_pid=$!
for _ in $(seq 100); do
  [ -s "$work/cp/ca.pin" ] && [ -s "$work/cp/endpoint" ] && break
  sleep 0.1
done
[ -s "$work/cp/endpoint" ] || { echo "profile.sh: the test control plane did not start" >&2; exit 1; }

# join NAME WRAPPER...: one join into its own root, run under WRAPPER.
join() {
  local name=$1 root=$work/$1
  shift
  mkdir -p "$root"
  "$debug/kubelet-standin" --root "$root" --once --wait-seconds 60 >/dev/null 2>&1 &
  local kubelet=$!
  "$@" "$bin" join --root "$root" --endpoint "$(cat "$work/cp/endpoint")" \
    --discovery-token-ca-cert-hash "$(cat "$work/cp/ca.pin")" --node-name "profile-$name-$$" \
    --node-wait-timeout 30s --output json >"$work/$name.out" 2>"$work/$name.err" ||
    { echo "profile.sh: the join failed:" >&2; cat "$work/$name.err" >&2; exit 1; }
  wait "$kubelet"
}

join callgrind valgrind --tool=callgrind --dump-before=node_attach::report::process_cpu \
  --callgrind-out-file="$work/cg.out"
join strace strace -f -c -o "$work/strace.txt"

# The callgrind parts, in order: before the first phase, then each phase and the gap after it.
echo "user-space instructions per phase (callgrind, millions):"
for f in "$work"/cg.out*; do
  awk '/^part:/ {p=$2} /^totals:/ {print p, $2}' "$f"
done | sort -n | awk '
  BEGIN { split("identity preflight discover cluster host runtime kubelet bootstrap start confirm", phase, " ") }
  { part[NR] = $2; total += $2 }
  END {
    outside = part[1]
    for (i = 1; i <= 10; i++) { printf "  %-16s %7.2f\n", phase[i], part[2 * i] / 1e6; outside += part[2 * i + 1] }
    printf "  %-16s %7.2f\n  %-16s %7.2f\n", "outside phases", outside / 1e6, "join", total / 1e6
  }'
echo
echo "system calls of one join (strace -c -f; the time column is strace's, not the CPU's):"
head -n 25 "$work/strace.txt"
