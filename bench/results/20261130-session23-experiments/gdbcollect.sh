#!/usr/bin/env bash
# waits for the bench's hub to hold its streams, then calls mi_collect through gdb
for i in $(seq 1 600); do pid=$(pgrep -f " serve --host 127.0.0.1" | head -1); [ -n "$pid" ] && break; sleep 0.2; done
echo "pid $pid"
rss() { grep VmRSS /proc/$pid/status | awk '{print $2/1024}'; }
for i in $(seq 1 600); do r=$(rss); [ "${r%.*}" -gt 150 ] && break; sleep 0.2; done
for i in 1 2 3 4 5 6 7 8; do echo "t+$((i/2)) rss $(rss)"; sleep 0.5; done
gdb -p $pid -batch -ex 'call (void)mi_collect(0)' >/tmp/x/gdb.log 2>&1
echo "after mi_collect(false): $(rss)"; sleep 1; echo "1 s later: $(rss)"
gdb -p $pid -batch -ex 'call (void)mi_collect(1)' >>/tmp/x/gdb.log 2>&1
echo "after mi_collect(true): $(rss)"; sleep 1; echo "1 s later: $(rss)"
