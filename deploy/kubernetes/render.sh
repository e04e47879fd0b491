#!/usr/bin/env bash
# Regenerates deploy/kubernetes/periscope.yaml from the Helm chart with deploy/kubernetes/values.yaml
# (tests/tests/k8s_manifests.rs checks that it is up to date). helm: $PERISCOPE_HELM, else the one
# `cargo xtask setup` installs, else helm on PATH.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
helm=${PERISCOPE_HELM:-${XDG_CACHE_HOME:-$HOME/.cache}/periscope-k8s-tools/helm}
[ -x "$helm" ] || helm=helm
body=$("$helm" template periscope "$here/../helm/periscope" --namespace periscope -f "$here/values.yaml")
{
  cat <<'HEADER'
# Periscope on Kubernetes, plain manifests: namespace periscope, the agent DaemonSet, the relay
# Deployment and Service, RBAC, ConfigMaps. Generated from the Helm chart by render.sh (beside
# this file) with values.yaml; do not edit by hand. Before `kubectl apply -f periscope.yaml`,
# make the web UI's token Secret:
#   kubectl create namespace periscope
#   kubectl -n periscope create secret generic periscope-ui-token --from-literal=token="$(openssl rand -hex 32)"
HEADER
  printf '%s\n' "$body"
} > "$here/periscope.yaml"
