#!/usr/bin/env python3
"""Figures of scripts/bench-load.sh and scripts/bench-all.sh.

  bench_report.py progress MANIFEST CLK_TCK RUNS     the manifest's last run, one line
  bench_report.py report MANIFEST CLK_TCK RUNS JSON DURATION WARMUP SHARDS THREADS
                  SERVER_CPUS LOAD_CPUS BUSY_POLL_US GIT STAMP
                                                      writes JSON, prints markdown tables
  bench_report.py benchmarks --json JSON --out PATH [--meta KEY=VALUE]...
                  [--alloc-log PATH --alloc-status N]
                                                      writes BENCHMARKS.md from JSON

The manifest (written by bench-load.sh) has one tab-separated line per run: run, workload,
server, result JSON, client exit status, server CPU ticks before / at the window's start / at
its end / after, the window's wall-clock start and end, the server command, the client command.
"""

import argparse
import json
import re
import statistics
import sys

# workload: (figure, figure unit, better, CPU-per-unit unit, CPU scale, unit per CPU-second)
# The figure is what the workload is about; `better` says which way is good. The server's
# CPU cost is per unit of work: per byte (bulk), request (rr, datagrams, rtt) or connection.
WORKLOADS = {
    "bulk": ("throughput", "Gbit/s", "higher", "ns/byte", 1e9, "bytes"),
    "rr": ("throughput", "requests/s", "higher", "µs/request", 1e6, "requests"),
    "handshakes": ("rate", "connections/s", "higher", "µs/connection", 1e6, "connections"),
    "resumed": ("rate", "connections/s", "higher", "µs/connection", 1e6, "connections"),
    "0rtt": ("rate", "connections/s", "higher", "µs/connection", 1e6, "connections"),
    "datagrams": ("throughput", "requests/s", "higher", "µs/request", 1e6, "requests"),
    "rtt": ("p50 round trip", "µs", "lower", "µs/request", 1e6, "requests"),
    "rtt-busy": ("p50 round trip", "µs", "lower", "µs/request", 1e6, "requests"),
}

SERVER_NAMES = {"quring": "quring", "quinn": "quinn + tokio", "udp-echo": "udp-echo"}


def finite(x):
    return x if isinstance(x, (int, float)) and x == x and abs(x) != float("inf") else None


def figure(workload, load):
    if workload == "bulk":
        return load["gbit_per_s"]
    if workload in ("rr", "datagrams"):
        return load["requests_per_s"]
    if workload.startswith("rtt"):
        return load["latency_us"]["p50"] if load["latency_us"]["count"] else None
    return load["connections"]["per_s"]


def units_per_s(workload, load):
    """Units of work per second, for the CPU cost per unit."""
    if workload == "bulk":
        return load["gbit_per_s"] * 1e9 / 8
    if workload in ("rr", "datagrams") or workload.startswith("rtt"):
        return load["requests_per_s"]
    return load["connections"]["per_s"]


def records(manifest, hz):
    out = []
    with open(manifest) as f:
        for line in f:
            (run, w, s, path, rc, before, warm, end, after, t_warm, t_end, server_cmd,
             load_cmd) = line.rstrip("\n").split("\t")
            with open(path) as j:
                load = json.load(j)
            name, unit, better, cost_unit, scale, _ = WORKLOADS[w]
            window = float(t_end) - float(t_warm)
            cpu = (int(end) - int(warm)) / hz
            units = units_per_s(w, load) * window
            conns = load.get("connections", {})
            # An empty histogram (no request finished in the window) has no percentiles.
            lat = load["latency_us"] if load["latency_us"]["count"] else {}
            out.append({
                "run": int(run), "workload": w, "server": s, "exit_status": int(rc),
                "server_command": server_cmd, "load_command": load_cmd,
                "figure": figure(w, load), "figure_name": name, "figure_unit": unit,
                "better": better,
                "cpu_per_unit": finite(cpu * scale / units) if units > 0 else None,
                "cpu_per_unit_unit": cost_unit,
                "latency_p50_us": lat.get("p50"),
                "latency_p99_us": lat.get("p99"),
                "resumed_pct": conns.get("resumed_pct"),
                "zero_rtt_pct": conns.get("zero_rtt_pct"),
                "errors": load["errors"]["total"],
                "server_cpu": {
                    "clk_tck": hz, "window_s": cpu, "window_wall_s": window,
                    "window_busy": finite(cpu / window) if window > 0 else None,
                    "total_s": (int(after) - int(before)) / hz,
                    "ticks": {"before": int(before), "window_start": int(warm),
                              "window_end": int(end), "after": int(after)},
                },
                "load": load,
            })
    return out


