#!/usr/bin/env bash
# perf profile of the hub while scenario 4's streams are open
for i in $(seq 1 600); do pid=$(pgrep -f " serve --host 127.0.0.1" | head -1); [ -n "$pid" ] && break; sleep 0.2; done
rss() { grep VmRSS /proc/$pid/status | awk '{print $2/1024}'; }
for i in $(seq 1 600); do r=$(rss); [ "${r%.*}" -gt 150 ] && break; sleep 0.2; done
sleep 3
perf record -e cpu-clock -F 999 -g -p $pid -o /tmp/x/perf-hold.data -- sleep 6 >/tmp/x/perf-rec.log 2>&1
echo recorded
