#!/bin/bash
# ab-s4.sh: scenario 4 (5,000 streams, 30 chunks, 10 s window), base and new alternating, three
# rounds: the hub's CPU and RSS while the streams are open.
cd /work/main; ulimit -n 20000
for r in 1 2 3; do
  for b in base new; do
    BENCH_HUB_BIN=/tmp/x/$b-hub BENCH_OUT=/tmp/x/pace-s4-$b-$r BENCH_SCENARIOS=4 BENCH_RUNS=1 BENCH_HOLD_CHUNKS=30 BENCH_HOLD_WINDOW=10 timeout 600 scripts/bench > /tmp/x/pace-s4-$b-$r.log 2>&1
    echo "$b $r $(grep -o '"hub_rss_open_max_mb":[0-9.]*\|"hub_cpu_pct_while_open":[0-9.]*' /tmp/x/pace-s4-$b-$r/s4-hold.json | tr '\n' ' ')"
  done
done
