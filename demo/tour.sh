#!/usr/bin/env bash
# A guided tour of shoal with Docker Compose: a cluster of containers, the sample application,
# load balancing, a node killed, a node cut off the network, and how fast the cluster heals.
# Run it and read along. It exits non-zero if any step fails.
#
#   demo/tour.sh
#
# Environment (all optional):
#   SHOAL_BIN            use this shoal binary for the image instead of building a release one
#   SHOAL_DEMO_NODES     nodes in the cluster (default 3)
#   SHOAL_DEMO_PORT      host port of the sample app's node port (default 30080)
#   SHOAL_DEMO_PROJECT   the Compose project name (default shoaldemo)
#   SHOAL_DEMO_SUBNET    the cluster network (default 10.231.0.0/24)
#   SHOAL_DEMO_DOWN=1    remove the cluster at the end (else it keeps running)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
project="${SHOAL_DEMO_PROJECT:-shoaldemo}"
nodes="${SHOAL_DEMO_NODES:-3}"
port="${SHOAL_DEMO_PORT:-30080}"
export SHOAL_DEMO_PORT="$port"
network="${project}_shoal"
begin=$(date +%s.%N)

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
fail() { echo "tour: FAILED: $*" >&2; exit 1; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
compose() {
    if docker compose version >/dev/null 2>&1; then
        docker compose -p "$project" -f "$here/compose.yaml" "$@"
    else
        docker-compose -p "$project" -f "$here/compose.yaml" "$@"
    fi
}
seed() { compose ps -q seed; }
shoal() { docker exec -i "$(seed)" shoal "$@"; }
# Polls a command (a shell function) every 0.2 s until it succeeds, for at most $1 seconds.
wait_for() {
    local limit="$1" what="$2"; shift 2
    local start; start=$(now)
    until "$@" >/dev/null 2>&1; do
        if awk -v a="$start" -v b="$(now)" -v l="$limit" 'BEGIN { exit !(b - a > l) }'; then
            fail "$what did not happen within ${limit}s"
        fi
        sleep 0.2
    done
}
alive_count() { shoal get nodes | awk 'NR > 1 && $2 == "alive"' | wc -l; }
all_alive() { [ "$(alive_count)" -eq "$nodes" ]; }
# Ready replicas of the sample app, not counting those on node $1 (if given).
ready_elsewhere() {
    shoal get pods -o wide | awk -v skip="${1:-}" 'NR > 1 && $2 == "1/1" && $3 == "Running" && $NF != skip' | wc -l
}
three_ready_off() { [ "$(ready_elsewhere "$1")" -eq 3 ]; }
three_ready() { [ "$(ready_elsewhere)" -eq 3 ]; }
node_alive() { shoal get nodes | awk -v n="$1" '$1 == n && $2 == "alive"' | grep -q .; }
# A node (not the seed) that runs a ready replica of the sample app.
busy_node() {
    shoal get pods -o wide |
        awk 'NR > 1 && $2 == "1/1" && $3 == "Running" && $NF != "seed" { print $NF }' | head -1
}

cleanup() {
    if [ "${SHOAL_DEMO_DOWN:-0}" = 1 ]; then
        compose down -v --timeout 5 >/dev/null 2>&1 || true
    fi
}
trap cleanup EXIT

say "Building the node image (no registry needed)"
"$here/node-image.sh"
export SHOAL_CLUSTER_KEY="${SHOAL_CLUSTER_KEY:-$(docker run --rm shoal-node:dev keygen)}"

say "Starting $nodes nodes: the seed, and $((nodes - 1)) that join it by name"
compose down -v --timeout 5 >/dev/null 2>&1 || true
compose up -d --scale node=$((nodes - 1))
wait_for 60 "every node alive" all_alive
shoal get nodes

say "Applying the sample application (demo/manifests/hello.yaml)"
shoal apply -f - < "$here/manifests/hello.yaml"
wait_for 60 "3 ready replicas" three_ready
shoal get pods -o wide
first_answer=$(since "$begin")

say "The service on localhost:$port answers from pods on every node (60 requests, 12 at a time)"
# Connections go to a pod on the node that takes them unless it is busier than another.
counts=$(seq 60 | xargs -P 12 -I{} curl -s --max-time 5 "localhost:$port/" \
    | grep -o '"pod":"[^"]*"' | sort | uniq -c)
echo "$counts"
answered=$(echo "$counts" | grep -c pod || true)
[ "$answered" -ge 2 ] || fail "only $answered pod answered"

victim=$(busy_node)
[ -n "$victim" ] || fail "no node besides the seed runs a replica"
say "Killing node $victim's container (its pods die with it)"
docker kill "$victim" >/dev/null
killed=$(now)
wait_for 60 "every replica running elsewhere" three_ready_off "$victim"
kill_heal=$(since "$killed")
echo "every replica ran elsewhere ${kill_heal}s after the kill"
shoal get pods -o wide

say "Bringing $victim back"
docker start "$victim" >/dev/null
started=$(now)
wait_for 60 "$victim alive again" node_alive "$victim"
rejoin=$(since "$started")
echo "$victim rejoined ${rejoin}s after its container started"

# Settled first: every node alive, exactly 3 ready replicas.
wait_for 60 "exactly 3 ready replicas" three_ready
cut=$(busy_node)
[ -n "$cut" ] || fail "no node besides the seed runs a replica"
ip=$(docker inspect -f "{{(index .NetworkSettings.Networks \"$network\").IPAddress}}" "$cut")
say "Cutting node $cut ($ip) off the network"
docker network disconnect -f "$network" "$cut"
disconnected=$(now)
wait_for 60 "every replica running elsewhere" three_ready_off "$cut"
cut_heal=$(since "$disconnected")
echo "every replica ran elsewhere ${cut_heal}s after the cut"
docker network connect --ip "$ip" "$network" "$cut"
reconnected=$(now)
wait_for 60 "$cut alive again" node_alive "$cut"
wait_for 60 "exactly 3 ready replicas" three_ready
net_heal=$(since "$reconnected")
echo "$cut was back, with exactly 3 replicas in the cluster, ${net_heal}s after the network returned"
shoal get pods -o wide

say "Timings"
printf '  %-55s %6ss\n' \
    "start to the first answer (image build included)" "$first_answer" \
    "node container killed -> every replica elsewhere" "$kill_heal" \
    "killed node restarted -> alive in the cluster" "$rejoin" \
    "node cut off -> every replica elsewhere" "$cut_heal" \
    "network back -> node alive, exactly 3 replicas" "$net_heal"
if [ "${SHOAL_DEMO_DOWN:-0}" != 1 ]; then
    echo
    echo "The cluster keeps running. Try:"
    echo "    docker exec -it $(docker inspect -f '{{.Name}}' "$(seed)" | tr -d /) shoal get pods -o wide"
    echo "Stop it with: docker-compose -p $project -f $here/compose.yaml down"
fi
