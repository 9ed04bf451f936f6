"""Charts of the load benchmarks: throughput and p50/p95 latency against concurrency.

People read a chart faster than a latency table, so ``maskrt bench load``, ``bench peers`` and
``bench v2`` write one beside their ``--json`` report (``report.json`` -> ``report.png``), one line
per server or route, and ``maskrt bench chart REPORT.json`` redraws it from a report. matplotlib is
in the ``bench`` extra, not in the serving install: without it the JSON is still written and the
command says how to get the chart.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

INSTALL_HINT = "pip install 'maskrt[bench]' (or pip install matplotlib)"
SIZE_IN = (11.0, 4.2)  # inches; at DPI the PNG is 1100 x 420 pixels
DPI = 100
JSON_HELP = "also write the results as JSON to this file, and their chart beside it (.png)"


def series(report: Mapping) -> dict[str, list[Mapping]]:
    """The report's levels, one list per server or route, whichever bench wrote it.

    ``bench load`` writes ``levels`` (one server), ``bench peers`` ``results`` (one entry per
    server) and ``bench v2`` ``routes`` (one entry per route); every level has ``concurrency``,
    ``throughput``, ``p50_ms`` and ``p95_ms``.
    """
    if "routes" in report:
        return {str(name): list(levels) for name, levels in report["routes"].items()}
    if "results" in report:
        return {str(r["server"]): list(r["levels"]) for r in report["results"]}
    if "levels" in report:
        model = report.get("model") or {}
        name = f"maskrt {model.get('backend', '')}/{model.get('device', '')}".rstrip("/ ")
        return {name: list(report["levels"])}
    raise ValueError("not a bench report: no 'levels', 'results' or 'routes'")


def write_chart(lines: Mapping[str, Sequence[Mapping]], png: Path, title: str) -> Path | None:
    """Draw throughput (left) and p50 solid / p95 dashed latency (right) against concurrency.

    Returns the PNG's path, or None (saying how to install matplotlib) when it is missing.
    """
    try:
        from matplotlib.figure import Figure  # no pyplot: no global state, no display needed
    except ImportError:
        print(f"no chart: matplotlib is not installed; {INSTALL_HINT}", file=sys.stderr)
        return None
    fig = Figure(figsize=SIZE_IN, dpi=DPI, layout="constrained")
    throughput, latency = fig.subplots(1, 2)
    levels: set[int] = set()
    for i, (name, points) in enumerate(lines.items()):
        points = sorted(points, key=lambda p: p["concurrency"])
        x = [int(p["concurrency"]) for p in points]
        levels.update(x)
        colour = f"C{i % 10}"
        throughput.plot(x, [p["throughput"] for p in points], "o-", color=colour, label=name)
        latency.plot(x, [p["p50_ms"] for p in points], "o-", color=colour, label=f"{name} p50")
        latency.plot(x, [p["p95_ms"] for p in points], "s--", color=colour, label=f"{name} p95")
    for ax, ylabel in ((throughput, "requests/s"), (latency, "latency (ms)")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted(levels), [str(c) for c in sorted(levels)])
        ax.set_xlabel("concurrent clients")
        ax.set_ylabel(ylabel)
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small")
    throughput.set_title("throughput")
    latency.set_title("latency: p50 solid, p95 dashed")
    fig.suptitle(title)
    fig.savefig(png)
    return png


def write_report(report: Mapping, path: str | Path, title: str) -> None:
    """Write the JSON report and its chart beside it (same name, ``.png``)."""
    path = Path(path)
    path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(f"wrote {path}")
    png = write_chart(series(report), path.with_suffix(".png"), title)
    if png:
        print(f"wrote {png}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="maskrt bench chart", description=__doc__.split("\n\n")[0] + " Redraw from a report."
    )
    p.add_argument("report", type=Path, help="a --json report of bench load, peers or v2")
    p.add_argument("--title", help="chart title (default: the report's file name)")
    p.add_argument("--out", type=Path, help="PNG to write (default: the report's name, .png)")
    args = p.parse_args(argv)
    from maskrt.errors import MaskrtError

    try:
        lines = series(json.loads(args.report.read_text()))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise MaskrtError(f"{args.report}: {exc}") from None
    png = write_chart(
        lines, args.out or args.report.with_suffix(".png"), args.title or args.report.stem
    )
    if png is None:
        return 1
    print(f"wrote {png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
