#!/bin/bash
# s4run.sh <tag> <bin...>: scenario 4 (15 chunks, 5 s window) once per binary, alternating.
tag=$1; shift
cd /work/main; ulimit -n 20000
for b in "$@"; do n=$(basename $b .sh)
  BENCH_HUB_BIN=$b BENCH_OUT=/tmp/x/s4-$tag-$n BENCH_SCENARIOS=4 BENCH_RUNS=1 BENCH_HOLD_CHUNKS=15 BENCH_HOLD_WINDOW=5 scripts/bench > /tmp/x/s4-$tag-$n.log 2>&1
  echo "$n $(grep -o '"hub_rss_open_max_mb":[0-9.]*\|"hub_cpu_pct_while_open":[0-9.]*\|"hub_rss_idle_mb":[0-9.]*' /tmp/x/s4-$tag-$n/s4-hold.json | tr '\n' ' ')"
done
