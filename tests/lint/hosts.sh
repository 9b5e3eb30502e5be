#!/usr/bin/env bash
# No package registry or mirror host is written into this tree: every tool that needs a mirror
# reads it from this machine's apt sources (tests/e2e/apt-mirror.sh) or fails saying so. This
# check lists the host of every URL in the tracked files and fails on any host that is not a
# placeholder, an address, a reserved example name, or one of the few hosts the product itself
# must name (below, each with its reason). Cargo.lock (cargo's own index entries) and the fuzz
# corpora (hostile inputs) are not read.
set -euo pipefail
cd "$(dirname "$0")/../.."

allowed() {
  local host=$1
  case $host in
    # Placeholders and templates: no dot, or a variable in it.
    *'{'*|*'$'*|*'@'*) return 0 ;;
  esac
  [[ $host == *.* ]] || return 0
  # Addresses and versions (every label numeric).
  [[ $host =~ ^[0-9.]+$ ]] && return 0
  case $host in
    # Reserved for documentation and tests (RFC 2606, RFC 6761).
    example.com|example.org|example.net|*.example|*.example.com|*.example.org|*.invalid|*.test|localhost) return 0 ;;
    # In-cluster Service names (deploy/'s kubeconfig reaches the API server from a pod).
    *.svc|*.svc.cluster.local) return 0 ;;
    # Documentation links in the systemd units.
    kubernetes.io) return 0 ;;
    # ACK's values endpoint, which --openapi-token reads by default (ACK's own attach_node.sh).
    cs-anony.aliyuncs.com|cs-anony-vpc.*.aliyuncs.com) return 0 ;;
    # ESS's regional API, where an --ess node completes its lifecycle action unless
    # --ess-endpoint names another (the cloud's own API, not a package registry).
    ess.*.aliyuncs.com) return 0 ;;
    # containerd's upstream for docker.io images in the hosts.toml join writes (not a package
    # registry: the container registry a node's pods pull from).
    registry-1.docker.io) return 0 ;;
  esac
  return 1
}

bad=0
while IFS= read -r line; do
  file=${line%%:*}
  url=${line#*:}
  host=${url#*://}
  host=${host#*@}
  host=${host%%[/:?#]*}
  host=${host%.}
  if [ "$host" = github.com ]; then
    # The project's own repository, for its documentation links.
    case $url in *://github.com/node-attach/*) continue ;; esac
  fi
  allowed "$host" && continue
  echo "$file: $url: a host that is not a placeholder, an example or the product's own" >&2
  bad=1
done < <(git grep --untracked -IoE "[a-zA-Z][a-zA-Z0-9+.-]*://[^ \"'\`)<>\\\\,]+" -- . ':!Cargo.lock' ':!fuzz/corpus' ':!tests/lint/hosts.sh')

if [ "$bad" != 0 ]; then
  echo "hosts.sh: take mirrors from this machine's apt sources (tests/e2e/apt-mirror.sh); use example names in tests" >&2
  exit 1
fi
echo "hosts.sh: no package registry or mirror host in the tree"
