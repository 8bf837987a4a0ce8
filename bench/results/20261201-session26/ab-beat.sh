#!/bin/bash
# ab-beat.sh: scenario 7 (hub only, one run, 5 s windows), the heartbeat at its default (2 s) and
# at 10 min (no beat inside the window), alternating.
cd /work/main; ulimit -n 20000
for r in 1 2; do
  for hb in default 600000; do
    if [ $hb = default ]; then unset HUB_HEARTBEAT_MS; else export HUB_HEARTBEAT_MS=$hb; fi
    BENCH_OUT=/tmp/x/beat-$hb-$r BENCH_SCENARIOS=7 BENCH_FLOOR=0 BENCH_RUNS=1 BENCH_SECONDS=5 timeout 600 scripts/bench > /tmp/x/beat-$hb-$r.log 2>&1
    echo "== $hb run $r"; grep -E "^\| hub" /tmp/x/beat-$hb-$r/report.md | grep -v "^| hub / "
  done
done
