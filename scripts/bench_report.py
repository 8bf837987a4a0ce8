#!/usr/bin/env python3
"""Turns a scripts/bench results dir (raw.jsonl, env.txt) into BENCHMARKS.md-ready markdown.

Every figure is the median over runs; "added" figures are medians of the per-run differences
between the hub and the direct-to-mock measurement taken in the same run.

    python3 scripts/bench_report.py bench/results/<stamp> > report.md
"""

from __future__ import annotations

import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

TICK_US = 10_000  # /proc/<pid>/stat utime+stime are in 1/100 s


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def fmt(x, unit="", digits=0):
    if x is None:
        return "–"
    if digits == 0:
        return f"{x:,.0f}{unit}"
    return f"{x:,.{digits}f}{unit}"


def wrk_errors(r) -> int:
    """Failed requests of one wrk run: bad status, connect, read and timeout errors."""
    e = r["wrk"]
    return e["errors_status"] + e["errors_connect"] + e["errors_read"] + e["errors_timeout"]


def wrk_lat(rs, q: str) -> str:
    """The median of one latency figure (`p50`, `p99`, `p999`, `max`) over wrk runs, formatted."""
    return fmt(med(r["wrk"]["lat_us"][q] for r in rs))


def verdict(ok: bool | None) -> str:
    if ok is None:
        return "–"
    return "met" if ok else "**missed**"


def added_over_direct(runs, target, quantiles):
    """Median over the rounds of (target - direct) per quantile of wrk's latency (None where no
    round has both)."""
    keys = [k for k in runs if {target, "direct"} <= runs[k].keys()]
    return {
        q: med(runs[k][target]["wrk"]["lat_us"][q] - runs[k]["direct"]["wrk"]["lat_us"][q] for k in keys)
        for q in quantiles
    }


def ttfb_over_direct(runs, target):
    """Median over the rounds of (target - direct) time to first byte, p50 and p99 (None where no
    round has both)."""
    keys = [
        k
        for k in runs
        if {target, "direct"} <= runs[k].keys()
        and runs[k][target]["stream"]["ttfb_us"]
        and runs[k]["direct"]["stream"]["ttfb_us"]
    ]
    return {
        q: med(runs[k][target]["stream"]["ttfb_us"][q] - runs[k]["direct"]["stream"]["ttfb_us"][q] for k in keys)
        for q in ("p50", "p99")
    }


def floor_note(floor, added, p50_target, p99_target) -> str:
    """What the floor leaves of a latency target, and what the hub adds above the floor."""
    parts = []
    for q, target in (("p50", p50_target), ("p99", p99_target)):
        if target is None or floor.get(q) is None or added.get(q) is None:
            continue
        room = "within" if floor[q] <= target else "above"
        parts.append(
            f"{q}: the floor alone is {fmt(floor[q])} µs ({room} the {target} µs target); "
            f"the hub adds {fmt(added[q] - floor[q])} µs above it"
        )
    return "Against the floor, which no gateway code on this machine and pinning can go below: " + "; ".join(parts) + "."


