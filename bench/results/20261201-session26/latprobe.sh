#!/bin/bash
# latprobe.sh <out> <hub bin>: scenario 4 (5,000 streams, 30 chunks); once they are open, plain
# calls at concurrency 1 for 10 s (wrk on the load's CPU) beside them: what the streams'
# heartbeat does to the latency of other calls.
out=$1; bin=$2; mkdir -p $out
cd /work/main; ulimit -n 20000
( while true; do
    pid="$(pgrep -f ' serve --host 127.0.0.1' | head -1)"
    if [ -n "$pid" ]; then rss=$(awk '/^VmRSS/{print $2}' /proc/$pid/status 2>/dev/null)
      [ -n "$rss" ] && [ "$rss" -gt 153600 ] && break; fi
    sleep 0.2
  done
  sleep 3
  data="$(tr '\0' '\n' < /proc/$pid/cmdline | grep -A1 -- '--data-dir' | tail -1)"
  key="$(head -1 "$(dirname "$data")/keys.txt")"
  port="$(ss -ltnpH | grep "pid=$pid," | grep -o '127.0.0.1:[0-9]*' | head -1)"
  BENCH_KEY="$key" BENCH_MODEL=openai/gpt-4o-mini taskset -c 1 wrk -t1 -c1 -d10s -s bench/wrk/chat.lua "http://$port/v1/chat/completions" > $out/wrk-c1.txt 2>&1 ) &
BENCH_HUB_BIN=$bin BENCH_OUT=$out/bench BENCH_SCENARIOS=4 BENCH_RUNS=1 BENCH_HOLD_CHUNKS=30 BENCH_HOLD_WINDOW=15 timeout 600 scripts/bench > $out/bench.log 2>&1
wait
grep '^{' $out/wrk-c1.txt
