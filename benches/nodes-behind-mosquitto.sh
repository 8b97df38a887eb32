#!/usr/bin/env bash
# Throughput of N greenplate nodes (release build) behind the machine's Mosquitto on one
# PostgreSQL database, driven by `simulator town` (1,000 readers, each its own MQTT
# connection, sealing batches of 50 sightings every 50 ms). Prints each node's accepted
# sightings over the drive and the total. Used for benches/README.md, "Several nodes".
#
#   cargo build --release -p greenplate-ingest -p greenplate-simulator --bins
#   benches/nodes-behind-mosquitto.sh 1
#   benches/nodes-behind-mosquitto.sh 2
#
# Needs PostgreSQL (GREENPLATE_TEST_PG, default postgres://postgres@127.0.0.1:5432/test)
# and Mosquitto (MOSQUITTO, default 127.0.0.1:1883, anonymous). Every run gets its own
# database, share group and client ids; ports are picked free.
set -euo pipefail
nodes=${1:-2}
readers=${READERS:-1000}
seconds=${SECONDS_DRIVE:-15}
root=$(cd "$(dirname "$0")/.." && pwd)
bin=$root/target/release
base=${GREENPLATE_TEST_PG:-postgres://postgres@127.0.0.1:5432/test}
mosquitto=${MOSQUITTO:-127.0.0.1:1883}
run=$(head -c4 /dev/urandom | od -An -tx1 | tr -d ' \n')
db=gp_bench_$run
work=$(mktemp -d)
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
metric() { curl -s "http://127.0.0.1:$1/metrics" | awk -v m="$2" '$1==m {print $2}'; }
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  psql -q "$base" -c "DROP DATABASE IF EXISTS $db" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
psql -q "$base" -c "CREATE DATABASE $db" >/dev/null
url="${base%/*}/$db"
key=$(head -c32 /dev/urandom | od -An -tx1 | tr -d ' \n')
http=()
grpc=()
for n in $(seq 1 "$nodes"); do
  h=$(free_port); g=$(free_port); m=$(free_port)
  http+=("$h"); grpc+=("$g")
  cat > "$work/node-$n.toml" <<EOF
data_dir = "$work/data-$n"
database_url = "$url"
secret_key = "$key"
admin_token = "bench-admin-$run"
[mqtt]
listen = "127.0.0.1:$m"
url = "mqtt://$mosquitto"
client_id = "gp-bench-$run-$n"
share_group = "gp-bench-$run"
persistent_session = ${PERSISTENT:-true}
[grpc]
listen = "127.0.0.1:$g"
[http]
listen = "127.0.0.1:$h"
EOF
  RUST_LOG=warn "$bin/greenplate" serve --config "$work/node-$n.toml" 2> "$work/node-$n.log" &
  pids+=($!)
  for _ in $(seq 1 300); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$h/readyz")" = 200 ] && break
    sleep 0.1
  done
done
# Provisioning (readers, bikes) through node 1; the others learn it through PostgreSQL.
# `town` drives for --seconds after provisioning; sample the counters around the drive by
# watching for the first accepted sighting.
"$bin/simulator" town --grpc "http://127.0.0.1:${grpc[0]}" --mqtt "$mosquitto" \
  --admin-token "bench-admin-$run" --readers "$readers" --bikes 1100 --batch 50 \
  --interval-ms "${INTERVAL_MS:-50}" --seconds "$seconds" > "$work/town.out" 2>&1 &
town=$!
pids+=("$town")
total() {
  local t=0
  for h in "${http[@]}"; do t=$(( t + $(metric "$h" greenplate_ingest_sightings_accepted_total | cut -d. -f1) )); done
  echo "$t"
}
cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }
mq=$(pgrep -f "mosquitto.*${MQ_CONF:-mosquitto.conf}" | head -1)
while [ "$(total)" = 0 ] && kill -0 "$town" 2>/dev/null; do sleep 0.2; done
start=$(date +%s.%N)
mq_start=$(cpu "$mq")
wait "$town" || true
end=$(date +%s.%N)
mq_end=$(cpu "$mq")
at_drive_end=$(total)
# Let the nodes finish what the broker still holds (at most 60 s): the time of the last
# change is when the last message was taken.
prev=-1
done_at=$end
for _ in $(seq 1 120); do
  cur=$(total)
  [ "$cur" = "$prev" ] && break
  [ "$prev" != -1 ] && done_at=$(date +%s.%N)
  prev=$cur
  sleep 0.5
done
echo "nodes=$nodes readers=$readers drive_s=$(echo "$end - $start" | bc) load: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "accepted while driving: $at_drive_end ($(echo "$at_drive_end / ($end - $start)" | bc) /s); all taken $(echo "$done_at - $start" | bc | cut -c1-5) s after the drive began ($(echo "$(total) / ($done_at - $start)" | bc) /s)"
for i in "${!http[@]}"; do
  echo "node $((i + 1)): sightings accepted $(metric "${http[$i]}" greenplate_ingest_sightings_accepted_total), batches $(metric "${http[$i]}" greenplate_ingest_batches_accepted_total), peak RSS $(grep VmHWM /proc/"${pids[$i]}"/status | awk '{print $2/1024 " MB"}')"
done
echo "total sightings accepted: $(total)"
for h in "${http[@]}"; do
  curl -s "http://127.0.0.1:$h/metrics" | grep -E '^greenplate_ingest_(batches|sightings)_rejected_total' | grep -v ' 0$' || true
  # How long messages held the broker's in-flight slots (arrival to acknowledgement).
  curl -s "http://127.0.0.1:$h/metrics" | grep -E '^greenplate_mqtt_ack_seconds_(bucket|sum|count)' || true
done
echo "mosquitto CPU over the drive: $(echo "($mq_end - $mq_start) / $(getconf CLK_TCK) / ($end - $start)" | bc -l | cut -c1-4) cores"
grep -E "published|alerts|latency|rror|status|message" "$work/town.out" | head -12