def main() -> None:
    out = Path(sys.argv[1])
    rows = [json.loads(l) for l in (out / "raw.jsonl").read_text().splitlines() if l.strip()]
    env = (out / "env.txt").read_text().strip() if (out / "env.txt").exists() else ""

    wrk = defaultdict(lambda: defaultdict(dict))  # (sc, config, conc) -> run -> target -> row
    streams = defaultdict(lambda: defaultdict(dict))  # conc -> run -> target -> row
    stream_parts = defaultdict(dict)  # scenario 3's breakdown at c=16: config -> run -> hub row
    hold = None
    upstream = "http1"
    mixed_only = {}  # scenario 7: (target, run) -> the open streams' CPU alone
    mixed_hold = {}  # scenario 7: (target, run) -> hub-bench hold's summary
    mixed_load = {}  # scenario 7: (target, run) -> the load generator CPU's busy % in each wrk run
    missing = set()
    for r in rows:
        if "missing_switch" in r:
            missing.add(r["missing_switch"])
        elif "wrk" in r:
            key = (r["scenario"], r["config"], r["concurrency"])
            wrk[key][r["run"]][r["target"]] = r
        elif "stream" in r:
            if r.get("config", "all_on") == "all_on":
                streams[r["concurrency"]][r["run"]][r["target"]] = r
            else:
                stream_parts[r["config"]][r["run"]] = r
        elif "hold" in r:
            hold = r["hold"]
            upstream = r.get("upstream", "http1")
        elif "streams_only" in r:
            mixed_only[(r.get("target", "hub"), r["run"])] = r["streams_only"]
        elif "mixed_hold" in r:
            mixed_hold[(r.get("target", "hub"), r["run"])] = r["mixed_hold"]
        elif "load_cpu_busy_pct" in r:
            mixed_load[(r.get("target", "hub"), r["run"])] = r["load_cpu_busy_pct"]

    def cpu_us_per_req(r):
        req = r["wrk"]["requests"]
        return (r["hub_cpu_ticks"] - r["hub_cpu_ticks_before"]) * TICK_US / req if req else None

    def store_us_per_req(r):
        # Time the store's writer spent inside group commits in the window, per request (wall
        # time on the writer's thread: `/metrics` before and after; absent for older builds).
        st, req = r.get("store"), r["wrk"]["requests"]
        return st["commit_s"] * 1e6 / req if st and req else None

    def switches_per_req(r):
        # Context switches of the hub's (or the floor's) threads in the window, per request
        # (`/proc/<pid>/task/*/status`; absent for runs before the twentieth session).
        req = r["wrk"]["requests"]
        return r["hub_ctx_switches"] / req if "hub_ctx_switches" in r and req else None

    def busy_pct(r):
        return (r["hub_cpu_ticks"] - r["hub_cpu_ticks_before"]) * TICK_US / r["wrk"]["duration_us"] * 100

    lines: list[str] = []
    w = lines.append
    w("### Run")
    w("")
    w("```")
    w(env)
    w("```")
    w("")

    # Scenario 1
    runs = wrk.get(("1", "all_on", 1))
    if runs:
        w("### 1. Plain chat, concurrency 1 (µs)")
        w("")
        w("| | p50 | p99 | p99.9 | requests/s | errors |")
        w("|---|---|---|---|---|---|")
        for t in ("direct", "hub", "floor"):
            rs = [runs[k][t] for k in runs if t in runs[k]]
            if not rs:
                continue
            w(
                f"| {t} | {wrk_lat(rs, 'p50')} | "
                f"{wrk_lat(rs, 'p99')} | "
                f"{wrk_lat(rs, 'p999')} | "
                f"{fmt(med(r['wrk']['rps'] for r in rs))} | "
                f"{sum(wrk_errors(r) for r in rs)} |"
            )
        added = added_over_direct(runs, "hub", ("p50", "p99", "p999"))
        w(
            f"| **added by the hub** | **{fmt(added['p50'])}** | **{fmt(added['p99'])}** | "
            f"**{fmt(added['p999'])}** | | |"
        )
        floor1 = added_over_direct(runs, "floor", ("p50", "p99", "p999"))
        if floor1["p50"] is not None:
            w(
                f"| added by the floor (hub-floor) | {fmt(floor1['p50'])} | {fmt(floor1['p99'])} | "
                f"{fmt(floor1['p999'])} | | |"
            )
        w("")
        w(
            f"Target: added p50 ≤ 50 µs ({verdict(added['p50'] is not None and added['p50'] <= 50)}), "
            f"p99 ≤ 250 µs ({verdict(added['p99'] is not None and added['p99'] <= 250)})."
        )
        if floor1["p50"] is not None:
            w(floor_note(floor1, added, 50, 250))
        w("")
        breakdown = [  # config, target, row name, hub CPU
            ("all_on", "hub", "everything on (the row above)", "0"),
            ("all_off", "hub", "everything off", "0"),
            ("all_on_same_cpu", "hub", "everything on", "1, with the mock and wrk"),
            ("all_off_same_cpu", "hub", "everything off", "1, with the mock and wrk"),
            ("all_on", "floor", "the floor (hub-floor: no gateway logic)", "0"),
            ("floor_same_cpu", "floor", "the floor (hub-floor: no gateway logic)", "1, with the mock and wrk"),
        ]
        if any(
            t in v for cfg, t, _, _ in breakdown[1:] for v in wrk.get(("1", cfg, 1), {}).values()
        ):
            w("Where the added latency comes from (µs; each hub row minus the direct row of its run):")
            w("")
            # Thread switches a request, where the runs counted them.
            switches = any(
                "hub_ctx_switches" in v[t]
                for cfg, t, _, _ in breakdown
                for v in wrk.get(("1", cfg, 1), {}).values()
                if t in v
            )
            w(
                "| hub | hub on CPU | hub p50 | added p50 | added p99 | hub CPU µs/request |"
                + (" thread switches/request |" if switches else "")
            )
            w("|---|---|---|---|---|---|" + ("---|" if switches else ""))
            for cfg, t, name, cpu in breakdown:
                hub_runs = wrk.get(("1", cfg, 1))
                if not hub_runs:
                    continue
                pairs = [
                    (hub_runs[k][t], runs[k]["direct"])
                    for k in hub_runs
                    if t in hub_runs[k] and k in runs and "direct" in runs[k]
                ]
                if not pairs:
                    continue
                add = {
                    q: med(h["wrk"]["lat_us"][q] - d["wrk"]["lat_us"][q] for h, d in pairs)
                    for q in ("p50", "p99")
                }
                w(
                    f"| {name} | {cpu} | {fmt(med(h['wrk']['lat_us']['p50'] for h, _ in pairs))} | "
                    f"{fmt(add['p50'])} | {fmt(add['p99'])} | "
                    f"{fmt(med(cpu_us_per_req(h) for h, _ in pairs), '', 1)} |"
                    + (f" {fmt(med(switches_per_req(h) for h, _ in pairs), '', 1)} |" if switches else "")
                )
            w("")
            w(
                "The direct path never crosses CPUs (wrk and the mock share CPU 1); a call through the "
                "hub on CPU 0 crosses four times (wrk → hub → mock → hub → wrk), and at concurrency 1 each "
                "crossing wakes an idle virtual CPU. The same-CPU rows take those wake-ups out."
            )
            w("")

    # Scenario 2
    for cfg, title in (("all_on", "mock at 0 ms"), ("all_on_60ms", "mock at 60 ms")):
        runs = wrk.get(("2", cfg, 64))
        if not runs:
            continue
        w(f"### 2. Plain chat, concurrency 64, everything on ({title})")
        w("")
        w("| | requests/s | p50 µs | p99 µs | hub CPU µs/request | hub CPU busy | hub VmHWM | errors |")
        w("|---|---|---|---|---|---|---|---|")
        for t in ("direct", "hub", "floor"):
            rs = [runs[k][t] for k in runs if t in runs[k]]
            if not rs:
                continue
            hubby = t != "direct"
            w(
                f"| {t} | {fmt(med(r['wrk']['rps'] for r in rs))} | "
                f"{wrk_lat(rs, 'p50')} | "
                f"{wrk_lat(rs, 'p99')} | "
                f"{fmt(med(cpu_us_per_req(r) for r in rs), '', 1) if hubby else ''} | "
                f"{fmt(med(busy_pct(r) for r in rs), ' %') if hubby else ''} | "
                f"{fmt(med((r['hub_vmhwm_kb'] or 0) / 1024 for r in rs), ' MB', 1) if hubby else ''} | "
                f"{sum(wrk_errors(r) for r in rs)} |"
            )
        ratio = med(
            runs[k]["hub"]["wrk"]["rps"] / runs[k]["direct"]["wrk"]["rps"]
            for k in runs
            if {"hub", "direct"} <= runs[k].keys()
        )
        hub_rs = [runs[k]["hub"] for k in runs if "hub" in runs[k]]
        rps = med(r["wrk"]["rps"] for r in hub_rs)
        cpu = med(cpu_us_per_req(r) for r in hub_rs)
        w("")
        w(f"Hub / direct throughput: {fmt(ratio, '', 2)}.")
        sw = {
            t: med(switches_per_req(runs[k][t]) for k in runs if t in runs[k])
            for t in ("hub", "floor")
        }
        if sw["hub"] is not None:
            w(
                f"Thread switches a request (`/proc`, all threads): hub {fmt(sw['hub'], '', 2)}"
                + (f", floor {fmt(sw['floor'], '', 2)}" if sw["floor"] is not None else "")
                + "."
            )
        stores = [r["store"] for r in hub_rs if r.get("store") and r["store"]["commits"] > 0]
        if stores:
            w(
                "The store's group commits in the window (from `/metrics`): "
                f"{fmt(med(x['calls'] / x['commits'] for x in stores), '', 1)} calls "
                "(usage records plus reservations) per commit, "
                f"{fmt(med(x['commit_s'] * 1e6 / x['commits'] for x in stores), ' µs', 0)} "
                "from BEGIN to COMMIT on average (medians of the runs)."
            )
        if cfg == "all_on":
            w(
                f"Target: ≥ 20,000 requests/s ({verdict(rps is not None and rps >= 20_000)}); "
                f"hub CPU ≤ 50 µs/request ({verdict(cpu is not None and cpu <= 50)})."
            )
            floor_rs = [runs[k]["floor"] for k in runs if "floor" in runs[k]]
            if floor_rs and cpu is not None:
                fcpu = med(cpu_us_per_req(r) for r in floor_rs)
                frps = med(r["wrk"]["rps"] for r in floor_rs)
                w(
                    f"The floor (hub-floor, a bare proxy on the same stack and CPU) served {fmt(frps)} "
                    f"requests/s ({'at or above' if frps is not None and frps >= 20_000 else 'below'} the "
                    f"20,000 target) at {fmt(med(busy_pct(r) for r in floor_rs), ' %')} of its CPU, and used "
                    f"{fmt(fcpu, '', 1)} µs of CPU a request: the gateway's own work is "
                    f"{fmt(cpu - fcpu, '', 1)} µs of the hub's {fmt(cpu, '', 1)}."
                )
        w("")

    # Scenario 3
    if streams:
        w("### 3. Streaming (mock: 10 ms between chunks), everything on (µs unless noted)")
        w("")
        w(
            "| concurrency | target | streams/s | TTFB p50 | TTFB p99 | total p50 | total p99 | "
            "gap p50 | gap p99 | hub CPU µs/stream | errors |"
        )
        w("|---|---|---|---|---|---|---|---|---|---|---|")
        ttfb_added = {}
        for conc in sorted(streams):
            runs = streams[conc]
            for t in ("direct", "hub", "floor"):
                rs = [runs[k][t]["stream"] for k in runs if t in runs[k]]
                raw = [runs[k][t] for k in runs if t in runs[k]]
                if not rs:
                    continue
                g = lambda field, q: med(r[field][q] if r[field] else None for r in rs)  # noqa: E731
                cpu = (
                    med(r["hub_cpu_ticks"] * TICK_US / r["stream"]["streams"] for r in raw if r["stream"]["streams"])
                    if t != "direct"
                    else None
                )
                w(
                    f"| {conc} | {t} | {fmt(med(r['streams_per_s'] for r in rs))} | "
                    f"{fmt(g('ttfb_us', 'p50'))} | {fmt(g('ttfb_us', 'p99'))} | "
                    f"{fmt(g('total_us', 'p50'))} | {fmt(g('total_us', 'p99'))} | "
                    f"{fmt(g('gap_us', 'p50'))} | {fmt(g('gap_us', 'p99'))} | "
                    f"{fmt(cpu, '', 0) if cpu is not None else ''} | {sum(r['errors'] for r in rs)} |"
                )
            ttfb_added[conc] = ttfb_over_direct(runs, "hub")
        w("")
        for conc, a in ttfb_added.items():
            w(f"- added TTFB at concurrency {conc}: p50 {fmt(a['p50'])} µs, p99 {fmt(a['p99'])} µs")
        a16 = ttfb_added.get(16, {}).get("p50")
        w("")
        w(f"Target: added TTFB p50 ≤ 100 µs at concurrency 16 ({verdict(a16 is not None and a16 <= 100)}).")
        floor16 = ttfb_over_direct(streams.get(16, {}), "floor")
        if floor16["p50"] is not None:
            w(
                f"The floor (hub-floor) added p50 {fmt(floor16['p50'])} µs, p99 {fmt(floor16['p99'])} µs "
                "to the first byte at concurrency 16."
            )
            if a16 is not None:
                w(floor_note(floor16, ttfb_added[16], 100, None))
        if stream_parts and 16 in streams:
            # Each breakdown run against the direct run of the same round.
            direct16 = {k: v["direct"]["stream"]["ttfb_us"] for k, v in streams[16].items() if "direct" in v}
            w("")
            w("Where concurrency 16's added time to first byte comes from (hub minus direct, same round):")
            w("")
            w("| configuration | added TTFB p50 µs | added TTFB p99 µs | hub CPU µs/stream |")
            w("|---|---|---|---|")
            names = {
                "all_on": "everything on",
                "no_reservation": "everything on but the credit reservation",
                "all_off": "everything off",
                "floor": "the floor (hub-floor: no gateway logic)",
            }
            parts = {
                "all_on": {k: v["hub"] for k, v in streams[16].items() if "hub" in v},
                **stream_parts,
                "floor": {k: v["floor"] for k, v in streams[16].items() if "floor" in v},
            }
            for cfg in ("all_on", "no_reservation", "all_off", "floor"):
                if not parts.get(cfg):
                    continue
                runs = parts.get(cfg, {})
                added = {
                    q: med(
                        r["stream"]["ttfb_us"][q] - direct16[k][q]
                        for k, r in runs.items()
                        if k in direct16 and r["stream"]["ttfb_us"] and direct16[k]
                    )
                    for q in ("p50", "p99")
                }
                cpu = med(
                    r["hub_cpu_ticks"] * TICK_US / r["stream"]["streams"] for r in runs.values() if r["stream"]["streams"]
                )
                w(f"| {names[cfg]} | {fmt(added['p50'])} | {fmt(added['p99'])} | {fmt(cpu, '', 0) if cpu is not None else ''} |")
        w("")

    # Scenario 4
    if hold:
        over = {
            "http1": "plain HTTP/1.1, a connection per stream",
            "https_h2": "HTTPS offering HTTP/2 (hub-mock --tls-dir)",
        }.get(upstream, upstream)
        w(
            f"### 4. {hold['streams']:,} long streams open at once (mock: 1 chunk/s; upstream over "
            f"{over}), everything on"
        )
        w("")
        w("| opened | time to open all | hub RSS idle | hub RSS while open (max) | hub CPU while open | completed | errors |")
        w("|---|---|---|---|---|---|---|")
        w(
            f"| {hold['opened']:,} | {hold['seconds_to_open_all']:.1f} s | {hold['hub_rss_idle_mb']:.1f} MB | "
            f"{hold['hub_rss_open_max_mb']:.1f} MB | {hold['hub_cpu_pct_while_open']:.1f} % | "
            f"{hold['completed_ok']:,} | {hold['errors']} |"
        )
        if hold.get("first_error"):
            w("")
            w(f"First error: `{hold['first_error']}`")
        w("")
        ok = hold["opened"] >= 5000 and hold["hub_rss_open_max_mb"] <= 200
        w(f"Target: 5,000 open streams with hub RSS ≤ 200 MB ({verdict(ok if hold['streams'] >= 5000 else None)}).")
        w("")

    # Scenario 5
    cfgs = [
        ("off", "everything off"),
        ("auth", "auth only"),
        ("limits", "+ per-key limits"),
        ("reservation", "+ credit reservation"),
        ("usage_log", "+ durable usage log (= everything on)"),
    ]
    if any(("5", c, 64) in wrk for c, _ in cfgs):
        w("### 5. What each part costs (plain chat, concurrency 64, SQLite)")
        w("")
        w(
            "| configuration | requests/s | vs everything off | p99 µs | hub CPU µs/request | hub CPU busy | "
            "in store transactions µs/request |"
        )
        w("|---|---|---|---|---|---|---|")
        base = None
        rps_of = {}
        for c, label in cfgs:
            runs = wrk.get(("5", c, 64))
            if c in missing:
                w(f"| {label} | not yet implemented (no `{c}` switch in this build) | | | | | |")
                continue
            if not runs:
                continue
            rs = [runs[k]["hub"] for k in runs if "hub" in runs[k]]
            rps = med(r["wrk"]["rps"] for r in rs)
            rps_of[c] = rps
            if c == "off":
                base = rps
            w(
                f"| {label} | {fmt(rps)} | {fmt(rps / base * 100 if base and rps else None, ' %')} | "
                f"{wrk_lat(rs, 'p99')} | "
                f"{fmt(med(cpu_us_per_req(r) for r in rs), '', 1)} | {fmt(med(busy_pct(r) for r in rs), ' %')} | "
                f"{fmt(med(store_us_per_req(r) for r in rs), '', 1)} |"
            )
        runs = wrk.get(("5", "direct", 64))
        if runs:
            rs = [runs[k]["direct"] for k in runs if "direct" in runs[k]]
            w(f"| direct to the mock | {fmt(med(r['wrk']['rps'] for r in rs))} | | {wrk_lat(rs, 'p99')} | | | |")
        w("")
        on = rps_of.get("usage_log")
        before = rps_of.get("limits", rps_of.get("auth"))
        if base and on and before:
            cost = (before - on) / base * 100
            note = "" if "reservation" not in missing else " (reservation not yet implemented: usage log alone)"
            w(
                f"Usage log + reservation cost: {cost:.1f} % of everything-off throughput{note}; "
                f"everything on vs everything off: {(base - on) / base * 100:.1f} % lower. "
                f"Target ≤ 15 % ({verdict(cost <= 15)})."
            )
        w("")

    # Scenario 7
    quiet, busy = wrk.get(("7", "no_streams", 64)), wrk.get(("7", "with_streams", 64))
    if quiet and busy:

        def net_cpu_us_per_req(target, run, r):
            # CPU over wrk's window less what the open streams took alone at the same rate
            # (measured just before), per request.
            alone = mixed_only.get((target, run))
            req = r["wrk"]["requests"]
            if not alone or not req or not alone["duration_us"]:
                return None
            ticks = r["hub_cpu_ticks"] - r["hub_cpu_ticks_before"]
            streams_us = alone["hub_cpu_ticks"] * TICK_US / alone["duration_us"] * r["wrk"]["duration_us"]
            return (ticks * TICK_US - streams_us) / req

        n = med(h["opened"] for h in mixed_hold.values()) if mixed_hold else None
        w(f"### 7. Plain chat at concurrency 64 while {fmt(n)} long streams are open")
        w("")
        w("| | requests/s | p50 µs | p99 µs | p99.9 µs | CPU µs/request | streams alone | load CPU busy | errors |")
        w("|---|---|---|---|---|---|---|---|---|")
        for t in ("hub", "floor"):
            for label, runs, net in (("no streams open", quiet, False), ("streams open", busy, True)):
                rs = [(k, runs[k][t]) for k in runs if t in runs[k]]
                if not rs:
                    continue
                plain = [r for _, r in rs]
                cpu = med(net_cpu_us_per_req(t, k, r) if net else cpu_us_per_req(r) for k, r in rs)
                alone = med(
                    a["hub_cpu_ticks"] * TICK_US / a["duration_us"] * 100
                    for (tt, _), a in mixed_only.items()
                    if tt == t and a["duration_us"]
                )
                w(
                    f"| {t}, {label} | {fmt(med(r['wrk']['rps'] for r in plain))} | "
                    f"{wrk_lat(plain, 'p50')} | "
                    f"{wrk_lat(plain, 'p99')} | "
                    f"{wrk_lat(plain, 'p999')} | "
                    f"{fmt(cpu, '', 1)}{' (net of the streams)' if net else ''} | "
                    f"{fmt(alone, ' % of a core', 1) if net else ''} | "
                    f"{fmt(med(v['with_streams' if net else 'no_streams'] for (tt, _), v in mixed_load.items() if tt == t), ' %', 1)} | "
                    f"{sum(wrk_errors(r) for r in plain)} |"
                )
        w("")
        quiet1, busy1 = wrk.get(("7", "no_streams", 1)), wrk.get(("7", "with_streams", 1))
        if quiet1 and busy1:
            # Another call's latency beside the streams, with no queue of calls in front of it.
            w("The same at concurrency 1 (µs):")
            w("")
            w("| | requests/s | p50 | p99 | p99.9 | max | errors |")
            w("|---|---|---|---|---|---|---|")
            for t in ("hub", "floor"):
                for label, runs in (("no streams open", quiet1), ("streams open", busy1)):
                    rs = [runs[k][t] for k in runs if t in runs[k]]
                    if not rs:
                        continue
                    w(
                        f"| {t}, {label} | {fmt(med(r['wrk']['rps'] for r in rs))} | {wrk_lat(rs, 'p50')} | "
                        f"{wrk_lat(rs, 'p99')} | {wrk_lat(rs, 'p999')} | {wrk_lat(rs, 'max')} | "
                        f"{sum(wrk_errors(r) for r in rs)} |"
                    )
            w("")
        for t in ("hub", "floor"):
            hs = [h for (tt, _), h in mixed_hold.items() if tt == t]
            if not hs:
                continue
            ok = sum(h["completed_ok"] for h in hs)
            errs = sum(h["errors"] for h in hs)
            total = sum(h["streams"] for h in hs)
            w(f"Streams completed through the {t}: {ok:,} of {total:,} ({errs} errors).")
            rss = [h["hub_rss_open_max_mb"] for h in hs]
            w(f"Max RSS while the streams were open, each run: {', '.join(f'{x:.1f}' for x in rss)} MB.")
            load_busy = [v["with_streams"] for (tt, _), v in mixed_load.items() if tt == t]
            if load_busy and max(load_busy) >= 90:
                w(
                    f"The load generator's CPU was {max(load_busy):.0f} % busy with the streams open through the {t}: "
                    "its requests/s there are the load side's limit, not the target's."
                )
            first = next((h["first_error"] for h in hs if h.get("first_error")), None)
            if first:
                w(f"First error: `{first}`")
        w("")

    print("\n".join(lines))


if __name__ == "__main__":
    main()
