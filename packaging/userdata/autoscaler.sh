#!/bin/bash
# node-attach userdata — autoscaler node pool: values by openapi token, the ESS/autoscaler flag,
# and the pool's labels. k8s.io/cluster-autoscaler=true cannot be set by the kubelet itself:
# node-attach reports it for the control plane to apply.
set -euo pipefail
curl -fsSL --retry 5 --retry-connrefused @BASE_URL@/attach.sh \
  | NODE_ATTACH_OPENAPI_TOKEN='@OPENAPI_TOKEN@' bash -s -- \
      --ess true --labels '@LABELS@' @EXTRA_FLAGS@