def fmt(x, digits=2):
    return "n/a" if x is None else f"{x:,.{digits}f}"


def pct(x):
    return "–" if x is None else f"{x:.0f}%"


def progress(argv):
    manifest, hz, runs = argv
    r = records(manifest, int(hz))[-1]
    busy = r["server_cpu"]["window_busy"]
    print(f"  run {r['run']}/{runs} {r['workload']:<10} {r['server']:<8} "
          f"{fmt(r['figure']):>12} {r['figure_unit']:<13} server CPU "
          f"{fmt(r['cpu_per_unit'], 3):>9} {r['cpu_per_unit_unit']:<13} "
          f"(busy {fmt(None if busy is None else busy * 100, 0)}%, p99 "
          f"{fmt(r['latency_p99_us'], 1)} µs, resumed {pct(r['resumed_pct'])}, "
          f"0-RTT {pct(r['zero_rtt_pct'])}, errors {r['errors']})")


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def ratio(a, b):
    return finite(a / b) if a is not None and b else None


def summarize(runs_):
    """Medians per workload and server, and the ratios between servers."""
    workloads, servers = [], []
    for r in runs_:
        if r["workload"] not in workloads:
            workloads.append(r["workload"])
        if r["server"] not in servers:
            servers.append(r["server"])
    summary, ratios = [], []
    for w in workloads:
        row = {}
        for s in servers:
            rs = [r for r in runs_ if r["workload"] == w and r["server"] == s]
            if not rs:
                continue
            row[s] = {
                "workload": w, "server": s, "runs": len(rs),
                "figure": median([r["figure"] for r in rs]),
                "figure_name": rs[0]["figure_name"],
                "figure_unit": rs[0]["figure_unit"],
                "better": rs[0]["better"],
                "cpu_per_unit": median([r["cpu_per_unit"] for r in rs]),
                "cpu_per_unit_unit": rs[0]["cpu_per_unit_unit"],
                "latency_p50_us": median([r["latency_p50_us"] for r in rs]),
                "latency_p99_us": median([r["latency_p99_us"] for r in rs]),
                "resumed_pct": median([r["resumed_pct"] for r in rs]),
                "zero_rtt_pct": median([r["zero_rtt_pct"] for r in rs]),
                "errors": sum(r["errors"] for r in rs),
                "server_command": rs[0]["server_command"],
                "load_command": rs[0]["load_command"],
            }
            summary.append(row[s])
        q, n, u = row.get("quring"), row.get("quinn"), row.get("udp-echo")
        entry = {"workload": w}
        if q and n:
            lower = q["better"] == "lower"
            # Above 1: quring better (faster, or a shorter round trip).
            entry["figure_quring_vs_quinn"] = (
                ratio(n["figure"], q["figure"]) if lower else ratio(q["figure"], n["figure"]))
            entry["cpu_per_unit_quinn_over_quring"] = ratio(n["cpu_per_unit"], q["cpu_per_unit"])
        if q and u:
            entry["p50_quring_over_udp_echo"] = ratio(q["latency_p50_us"], u["latency_p50_us"])
        if len(entry) > 1:
            ratios.append(entry)
    return summary, ratios


