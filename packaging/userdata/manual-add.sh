#!/bin/bash
# node-attach userdata — manual add: the cluster's values (endpoint, bootstrap token, CA pin,
# DNS, runtime, labels) come from the control plane, keyed by the openapi token.
# The token goes through the environment so it never shows in the process list; the field's
# `bash -s -- --openapi-token T` works the same.
set -euo pipefail
curl -fsSL --retry 5 --retry-connrefused @BASE_URL@/attach.sh \
  | NODE_ATTACH_OPENAPI_TOKEN='@OPENAPI_TOKEN@' bash -s -- @EXTRA_FLAGS@
