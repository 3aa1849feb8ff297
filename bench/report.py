"""Results: the rows of the table, the machine they were measured on, results.md/.json, plots.

A row is a dict with the keys scenario, metric, ours, baseline, unit, ratio,
target (text such as `>= 0.85x` or `<= 25 ms`), met and note; bench/fanout.py
returns rows of the same shape.
"""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display

import matplotlib.pyplot as plt
import psutil
from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

Row = dict[str, Any]
_RATIO_TARGET = re.compile(r"^([<>]=)\s*([\d.]+)x$")


def make_row(
    scenario: str,
    metric: str,
    *,
    ours: float,
    baseline: float | None,
    unit: str,
    target: float,
    higher_is_better: bool,
    note: str = "",
    valid: bool = True,
) -> Row:
    """A row; with a baseline the target is a ratio (ours / baseline), else a limit in `unit`.

    `valid` False (errors during the measurement) makes the row a miss whatever the figures.
    """
    sign = ">=" if higher_is_better else "<="
    measured = ours / baseline if baseline else None
    if baseline is None:
        measured, target_text = ours, f"{sign} {target:g} {unit}"
    else:
        target_text = f"{sign} {target:g}x"
    is_met = measured is not None and (
        measured >= target if higher_is_better else measured <= target
    )
    return {
        "scenario": scenario,
        "metric": metric,
        "ours": round(float(ours), 2),
        "baseline": None if baseline is None else round(float(baseline), 2),
        "unit": unit,
        "ratio": None if baseline is None or measured is None else round(measured, 3),
        "target": target_text,
        "met": bool(valid and is_met),
        "note": note if valid else f"ERRORS during the run; {note}",
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _wrk_version() -> str:
    try:
        output = subprocess.run(["wrk", "-v"], capture_output=True, text=True, timeout=5).stdout  # noqa: S607
    except OSError:
        return "missing"
    return output.splitlines()[0].strip() if output else "unknown"


def machine_facts(profile: str) -> dict[str, Any]:
    """What the figures depend on: hardware, kernel, Python, wrk, load, date and profile."""
    load = os.getloadavg()
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "profile": profile,
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "kernel": f"{platform.system()} {platform.release()}",
        "python": sys.version.split()[0],
        "wrk": _wrk_version(),
        "load_average_at_start": [round(value, 2) for value in load],
    }


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "**no**"
    if isinstance(value, float):
        return f"{value:,.2f}" if abs(value) < 100 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value).replace("|", "\\|")


def missed(rows: list[Row]) -> list[Row]:
    """The rows whose target was missed; an informative row (`met` None) has none to miss."""
    return [row for row in rows if row["met"] is False]


def markdown(rows: list[Row], facts: dict[str, Any]) -> str:
    """results.md: the table, then the machine."""
    lines = [
        "# Benchmark results",
        "",
        "| scenario | metric | ours | baseline | unit | ratio | target | met? | note |",
        "|---|---|---:|---:|---|---:|---|---|---|",
    ]
    for row in rows:
        cells = [row[key] for key in ("scenario", "metric", "ours", "baseline", "unit")]
        cells += [row["ratio"], row["target"], row["met"], row["note"]]
        lines.append("| " + " | ".join(_cell(cell) for cell in cells) + " |")
    targets = [row for row in rows if row["met"] is not None]  # not the informative rows
    met = len(targets) - len(missed(rows))
    lines += ["", f"{met} of {len(targets)} targets met.", "", "## Configuration", ""]
    lines.append(
        "Every service ran its render.yaml `startCommand` with its env vars resolved as "
        "`make rehearse` resolves them; these differed:"
    )
    overrides = facts.get("overrides") or {}
    lines += [""] + ([f"- `{key}`: {why}" for key, why in overrides.items()] or ["- none"])
    lines += ["", "## Machine", ""]
    lines += [
        f"- {name.replace('_', ' ')}: {_cell(value)}"
        for name, value in facts.items()
        if name != "overrides"
    ]
    return "\n".join(lines) + "\n"


