#!/usr/bin/env bash
# heaphold.sh <hub bin (system allocator)> <streams> <out>: the hub under heaptrack holding N long streams.
set -eu
HUB=$1; N=$2; OUTF=$3
R=/work/main/target/release
ulimit -n 20000
W=$(mktemp -d)
taskset -c 1 $R/hub-mock --flavor openai --port 0 --api-key sk-test --record-limit 0 --latency-ms 0 --chunk-delay-ms 0 >$W/mock.out 2>$W/mock.err &
MP=$!
for i in $(seq 50); do grep -q base_url $W/mock.out 2>/dev/null && break; sleep 0.1; done
MB=$(sed 's/.*"base_url":"\([^"]*\)".*/\1/' $W/mock.out | head -1)
curl -sf -X POST "${MB%/v1}/__mock/scenarios" -H 'content-type: application/json' \
  -d "{\"model\":\"long\",\"script\":{\"text\":\"$(printf 'word %.0s' $(seq 15))\",\"chunks\":15,\"chunk_delay_ms\":1000}}" >/dev/null
mkdir -p $W/data
/work/main/scripts/bench-users "$HUB" $W/data 1 credits > $W/keys.txt
"$HUB" admin --data-dir $W/data price set --provider openai --model long --input 0.15 --output 0.6 --unit-cost >/dev/null
HUB_ADMIN_KEY=ahk_benchxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx OPENAI_API_KEY=sk-test OPENAI_BASE_URL="$MB" HUB_LOG=warn \
  taskset -c 0 heaptrack -o "$OUTF" "$HUB" serve --host 127.0.0.1 --port 0 --data-dir $W/data >$W/hub.out 2>$W/hub.err &
for i in $(seq 300); do grep -q "listening on" $W/hub.out 2>/dev/null && break; sleep 0.1; done
HU=$(grep -Eo 'http://[0-9.]+:[0-9]+' $W/hub.out | head -1)
HP=$(pgrep -f "$HUB serve --host" | grep -v heaptrack | head -1)
echo "hub $HU pid $HP"
taskset -c 1 $R/hub-bench hold --url "$HU/v1/chat/completions" --keys-file $W/keys.txt --model openai/long --streams $N --hub-pid $HP --window-s 3
sleep 1
kill -INT $HP; sleep 3; kill $MP; wait 2>/dev/null || true
ls -la ${OUTF}*
