#!/bin/bash
# jestats.sh <out> <rss_mb> <delay_s>: once the hub's RSS passes rss_mb, waits delay_s, then has the
# hub print jemalloc's stats (gdb) and copies them from its stderr to <out>.
out=$1; lim=$(( $2 * 1024 )); d=$3
while true; do
  pid="$(pgrep -f ' serve --host 127.0.0.1' | head -1)"
  if [ -n "$pid" ]; then
    rss=$(awk '/^VmRSS/{print $2}' /proc/$pid/status 2>/dev/null)
    if [ -n "$rss" ] && [ "$rss" -gt "$lim" ]; then break; fi
  fi
  sleep 0.2
done
sleep "$d"
err="$(readlink /proc/$pid/fd/2)"
before=$(stat -c %s "$err")
grep -E '^(Rss|Anonymous|Private_Clean|Shared_Clean|Private_Dirty)' /proc/$pid/smaps_rollup > "$out.smaps"
awk '/^VmRSS/' /proc/$pid/status >> "$out.smaps"
gdb -p "$pid" -batch -ex 'call (void)_rjem_malloc_stats_print(0,0,"a")' >/dev/null 2>&1
tail -c +$((before + 1)) "$err" > "$out"
echo "pid $pid rss_at_start_kb $rss" >> "$out.smaps"
