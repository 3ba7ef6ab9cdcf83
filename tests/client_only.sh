#!/usr/bin/env bash
# An app that depends on `switchyard = { default-features = false, features = ["client"] }`
# gets the client library and no Kubernetes crates; asking for `secret-watch` brings them.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

kube_crates() {
    cargo tree --no-default-features --features "$1" -e normal --prefix none |
        grep -E '^(kube|kube-[a-z]+|k8s-openapi) ' | sort -u || true
}

found=$(kube_crates client)
if [ -n "$found" ]; then
    echo "client-only: the feature \"client\" pulls in Kubernetes crates:" >&2
    echo "$found" >&2
    exit 1
fi
if [ -z "$(kube_crates secret-watch)" ]; then
    echo "client-only: the feature \"secret-watch\" should bring the kube client" >&2
    exit 1
fi
echo "client-only: the \"client\" feature has no kube or k8s-openapi in its tree"
