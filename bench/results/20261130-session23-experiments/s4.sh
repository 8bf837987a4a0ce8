#!/usr/bin/env bash
# s4.sh <rounds> <bin names...>: alternate scenario-4 runs of /tmp/x/<bin>
set -u
rounds=$1; shift
cd /work/main
ulimit -n 20000
for r in $(seq 1 $rounds); do
  for b in "$@"; do
    out=/tmp/x/runs/s4-$b-$r
    rm -rf $out
    BENCH_HUB_BIN=/tmp/x/$b BENCH_OUT=$out BENCH_SCENARIOS=4 BENCH_RUNS=1 BENCH_HOLD_CHUNKS=15 BENCH_HOLD_WINDOW=5 scripts/bench >/dev/null 2>$out.err
    python3 - "$out/raw.jsonl" "$b" "$r" <<'PY'
import json,sys
for l in open(sys.argv[1]):
    d=json.loads(l)
    if d.get('scenario')==4 or 'hold' in d:
        h=d.get('hold',d)
        print(sys.argv[2], sys.argv[3], {k:v for k,v in h.items() if 'rss' in k.lower() or 'cpu' in k.lower()})
PY
  done
done
