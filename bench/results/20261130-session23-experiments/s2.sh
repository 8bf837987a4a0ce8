#!/usr/bin/env bash
# s2.sh <rounds> <bin names...>: alternate scenario-2 runs of /tmp/x/<bin>; prints req/s and CPU us/req (0 ms mock)
set -u
rounds=$1; shift
cd /work/main
for r in $(seq 1 $rounds); do
  for b in "$@"; do
    out=/tmp/x/runs/s2-$b-$r
    rm -rf $out
    BENCH_HUB_BIN=/tmp/x/$b BENCH_OUT=$out BENCH_SCENARIOS=2 BENCH_FLOOR=0 BENCH_RUNS=3 BENCH_SECONDS=5 scripts/bench >/dev/null 2>$out.err
    echo "== $b $r"; grep -E "^\| (hub|direct) " $out/report.md | head -4
  done
done
