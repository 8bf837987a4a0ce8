#!/bin/bash
# smaps-sampler.sh <out>: waits for a hub (`serve --host 127.0.0.1`) and samples its smaps_rollup
# every 0.25 s; prints, at the end, the sample with the largest Rss.
out="$1"; : > "$out"
while true; do
  pid="$(pgrep -f ' serve --host 127.0.0.1' | head -1)"
  [ -n "$pid" ] || { sleep 0.1; continue; }
  while [ -r /proc/$pid/smaps_rollup ]; do
    { echo "T $(date +%s.%N) $pid"; grep -E '^(Rss|Anonymous|Shared_Clean|Private_Clean|Private_Dirty|Shared_Dirty):' /proc/$pid/smaps_rollup 2>/dev/null; } >> "$out"
    sleep 0.25
  done
done
