#!/bin/bash
# node-attach userdata — automatic add / ESS scale-out: the cluster's values spelled out.
# The bootstrap token goes through the environment (never the process list).
set -euo pipefail
curl -fsSL --retry 5 --retry-connrefused @BASE_URL@/attach.sh \
  | NODE_ATTACH_TOKEN='@TOKEN@' bash -s -- \
      --docker-version '@DOCKER_VERSION@' --endpoint '@ENDPOINT@' --cluster-dns '@CLUSTER_DNS@' \
      --discovery-token-ca-cert-hash '@CA_PIN@' @EXTRA_FLAGS@