def report(argv):
    (manifest, hz, runs, out, duration, warmup, shards, threads, server_cpus, load_cpus,
     busy_poll_us, rev, stamp) = argv
    runs_ = records(manifest, int(hz))
    summary, ratios = summarize(runs_)
    doc = {
        "schema": "quring-bench-load/2",
        "time": stamp,
        "git": rev,
        "config": {
            "runs": int(runs), "duration_s": float(duration), "warmup_s": float(warmup),
            "shards": int(shards), "load_threads": int(threads),
            "server_cpus": server_cpus, "load_cpus": load_cpus,
            "busy_poll_us": int(busy_poll_us),
        },
        "summary": summary,
        "ratios": ratios,
        "runs": runs_,
    }
    with open(out, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")

    print(f"### quring vs quinn + tokio under `quring load` (udp-echo under `udp_rtt`): medians "
          f"of {runs} run(s), {duration} s each after {warmup} s of warm-up\n")
    print(f"{shards} server shard(s) / tokio worker thread(s) on CPUs {server_cpus}; "
          f"{threads} load thread(s) on CPUs {load_cpus}. Server CPU per unit: utime + stime "
          f"over the measured window, divided by the units served in it.\n")
    print("| workload | server | figure | server CPU per unit | p50 | p99 | resumed | 0-RTT "
          "| errors |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in summary:
        print(f"| {r['workload']} | {r['server']} | {fmt(r['figure'])} {r['figure_unit']} | "
              f"{fmt(r['cpu_per_unit'], 3)} {r['cpu_per_unit_unit']} | "
              f"{fmt(r['latency_p50_us'], 1)} µs | {fmt(r['latency_p99_us'], 1)} µs | "
              f"{pct(r['resumed_pct'])} | {pct(r['zero_rtt_pct'])} | {r['errors']} |")
    if ratios:
        print("\n| workload | figure quring vs quinn (>1: quring better) | "
              "CPU per unit quinn/quring (>1: quring cheaper) | p50 quring/udp-echo |")
        print("|---|---:|---:|---:|")
        for r in ratios:
            cells = [r.get("figure_quring_vs_quinn"), r.get("cpu_per_unit_quinn_over_quring"),
                     r.get("p50_quring_over_udp_echo")]
            print(f"| {r['workload']} | " + " | ".join(
                "–" if c is None else f"{fmt(c)}x" for c in cells) + " |")
    print(f"\nAll runs: {out}")


# ---------------------------------------------------------------------------------------------
# BENCHMARKS.md

# The targets: (workload, what is compared, threshold, how it reads).
THROUGHPUT_TARGETS = {
    "bulk": 1.5,
    "rr": 2.0,
    "handshakes": 2.0,
    "resumed": 4.0,
}
RTT_OVER_UDP_TARGET = 1.2
BUSY_P50_TARGET_US = 15.0

WHAT = {
    "bulk": "one connection, one stream, 100 MB perf responses (`--protocol perf "
            "--request-size 0 --response-size 100000000`), again and again",
    "rr": "one connection, 100 concurrent streams, each a 1 KiB perf request answered with "
          "1 KiB (`--streams 100`)",
    "handshakes": "a new connection per request, 16 at once, full TLS 1.3 handshakes "
                  "(`--new-conn-per-request --conns 16`, 1 KiB perf response)",
    "resumed": "as handshakes, each connection resuming with a single-use ticket "
               "(`--resume`)",
    "0rtt": "as resumed, with the request sent as 0-RTT data (`--resume --0rtt`)",
    "datagrams": "one connection, 100 QUIC DATAGRAM frames of 1 KiB in flight, echoed "
                 "(`--datagrams --streams 100 --protocol echo`)",
    "rtt": "one connection, one stream at a time, 64 B echoed (`--conns 1 --streams 1 "
           "--request-size 64 --protocol echo`), closed loop; udp-echo: one 64 B datagram at "
           "a time (`udp_rtt --size 64`)",
    "rtt-busy": "as rtt, with `--busy-poll-us` on the quring server (QUIC and udp-echo) and on "
                "both clients; quinn + tokio cannot spin, only its client does",
}


def cell(x, digits=2, unit=""):
    return "n/a" if x is None else f"{x:,.{digits}f}{unit}"


def met(ok):
    return "n/a" if ok is None else ("yes" if ok else "**no**")


def per_cpu_second(row):
    """Units served per server CPU-second (the inverse of the CPU per unit)."""
    cost = row and row["cpu_per_unit"]
    if not cost:
        return None
    return WORKLOADS[row["workload"]][4] / cost


def short(cmd, bins):
    for path, name in bins:
        if path:
            cmd = cmd.replace(path, name)
    return re.sub(r"--json \S+", "--json RUN.json", cmd)


def benchmarks(argv):
    p = argparse.ArgumentParser(prog="bench_report.py benchmarks")
    p.add_argument("--json", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--meta", action="append", default=[])
    p.add_argument("--alloc-log")
    p.add_argument("--alloc-status")
    a = p.parse_args(argv)
    meta = dict(m.split("=", 1) for m in a.meta)
    with open(a.json) as f:
        doc = json.load(f)
    cfg = doc["config"]
    rows = {}
    for r in doc["summary"]:
        rows.setdefault(r["workload"], {})[r["server"]] = r
    ratios = {r["workload"]: r for r in doc["ratios"]}
    bins = [(meta.get("quring_bin"), "quring"), (meta.get("quinn_peer_bin"), "quinn_peer"),
            (meta.get("udp_rtt_bin"), "udp_rtt")]

    # The targets table: one line per target of the issue.
    targets = []
    for w, want in THROUGHPUT_TARGETS.items():
        row = rows.get(w, {})
        q, n = row.get("quring"), row.get("quinn")
        r = ratios.get(w, {}).get("cpu_per_unit_quinn_over_quring")
        unit = WORKLOADS[w][5]
        targets.append((f"{w}: {unit} per server CPU-second",
                        cell(per_cpu_second(q), 0), cell(per_cpu_second(n), 0), "",
                        cell(r, 2, "x"), f"≥ {want}x", met(None if r is None else r >= want)))
    for w in ("rtt", "rtt-busy"):
        row = rows.get(w, {})
        q, n, u = row.get("quring"), row.get("quinn"), row.get("udp-echo")
        r = ratios.get(w, {}).get("p50_quring_over_udp_echo")
        targets.append((f"{w}: p50 round trip, quring / udp-echo",
                        cell(q and q["latency_p50_us"], 1, " µs"),
                        cell(n and n["latency_p50_us"], 1, " µs"),
                        cell(u and u["latency_p50_us"], 1, " µs"),
                        cell(r, 2, "x"), f"≤ {RTT_OVER_UDP_TARGET}x",
                        met(None if r is None else r <= RTT_OVER_UDP_TARGET)))
    q = rows.get("rtt-busy", {}).get("quring")
    p50 = q and q["latency_p50_us"]
    targets.append(("rtt-busy: p50 round trip, quring", cell(p50, 1, " µs"), "", "", "",
                    f"≤ {BUSY_P50_TARGET_US:.0f} µs",
                    met(None if p50 is None else p50 <= BUSY_P50_TARGET_US)))
    alloc_value, alloc_met = "not measured", "n/a"
    if a.alloc_log:
        with open(a.alloc_log, errors="replace") as f:
            lines = [l.strip() for l in f]
        # tests/allocations.rs prints one summary line per workload.
        found = [l for l in lines if l.startswith("allocations per datagram")]
        passed = a.alloc_status == "0"
        alloc_value = "; ".join(found[-3:]) or ("test passed" if passed else "test failed")
        alloc_met = "test passed" if passed else f"**test failed (status {a.alloc_status})**"
    targets.append(("allocations per datagram (quring)", alloc_value, "", "", "", "0",
                    alloc_met))

    out = []
    w_ = out.append
    w_("# Benchmarks\n")
    w_(f"Written by `scripts/bench-all.sh` on {meta.get('date', doc['time'])}, commit "
       f"`{meta.get('commit', doc['git'])}`.\n")
    w_(f"**Machine:** {meta.get('cpu', '?')}, {meta.get('cores', '?')} CPUs, "
       f"kernel {meta.get('kernel', '?')}. Load average (1/5/15 min) "
       f"{meta.get('load_before', '?')} before the runs, {meta.get('load_after', '?')} after.\n")
    w_(f"**Machine state:** {meta.get('note') or 'not described (scripts/bench-all.sh --note)'}")
    w_("")
    w_(f"**Settings:** medians of {cfg['runs']} run(s) per cell, each {cfg['duration_s']:g} s "
       f"measured after {cfg['warmup_s']:g} s of warm-up; {cfg['shards']} server shard(s) / "
       f"tokio worker thread(s) pinned to CPU(s) {cfg['server_cpus']}, {cfg['load_threads']} "
       f"load thread(s) on CPU(s) {cfg['load_cpus']}; busy-poll {cfg['busy_poll_us']} µs in "
       f"rtt-busy; loopback (127.0.0.1). Every run starts a fresh server (fresh certificate, "
       f"empty ticket caches) and stops it after the run. Raw runs: `{meta.get('json_name', a.json)}`.\n")
    w_(f"Reproduce: `{meta.get('command', 'scripts/bench-all.sh')}`\n")

    w_("## Targets\n")
    w_("Ratios against quinn + tokio are taken in the same run with the same client "
       "(`quring load`); per server CPU-second means units of work divided by the server's "
       "utime + stime over the measured window.\n")
    w_("| target | quring | quinn + tokio | udp-echo | ratio | target | met? |")
    w_("|---|---:|---:|---:|---:|---:|---|")
    for t in targets:
        w_("| " + " | ".join(t) + " |")
    w_("")

    w_("## What each column measures\n")
    w_("- **quring**: `quring serve --app echo,perf,discard` (`--app udp-echo` for the "
       "udp-echo column), pinned with `taskset` to the server CPUs.")
    w_("- **quinn + tokio**: `examples/quinn_peer.rs`, the same apps, TLS and transport "
       "settings on quinn 0.11 and a multi-threaded tokio runtime with as many workers as "
       "quring has shards.")
    w_("- **udp-echo**: `quring serve --app udp-echo`, the same sockets, io_uring datapath "
       "and counters with no QUIC: each datagram goes straight back. Driven by "
       "`examples/udp_rtt.rs`, a plain connected std UDP socket with one datagram in flight "
       "(spinning on a non-blocking `recv` for `--busy-poll-us` before blocking), so its round "
       "trip is the physical limit: kernel, loopback and the datapath, with no protocol and "
       "the cheapest client there is. The QUIC round trip adds, on both ends, QUIC packet "
       "protection, stream framing, ACKs and the load generator's own io_uring loop; the "
       "≤ 1.2x target is against this floor.")
    w_("- **Throughput** is what the load client counted in the measured window; **server CPU "
       "per unit** divides the server process's utime + stime in that window (from "
       "`/proc/PID/stat`) by the units served; **per server CPU-second** is its inverse. "
       "**p50 / p99** are the client's request latencies (HdrHistogram, from sending a "
       "request to its last response byte; for handshake workloads this includes the "
       "handshake).")
    w_("- **ratio**: for throughput and rate, quinn's CPU per unit over quring's (how much "
       "more work quring does per CPU-second); for round trips, quring's p50 over "
       "udp-echo's. Above 1 is better for CPU ratios, below the target for round trips.\n")

    w_("## Workloads\n")
    for w in WORKLOADS:
        row = rows.get(w)
        if not row:
            continue
        name, unit, better, cost_unit, _, per = WORKLOADS[w]
        servers = [s for s in ("quring", "quinn", "udp-echo") if s in row]
        rt = ratios.get(w, {})
        w_(f"### {w}\n")
        w_(f"{WHAT[w]}.\n")
        w_("| metric | " + " | ".join(SERVER_NAMES[s] for s in servers) +
           " | ratio | target | met? |")
        w_("|---|" + "---:|" * len(servers) + "---:|---:|---|")

        def line(metric, values, r="", target="", ok=""):
            w_(f"| {metric} | " + " | ".join(values) + f" | {r} | {target} | {ok} |")

        vs = rt.get("figure_quring_vs_quinn")
        rtt = w.startswith("rtt")
        line(f"{name} ({unit})", [cell(row[s]["figure"], 1 if rtt else 2) for s in servers],
             cell(vs, 2, "x") + (" (quinn/quring)" if better == "lower" else " (quring/quinn)")
             if vs is not None else "")
        if rtt:
            r_udp = rt.get("p50_quring_over_udp_echo")
            line("p50 round trip against udp-echo", [""] * len(servers),
                 cell(r_udp, 2, "x (quring/udp-echo)") if r_udp is not None else "",
                 f"≤ {RTT_OVER_UDP_TARGET}x",
                 met(None if r_udp is None else r_udp <= RTT_OVER_UDP_TARGET))
            if w == "rtt-busy" and "quring" in row:
                p50 = row["quring"]["latency_p50_us"]
                line("p50 round trip, quring alone", [""] * len(servers), "",
                     f"≤ {BUSY_P50_TARGET_US:.0f} µs",
                     met(None if p50 is None else p50 <= BUSY_P50_TARGET_US))
        cpu_r = rt.get("cpu_per_unit_quinn_over_quring")
        want = THROUGHPUT_TARGETS.get(w)
        line(f"server CPU per unit ({cost_unit})",
             [cell(row[s]["cpu_per_unit"], 3) for s in servers])
        line(f"{per} per server CPU-second",
             [cell(per_cpu_second(row[s]), 0) for s in servers],
             cell(cpu_r, 2, "x") if cpu_r is not None else "",
             f"≥ {want}x" if want else "",
             met(None if cpu_r is None else cpu_r >= want) if want else "")
        if not rtt:
            line("p50 latency (µs)", [cell(row[s]["latency_p50_us"], 1) for s in servers])
        line("p99 latency (µs)", [cell(row[s]["latency_p99_us"], 1) for s in servers])
        if w in ("resumed", "0rtt"):
            line("resumed", [pct(row[s]["resumed_pct"]) for s in servers])
            line("0-RTT accepted", [pct(row[s]["zero_rtt_pct"]) for s in servers])
        line("errors (all runs)", [str(row[s]["errors"]) for s in servers])
        w_("\nCommands (the first run's; RUN.json is each run's own file):\n")
        w_("```sh")
        for s in servers:
            w_(f"taskset -c {cfg['server_cpus']} {short(row[s]['server_command'], bins)}")
            w_(f"taskset -c {cfg['load_cpus']} {short(row[s]['load_command'], bins)}")
        w_("```\n")
    if meta.get("quring_bin"):
        w_(f"Binaries: `quring` = `{meta['quring_bin']}`, `quinn_peer` = "
           f"`{meta.get('quinn_peer_bin', '?')}`, `udp_rtt` = `{meta.get('udp_rtt_bin', '?')}`.")
    with open(a.out, "w") as f:
        f.write("\n".join(out).rstrip("\n") + "\n")


if __name__ == "__main__":
    {"progress": progress, "report": report, "benchmarks": benchmarks}[sys.argv[1]](sys.argv[2:])
