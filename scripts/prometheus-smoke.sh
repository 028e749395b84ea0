#!/usr/bin/env bash
# A real Prometheus (Debian's package) scrapes `pvmctl serve` while the game_server example
# publishes, and a metric is queried back through Prometheus's HTTP API.
#
#   scripts/prometheus-smoke.sh
#
# Not part of `cargo test`: it installs the `prometheus` package if it is missing (as root,
# with apt-get) and takes about half a minute. Ports: Prometheus on 127.0.0.1:19090
# (PROMETHEUS_PORT), pvmctl serve on a free port it picks.
set -euo pipefail
cd "$(dirname "$0")/.."

port="${PROMETHEUS_PORT:-19090}"
if ! command -v prometheus >/dev/null; then
    echo "installing Debian's prometheus package"
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends prometheus >/dev/null
fi
cargo build --release --example game_server -p tokio-pvm
cargo build --release -p pvmctl

work="$(mktemp -d)"
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

export TOKIO_PVM_DIR="$work/manifests"
mkdir -m 700 "$TOKIO_PVM_DIR"
target/release/examples/game_server --run-for 120 >"$work/game_server.log" 2>&1 &
pids+=($!)
target/release/pvmctl serve --listen 127.0.0.1:0 >"$work/serve.out" 2>"$work/serve.err" &
pids+=($!)
for _ in $(seq 100); do
    grep -q '^serving ' "$work/serve.out" 2>/dev/null && break
    sleep 0.1
done
target="$(sed -n 's|^serving http://\(.*\)/metrics$|\1|p' "$work/serve.out")"
[ -n "$target" ] || { echo "pvmctl serve did not start:"; cat "$work/serve.err"; exit 1; }
echo "pvmctl serve at $target"

cat >"$work/prometheus.yml" <<YAML
global:
  scrape_interval: 1s
scrape_configs:
  - job_name: tokio-pvm
    static_configs:
      - targets: ['$target']
YAML
prometheus --config.file="$work/prometheus.yml" --storage.tsdb.path="$work/data" \
    --web.listen-address="127.0.0.1:$port" >"$work/prometheus.log" 2>&1 &
pids+=($!)

query() {
    curl -sf "http://127.0.0.1:$port/api/v1/query" --data-urlencode "query=$1" || true
}
for _ in $(seq 60); do
    answer="$(query 'tokio_pvm_tuning_max_players{job="tokio-pvm"}')"
    if printf '%s' "$answer" | grep -q '"value":\[[0-9.]*,"64"\]'; then
        echo "Prometheus has tokio_pvm_tuning_max_players = 64: $answer"
        up="$(query 'up{job="tokio-pvm"}')"
        echo "up: $up"
        printf '%s' "$up" | grep -q '"1"\]' || { echo "the target is not up"; exit 1; }
        echo "ok"
        exit 0
    fi
    sleep 1
done
echo "Prometheus never had the metric; its last answer: ${answer:-none}"
tail -20 "$work/prometheus.log"
exit 1
