#!/usr/bin/env bash
# Builds the local image shoal-node:dev: the shoal binary, the shared libraries it and /bin/sh
# need, and /bin/sh (the process runtime's start gate), on an empty base. No registry is
# needed: everything comes from this machine.
#
# Usage: demo/node-image.sh [TAG]           (TAG defaults to shoal-node:dev)
# The binary is $SHOAL_BIN if set, else target/release/shoal, built first.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
tag="${1:-shoal-node:dev}"

bin="${SHOAL_BIN:-}"
if [ -z "$bin" ]; then
    echo "building shoal (release) ..."
    cargo build --release -p shoal-agent --bin shoal --manifest-path "$root/Cargo.toml"
    bin="$root/target/release/shoal"
fi
[ -x "$bin" ] || { echo "node-image.sh: $bin is not an executable" >&2; exit 1; }

ctx="$(mktemp -d)"
trap 'rm -rf "$ctx"' EXIT
mkdir -p "$ctx/rootfs/usr/local/bin" "$ctx/rootfs/bin" "$ctx/rootfs/tmp" "$ctx/rootfs/var/lib/shoal"
chmod 1777 "$ctx/rootfs/tmp"
# Debug symbols stay out (a debug build's are hundreds of MB).
strip -o "$ctx/rootfs/usr/local/bin/shoal" "$bin" 2>/dev/null || cp "$bin" "$ctx/rootfs/usr/local/bin/shoal"
cp "$(readlink -f /bin/sh)" "$ctx/rootfs/bin/sh"
# Every shared library either needs, at the path the loader looks for it.
for lib in $( (ldd "$bin"; ldd /bin/sh) | grep -o '/[^ ]*' | sort -u); do
    mkdir -p "$ctx/rootfs$(dirname "$lib")"
    cp -L "$lib" "$ctx/rootfs$lib"
done
cat > "$ctx/Dockerfile" <<'DOCKERFILE'
FROM scratch
COPY rootfs/ /
ENV PATH=/usr/local/bin:/bin
ENTRYPOINT ["/usr/local/bin/shoal"]
DOCKERFILE
# The classic builder needs nothing from a registry for FROM scratch (it says it is
# deprecated: shown only when the build fails).
if ! out="$(DOCKER_BUILDKIT=0 docker build --quiet --label io.shoal.demo=1 -t "$tag" "$ctx" 2>&1)"; then
    echo "$out" >&2
    exit 1
fi
echo "built $tag from $bin"
