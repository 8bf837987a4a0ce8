#!/bin/bash
# usage: run.sh HUB_BIN NUSERS PREFILL_S MEASURE_S  -> prints wrk result and hub CPU us/request
set -e
HUB=$1; N=$2; PRE=$3; SECS=$4
W=$(mktemp -d /tmp/mu/w.XXXX); D=$W/data; mkdir -p $D
: > $W/keys
for i in $(seq $N); do
  uid=$($HUB admin --data-dir $D user create --name u$i 2>/dev/null | tail -1)
  $HUB admin --data-dir $D key create --user $uid --rpm 4000000000 --tpm 1000000000000000 2>/dev/null | grep -Eo 'ahk_[A-Za-z0-9]+' | head -1 >> $W/keys
  $HUB admin --data-dir $D credits grant --user $uid --amount 100000000 >/dev/null 2>&1
done
taskset -c 1 /work/main/target/release/hub-mock --flavor openai --port 0 --api-key sk-test --record-limit 0 > $W/mock.out 2>&1 &
MP=$!
for i in $(seq 50); do grep -q base_url $W/mock.out && break; sleep 0.1; done
MB=$(grep -Eo '"base_url":"[^"]+"' $W/mock.out | sed 's/.*"base_url":"\([^"]*\)"/\1/')
HUB_ADMIN_KEY=ahk_adminxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx OPENAI_API_KEY=sk-test OPENAI_BASE_URL=$MB HUB_LOG=warn HUB_BILLING_MODE=credits \
  taskset -c 0 $HUB serve --host 127.0.0.1 --port 0 --data-dir $D > $W/hub.out 2> $W/hub.err &
HP=$!
for i in $(seq 100); do grep -q "listening on" $W/hub.out && break; sleep 0.1; done
URL=$(grep -Eo 'http://[0-9.]+:[0-9]+' $W/hub.out | head -1)
export BENCH_KEYS_FILE=$W/keys BENCH_MODEL=openai/gpt-4o-mini
taskset -c 1 wrk -t1 -c64 -d${PRE}s -s /tmp/mu/keys.lua $URL/v1/chat/completions > $W/pre.txt
[ -n "$PERF" ] && { perf record -e cpu-clock -F 999 -g -p $HP -o $PERF > /dev/null 2>&1 & PP=$!; }
t0=$(awk '{ sub(/^.*\) /, ""); print $12 + $13 }' /proc/$HP/stat)
taskset -c 1 wrk -t1 -c64 -d${SECS}s -s /tmp/mu/keys.lua $URL/v1/chat/completions > $W/m.txt
t1=$(awk '{ sub(/^.*\) /, ""); print $12 + $13 }' /proc/$HP/stat)
[ -n "$PERF" ] && { kill -INT $PP; wait $PP 2>/dev/null || true; }
req=$(grep '^{' $W/m.txt | python3 -c "import sys,json; print(json.load(sys.stdin)['requests'])")
echo "users=$N prefill=${PRE}s $(grep '^{' $W/m.txt) cpu_us_per_req=$(python3 -c "print(round(($t1-$t0)*10000/$req,1))") db=$(du -sh $D | cut -f1) pre=$(grep '^{' $W/pre.txt | head -c 60)"
kill $HP $MP; wait $HP $MP 2>/dev/null || true
rm -rf $W
