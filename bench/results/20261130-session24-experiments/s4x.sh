#!/usr/bin/env bash
# s4x.sh <tag> <rounds> <bin names...>: alternating scenario-4 runs of /tmp/x/<bin>, with
# CHUNKS (30), WINDOW (15) and WORDS (1) from the environment; prints RSS and CPU while open.
set -u
tag=$1; rounds=$2; shift 2
cd /work/main
ulimit -n 20000
for r in $(seq 1 $rounds); do
  for b in "$@"; do
    out=/tmp/x/runs/s4$tag-$b-$r
    rm -rf $out
    BENCH_HUB_BIN=/tmp/x/$b BENCH_OUT=$out BENCH_SCENARIOS=4 BENCH_RUNS=1 BENCH_HOLD_CHUNKS=${CHUNKS:-30} \
      BENCH_HOLD_WINDOW=${WINDOW:-15} BENCH_HOLD_WORDS=${WORDS:-1} scripts/bench >/dev/null 2>$out.err
    python3 - "$out/raw.jsonl" "$b" "$r" <<'PY'
import json,sys
for l in open(sys.argv[1]):
    d=json.loads(l)
    if d.get('scenario')==4 or 'hold' in d:
        h=d.get('hold',d)
        print(sys.argv[2], sys.argv[3], {k:v for k,v in h.items() if 'rss' in k.lower() or 'cpu' in k.lower() or k in ('opened','completed','errors')})
PY
  done
done
