#!/bin/bash
# perf4.sh <out>: scenario 4 (5,000 streams, 40 chunks) with perf recording the hub for 8 s once
# the streams are open (RSS past 150 MB + 2 s).
out=$1; mkdir -p $out
cd /work/main; ulimit -n 20000
( while true; do
    pid="$(pgrep -f ' serve --host 127.0.0.1' | head -1)"
    if [ -n "$pid" ]; then rss=$(awk '/^VmRSS/{print $2}' /proc/$pid/status 2>/dev/null)
      [ -n "$rss" ] && [ "$rss" -gt 153600 ] && break; fi
    sleep 0.2
  done
  sleep 2
  perf record -e cpu-clock -F 2000 -p $pid -o $out/perf.data -- sleep 8 > $out/perf.log 2>&1 ) &
BENCH_OUT=$out/bench BENCH_SCENARIOS=4 BENCH_RUNS=1 BENCH_HOLD_CHUNKS=40 BENCH_HOLD_WINDOW=20 timeout 900 scripts/bench > $out/bench.log 2>&1
wait
