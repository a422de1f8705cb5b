"""`latest.md` (the table, machine facts, details) and the PNG plots."""

from __future__ import annotations

import datetime
import math
from pathlib import Path
from typing import Any

from benchmarks.common import Context, fmt, percentile, say


def ratio_cell(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.2f}x"


def verdict(met: bool | None) -> str:
    return "" if met is None else ("yes" if met else "**no**")


def markdown(ctx: Context, plots: list[str], command: str) -> str:
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    out = [
        "# raybeam benchmarks",
        "",
        f"Run `{command}` on {now}. Every ratio is raybeam / a baseline measured in the same "
        "run; `better` says which way is good. Rates are the best of the rounds, latencies "
        "percentiles over all samples. The machine is shared, so the figures are noisy.",
        "",
        "## Machine",
        "",
        "| fact | value |",
        "| --- | --- |",
        *(f"| {k} | {v} |" for k, v in ctx.facts.items()),
        "",
        "## Results",
        "",
        "| benchmark | metric | raybeam | baseline | baseline value | ratio | better | target "
        "| met |",
        "| --- | --- | ---: | --- | ---: | ---: | --- | --- | --- |",
    ]
    for r in ctx.rows:
        out.append(
            f"| {r.benchmark} | {r.metric} | {fmt(r.value)} {r.unit} | {r.baseline_name} | "
            f"{fmt(r.baseline)} {r.unit} | {ratio_cell(r.ratio)} | {r.better} | {r.target} | "
            f"{verdict(r.met)} |"
        )
    out += details(ctx)
    if ctx.notes:
        out += ["", "## Notes", "", *(f"- {n}" for n in ctx.notes)]
    if plots:
        out += ["", "## Plots", "", *(f"![{Path(p).stem}]({p})" for p in plots)]
    return "\n".join(out) + "\n"


