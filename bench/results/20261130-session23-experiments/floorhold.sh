#!/usr/bin/env bash
# floorhold.sh <floor bin>: hub-floor holding 5,000 of scenario 4's long streams (plain HTTP/1.1 both
# ways): hub-mock on CPU 1 with the "long" script, the floor on CPU 0, hub-bench hold on CPU 1.
set -eu
FLOOR=${1:-/work/main/target/release/hub-floor}
R=/work/main/target/release
ulimit -n 20000
W=$(mktemp -d)
taskset -c 1 $R/hub-mock --flavor openai --port 0 --api-key sk-test --record-limit 0 --latency-ms 0 --chunk-delay-ms 0 >$W/mock.out 2>$W/mock.err &
MP=$!
for i in $(seq 50); do grep -q base_url $W/mock.out 2>/dev/null && break; sleep 0.1; done
MB=$(sed 's/.*"base_url":"\([^"]*\)".*/\1/' $W/mock.out | head -1)
curl -sf -X POST "${MB%/v1}/__mock/scenarios" -H 'content-type: application/json' \
  -d "{\"model\":\"long\",\"script\":{\"text\":\"$(printf 'word %.0s' $(seq 15))\",\"chunk_delay_ms\":1000}}" >/dev/null
taskset -c 0 $FLOOR --upstream "$MB" >$W/floor.out 2>$W/floor.err &
FP=$!
for i in $(seq 50); do grep -q '"url"' $W/floor.out 2>/dev/null && break; sleep 0.1; done
FU=$(sed 's/.*"url":"\([^"]*\)".*/\1/' $W/floor.out | head -1)
sleep 1
taskset -c 1 $R/hub-bench hold --url "$FU/v1/chat/completions" --model long --streams 5000 --hub-pid $FP --window-s 5
kill $FP $MP; wait 2>/dev/null || true