def write_results(
    rows: list[Row], facts: dict[str, Any], details: dict[str, Any], out_dir: Path
) -> None:
    """Write results.md, results.json and this module's plots into `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.md").write_text(markdown(rows, facts))
    document = {"machine": facts, "rows": rows, "details": details}
    (out_dir / "results.json").write_text(json.dumps(document, indent=2) + "\n")
    plot_ratios(rows, out_dir / "ratios.png")
    if "e2e" in details:
        plot_e2e(details["e2e"], out_dir / "e2e_latency.png")
    if "login_storm" in details:
        plot_login_storm(details["login_storm"], out_dir / "login_storm.png")


_RATIO_TICKS = (0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50)


def plot_ratios(rows: list[Row], path: Path) -> None:
    """Each ratio row as a bar (green met, red missed) with its target marked."""
    ratio_rows = [row for row in rows if row["ratio"] is not None]
    ratio_rows = [row for row in ratio_rows if _RATIO_TARGET.match(str(row["target"]))]
    if not ratio_rows:
        return
    fig, ax = plt.subplots(figsize=(8, 0.6 * len(ratio_rows) + 1.5))
    labels = [f"{row['scenario']}\n{row['metric']}" for row in ratio_rows]
    positions = range(len(ratio_rows))
    colors = ["tab:green" if row["met"] else "tab:red" for row in ratio_rows]
    ax.barh(positions, [row["ratio"] for row in ratio_rows], color=colors)
    for position, row in zip(positions, ratio_rows, strict=True):
        match = _RATIO_TARGET.match(str(row["target"]))
        assert match is not None
        ax.plot([float(match.group(2))] * 2, [position - 0.4, position + 0.4], color="black")
        ax.annotate(f" {row['ratio']:.2f}x", (row["ratio"], position), va="center", fontsize=8)
    ax.set_yticks(list(positions), labels, fontsize=8)
    ax.invert_yaxis()
    # Log scale: a 20x latency ratio must not flatten the 0.5x throughput bars next to it.
    ax.set_xscale("log")
    # Plain labels at round ratios; log-scale minor labels overprint each other.
    ax.xaxis.set_major_locator(FixedLocator(_RATIO_TICKS))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}x"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("ours / baseline, log scale (black: target; latency rows: lower is better)")
    ax.set_title("Ours vs baselines, same run")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_e2e(detail: dict[str, Any], path: Path) -> None:
    """The CDF of POST-to-`job.succeeded` latency, with the p50 and p99 targets."""
    latencies = sorted(detail["latencies_ms"])
    if not latencies:
        return
    fig, ax = plt.subplots(figsize=(7, 4))
    fractions = [(index + 1) / len(latencies) for index in range(len(latencies))]
    ax.plot(latencies, fractions, drawstyle="steps-post")
    for limit, fraction, label in ((25, 0.5, "p50 target"), (100, 0.99, "p99 target")):
        ax.axvline(limit, color="grey", linestyle=":")
        ax.axhline(fraction, color="grey", linestyle=":")
        ax.annotate(label, (limit, fraction), fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("POST /v1/jobs sent -> job.succeeded received on the WebSocket (ms)")
    ax.set_ylabel("fraction of jobs")
    ax.set_title(f"End-to-end latency at {detail['rate']:g} jobs/s ({len(latencies)} jobs)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_login_storm(detail: dict[str, Any], path: Path) -> None:
    """`/health/live` percentiles alone and during the login storm."""
    names = ["p50", "p90", "p99", "p99.9"]
    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.38
    positions = range(len(names))
    ax.bar([p - width / 2 for p in positions], [detail["idle_ms"][n] for n in names], width,
           label="idle")  # fmt: skip
    ax.bar([p + width / 2 for p in positions], [detail["loaded_ms"][n] for n in names], width,
           label=f"during logins ({detail['logins_per_second']:.0f}/s)")  # fmt: skip
    ax.set_xticks(list(positions), names)
    ax.set_ylabel("GET /health/live latency (ms)")
    ax.set_title("Login storm: Argon2 hashing vs the event loop")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
