#!/usr/bin/env bash
# Seeds the `manifest` corpus with the test manifests, so that the fuzzer starts from real
# Deployments, Pods and Namespaces instead of from nothing.
set -euo pipefail
cd "$(dirname "$0")"
mkdir -p corpus/manifest
cp ../src/testdata/*.yaml corpus/manifest/
