#!/bin/bash
# perf7.sh <tag> <hubbin>: scenario 7 (5,000 streams) with perf on the hub during the with-streams wrk run.
tag=$1; bin=$2
cd /work/main
ulimit -n 20000
rm -rf /tmp/x/out7-$tag
BENCH_HUB_BIN=$bin BENCH_OUT=/tmp/x/out7-$tag BENCH_SCENARIOS=7 BENCH_RUNS=1 BENCH_SECONDS=8 scripts/bench > /tmp/x/bench7-$tag.log 2>&1 &
bp=$!
for i in $(seq 1200); do grep -q streams_only /tmp/x/out7-$tag/raw.jsonl 2>/dev/null && break; sleep 0.1; done
p=$(pgrep -f " serve --host 127.0.0.1" | head -1)
sleep 2
perf record -e cpu-clock -F 1999 -g -p $p -o /tmp/x/perf7-$tag.data -- sleep 5 2>/dev/null
wait $bp
perf report -i /tmp/x/perf7-$tag.data --no-children --sort symbol --stdio -g none 2>/dev/null | grep "%" | head -60 > /tmp/x/perf7-$tag-self.txt
perf report -i /tmp/x/perf7-$tag.data --children --sort symbol --stdio -g none 2>/dev/null | grep "%" | head -150 > /tmp/x/perf7-$tag-incl.txt
