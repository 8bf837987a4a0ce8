#!/usr/bin/env bash
# s1.sh <rounds> <bin names...>: alternate scenario-1 runs (c=1), print added p50/p99 and CPU
set -u
rounds=$1; shift
cd /work/main
for r in $(seq 1 $rounds); do
  for b in "$@"; do
    out=/tmp/x/runs/s1-$b-$r
    rm -rf $out
    BENCH_HUB_BIN=/tmp/x/$b BENCH_OUT=$out BENCH_SCENARIOS=1 BENCH_FLOOR=0 BENCH_S1_BREAKDOWN=0 BENCH_RUNS=3 BENCH_SECONDS=5 scripts/bench >/dev/null 2>$out.err
    echo "$b $r: $(grep -E '^\| (direct|hub|\*\*added) ' $out/report.md | head -3 | cut -d'|' -f2-4 | tr '\n' ' ')"
  done
done
