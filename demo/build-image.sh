#!/usr/bin/env bash
# Builds the local image shoal-demo:dev (FROM scratch + a statically linked shoal-demo-http).
# No registry is needed. Usage: demo/build-image.sh [TAG]   (TAG defaults to shoal-demo:dev)
# The runtime tests do the same from Rust (shoal_agent::runtime::testing::build_demo_image).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
tag="${1:-shoal-demo:dev}"
target_dir="$root/target/demo-static"

# A separate target dir, so the static flags never invalidate the normal build.
RUSTFLAGS="-C target-feature=+crt-static" CARGO_TARGET_DIR="$target_dir" \
    cargo build --release -p shoal-demo --bin shoal-demo-http --manifest-path "$root/Cargo.toml"

ctx="$(mktemp -d)"
trap 'rm -rf "$ctx"' EXIT
cp "$target_dir/release/shoal-demo-http" "$root/demo/Dockerfile" "$ctx/"
DOCKER_BUILDKIT=0 docker build --quiet --label io.shoal.demo=1 -t "$tag" "$ctx"
echo "built $tag"
