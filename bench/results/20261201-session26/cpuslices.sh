#!/bin/bash
# cpuslices.sh <out>: scenario 4 (5,000 streams, 40 chunks); once they are open, the hub's CPU
# ticks (utime+stime, 10 ms each) sampled every 50 ms for 10 s.
out=$1; mkdir -p $out
cd /work/main; ulimit -n 20000
( while true; do
    pid="$(pgrep -f ' serve --host 127.0.0.1' | head -1)"
    if [ -n "$pid" ]; then rss=$(awk '/^VmRSS/{print $2}' /proc/$pid/status 2>/dev/null)
      [ -n "$rss" ] && [ "$rss" -gt 153600 ] && break; fi
    sleep 0.2
  done
  sleep 2
  for i in $(seq 200); do echo "$(date +%s.%N) $(awk '{print $14+$15}' /proc/$pid/stat)"; sleep 0.05; done > $out/slices.txt ) &
BENCH_OUT=$out/bench BENCH_SCENARIOS=4 BENCH_RUNS=1 BENCH_HOLD_CHUNKS=40 BENCH_HOLD_WINDOW=20 timeout 900 scripts/bench > $out/bench.log 2>&1
wait
