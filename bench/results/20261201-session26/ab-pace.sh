#!/bin/bash
# ab-pace.sh: the heartbeat back to back (base) against spread (new), alternating: the hub's CPU
# in 50 ms slices with 5,000 streams open (scenario 4), then scenario 7 (hub only, 5 s windows).
cd /work/main; ulimit -n 20000
for b in base new; do
  BENCH_HUB_BIN=/tmp/x/$b-hub /tmp/w/cpuslices.sh /tmp/x/pace-slices-$b
done
for r in 1 2 3; do
  for b in base new; do
    BENCH_HUB_BIN=/tmp/x/$b-hub BENCH_OUT=/tmp/x/pace-s7-$b-$r BENCH_SCENARIOS=7 BENCH_FLOOR=0 BENCH_RUNS=1 BENCH_SECONDS=5 timeout 600 scripts/bench > /tmp/x/pace-s7-$b-$r.log 2>&1
    echo "== $b run $r"; grep -E "^\| hub" /tmp/x/pace-s7-$b-$r/report.md | grep -v "^| hub / "
  done
done