def details(ctx: Context) -> list[str]:
    out: list[str] = []
    scale = ctx.data.get("scale")
    if scale:
        out += [
            "",
            "## Scale",
            "",
            "| records held | put p50 (ms) | put p99 (ms) | status p50 (ms) | registry RSS "
            "(MiB) | fill time (s) |",
            "| ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for p in scale["points"]:
            out.append(
                f"| {p['records']:,} | {p['put_p50']:.2f} | {p['put_p99']:.2f} | "
                f"{p['status_p50']:.2f} | {p['rss_mib']:.0f} | {p['fill_s']:.1f} |"
            )
        out += [
            "",
            f"Registry memory: **{scale['per_record_bytes'] / 1024:.2f} KiB per record** "
            f"(RSS growth between the first and last level; {scale['empty_rss']:.0f} MiB "
            "with no records).",
        ]
    rec = ctx.data.get("recovery")
    if rec:
        out += [
            "",
            "## Recovery",
            "",
            f"{rec['unfinished_at_kill']} of {rec['n']} tasks were not COMPLETE when the "
            f"registry was killed; the next call had it back in {rec['registry_back_s']:.2f} s "
            f"and all tasks were final {rec['recovered_s']:.2f} s after the kill "
            f"(the same tasks without a kill: {rec['baseline_s']:.2f} s). Final statuses: "
            f"{rec['final_statuses']} (all {rec['n']} should be COMPLETE).",
        ]
    http = ctx.data.get("http")
    if http:
        out += [
            "",
            "## HTTP",
            "",
            "| endpoint | clients | requests | req/s | p50 (ms) | p99 (ms) | non-200 / errors |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for name, by_clients in http.items():
            for clients, res in by_clients.items():
                lat = res["latencies_ms"]
                bad = sum(c for code, c in res["codes"].items() if code != 200)
                out.append(
                    f"| {name} | {clients} | {len(lat)} | {res['rps']:.0f} | "
                    f"{percentile(lat, 50):.1f} | {percentile(lat, 99):.1f} | "
                    f"{bad} / {res['errors']} |"
                )
    runs = ctx.data.get("cpu_runs")
    if runs:
        roles = list(runs[0][2].cpu)
        out += [
            "",
            "## CPU per task",
            "",
            "CPU ms per task by process (psutil, no profiler attached; workers that exited "
            "during a run are left out), the cores busy over the wall time, and Ray's task "
            "workers (at most at once / started during the run).",
            "",
            "| run | tasks | tasks/s | " + " | ".join(roles) + " | cores busy | workers |",
            "| --- | ---: | ---: | " + " | ".join("---:" for _ in roles) + " | ---: | ---: |",
        ]
        for label, n, m in runs:
            cells = " | ".join(f"{1000 * m.cpu[r] / n:.3f}" for r in roles)
            busy = sum(m.cpu.values()) / m.seconds
            out.append(
                f"| {label} | {n:,} | {n / m.seconds:,.0f} | {cells} | {busy:.2f} | "
                f"{m.peak_workers} / {m.new_workers} |"
            )
    return out


def plot(ctx: Context) -> list[str]:
    """PNG plots next to latest.md; returns their file names."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        ctx.note("plots: skipped, matplotlib is not installed (run benchmarks/setup)")
        return []
    made: list[str] = []

    def save(fig: Any, name: str) -> None:
        fig.tight_layout()
        fig.savefig(ctx.out / name, dpi=110)
        plt.close(fig)
        made.append(name)

    tp = ctx.data.get("throughput")
    peers = dict(ctx.data.get("peers", {}))
    if tp or peers:
        rates = dict(tp["rates"]) if tp else {}
        if "raybeam map()" in peers:
            rates["raybeam map() (again, with the peers)"] = peers.pop("raybeam map()")
        rates.update(peers)
        fig, ax = plt.subplots(figsize=(8, 4))
        names = list(rates)
        colors = ["tab:blue" if n.startswith("raybeam") else "tab:gray" for n in names]
        ax.barh(names, [rates[n] for n in names], color=colors)
        ax.set_xlabel("tasks/s (higher is better)")
        ax.set_title(f"Throughput: {ctx.args.tasks} no-op tasks, put -> all complete")
        ax.invert_yaxis()
        save(fig, "throughput.png")
    lat = ctx.data.get("latency")
    if lat:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.boxplot(list(lat.values()), showfliers=True)
        ax.set_xticks(range(1, len(lat) + 1), list(lat))
        ax.set_ylabel("ms (lower is better)")
        ax.set_yscale("log")
        ax.set_title("Latency: one task, put -> result")
        save(fig, "latency.png")
    http = ctx.data.get("http")
    if http:
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
        clients = sorted(next(iter(http.values())))
        width = 0.38
        for i, (name, by_clients) in enumerate(http.items()):
            xs = [c + (i - 0.5) * width for c in range(len(clients))]
            p50 = [percentile(by_clients[c]["latencies_ms"], 50) for c in clients]
            rps = [by_clients[c]["rps"] for c in clients]
            axes[0].bar(xs, p50, width, label=name)
            axes[1].bar(xs, rps, width, label=name)
        for ax, label in zip(
            axes, ("p50 ms (lower is better)", "req/s (higher is better)"), strict=True
        ):
            ax.set_xticks(range(len(clients)), [f"{c} client(s)" for c in clients])
            ax.set_ylabel(label)
        axes[0].legend()
        fig.suptitle("HTTP enqueue vs a bare Ray Serve endpoint")
        save(fig, "http.png")
    scale = ctx.data.get("scale")
    if scale:
        pts = scale["points"]
        xs = [p["records"] for p in pts]
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.plot(xs, [p["put_p50"] for p in pts], "o-", label="put p50 (ms)")
        ax.plot(xs, [p["status_p50"] for p in pts], "s-", label="status p50 (ms)")
        ax.set_xscale("log")
        ax.set_ylim(0, 1.6 * max(max(p["put_p50"], p["status_p50"]) for p in pts))
        ax.set_xlabel("records held")
        ax.set_ylabel("ms")
        ax2 = ax.twinx()
        ax2.plot(xs, [p["rss_mib"] for p in pts], "^--", color="tab:red", label="registry RSS")
        ax2.set_ylabel("registry RSS (MiB)")
        ax.legend(loc="upper left")
        ax2.set_ylim(0, 1.1 * max(p["rss_mib"] for p in pts))
        ax2.legend(loc="lower right")
        ax.set_title("Scale")
        save(fig, "scale.png")
    warm = ctx.data.get("warm")
    if warm:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        for name in ("plain_s", "warm_s"):
            ax.plot(
                range(1, len(warm[name]) + 1), [1000 * s for s in warm[name]], "o-", label=name[:-2]
            )
        ax.set_xlabel("task (one at a time)")
        ax.set_ylabel("round trip ms")
        ax.set_title("Warm container vs plain queue (0.5 s model load)")
        ax.legend()
        save(fig, "warm.png")
    return made


def write(ctx: Context, command: str) -> Path:
    ctx.out.mkdir(parents=True, exist_ok=True)
    plots = plot(ctx)
    path = ctx.out / "latest.md"
    path.write_text(markdown(ctx, plots, command))
    say(f"\nwrote {path}" + (f" and {', '.join(plots)}" if plots else ""))
    return path
