"""Scores and figures: the table per family x size x arm, results.md/json, and plots."""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from benchmarks.longcontext.arms import SUB
from benchmarks.longcontext.tasks import score

#: A task counts as solved at this score (numbers and pairs give partial credit).
SOLVED = 1.0


def entry(spec: dict[str, Any], record: dict[str, Any], arm: str) -> dict[str, Any]:
    """One task's outcome on one arm: its score, time and usage split root / sub-calls."""
    root_tokens = sub_tokens = sub_calls = 0
    models = (record.get("usage_summary") or {}).get("model_usage_summaries") or {}
    for name, usage in models.items():
        tokens = int(usage.get("total_input_tokens") or 0) + int(
            usage.get("total_output_tokens") or 0
        )
        if name.endswith(SUB):
            sub_tokens += tokens
            sub_calls += int(usage.get("total_calls") or 0)
        else:
            root_tokens += tokens
    ok = bool(record.get("ok"))
    value = score(spec["kind"], spec["gold"], record.get("response"), spec["candidates"])
    return {
        "id": record["id"],
        "family": spec["family"],
        "size": spec["multiple"],
        "seed": spec["seed"],
        "arm": arm,
        "ok": ok,
        "score": round(value, 6) if ok else 0.0,
        "time": float(record.get("execution_time") or 0.0),
        "root_tokens": root_tokens,
        "sub_tokens": sub_tokens,
        "sub_calls": sub_calls,
        "response": record.get("response"),
        "gold": spec["gold"],
        "error": record.get("error"),
    }


@dataclass
class Row:
    family: str
    size: float
    arm: str
    n: int
    score: float
    p50: float
    p95: float
    root_tokens: float
    sub_tokens: float
    sub_calls: float
    failures: int
    time_per_solved: float | None


def _percentile(values: list[float], pct: int) -> float:
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(sorted(values), n=100, method="inclusive")[pct - 1]


def rows(entries: list[dict[str, Any]], families: list[str], arms: list[str]) -> list[Row]:
    """One row per family x size x arm, in the order of ``families``, sizes, ``arms``."""
    cells: dict[tuple[str, float, str], list[dict[str, Any]]] = defaultdict(list)
    for e in entries:
        cells[(e["family"], e["size"], e["arm"])].append(e)
    out = []
    for (family, size, arm), group in sorted(
        cells.items(), key=lambda kv: (families.index(kv[0][0]), kv[0][1], arms.index(kv[0][2]))
    ):
        times = [e["time"] for e in group]
        solved = sum(1 for e in group if e["score"] >= SOLVED)
        out.append(
            Row(
                family=family,
                size=size,
                arm=arm,
                n=len(group),
                score=statistics.fmean(e["score"] for e in group),
                p50=_percentile(times, 50),
                p95=_percentile(times, 95),
                root_tokens=statistics.fmean(e["root_tokens"] for e in group),
                sub_tokens=statistics.fmean(e["sub_tokens"] for e in group),
                sub_calls=statistics.fmean(e["sub_calls"] for e in group),
                failures=sum(1 for e in group if not e["ok"]),
                time_per_solved=sum(times) / solved if solved else None,
            )
        )
    return out


def markdown(table: list[Row]) -> str:
    head = (
        "| family | size | arm | score | n | p50 s | p95 s | root tok | sub tok | sub-calls "
        "| failures | s / solved |\n"
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    )
    lines = [
        f"| {r.family} | {r.size:g}x | {r.arm} | {r.score:.2f} | {r.n} | {r.p50:.2f} | "
        f"{r.p95:.2f} | {r.root_tokens:,.0f} | {r.sub_tokens:,.0f} | {r.sub_calls:.1f} | "
        f"{r.failures} | {'—' if r.time_per_solved is None else f'{r.time_per_solved:.2f}'} |"
        for r in table
    ]
    return head + "\n".join(lines) + "\n"


def write(
    out_dir: Path,
    table: list[Row],
    entries: list[dict[str, Any]],
    settings: dict[str, Any],
    save: bool = True,
) -> str:
    """results.md and results.json in ``out_dir`` (unless not ``save``); returns the
    Markdown."""
    lines = [f"- {key}: {value}" for key, value in settings.items()]
    text = "# Long-context benchmark\n\n" + "\n".join(lines) + "\n\n" + markdown(table)
    if not save:
        return text
    (out_dir / "results.md").write_text(text, encoding="utf-8")
    data = {"settings": settings, "cells": [asdict(r) for r in table], "tasks": entries}
    (out_dir / "results.json").write_text(json.dumps(data, indent=1, default=str), "utf-8")
    return text


def plot(out_dir: Path, table: list[Row], title: str) -> tuple[list[Path], str | None]:
    """One PNG per family (score vs size, one line per arm) in ``out_dir/plots``; or no
    plots and the reason, when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return [], 'matplotlib is not installed (pip install matplotlib, or "rlm[test]")'
    folder = out_dir / "plots"
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for family in dict.fromkeys(r.family for r in table):
        figure, axes = plt.subplots(figsize=(6, 4))
        for arm in dict.fromkeys(r.arm for r in table if r.family == family):
            points = sorted((r.size, r.score) for r in table if r.family == family and r.arm == arm)
            axes.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=arm)
        axes.set_xscale("log", base=2)
        sizes = sorted({r.size for r in table if r.family == family})
        axes.set_xticks(sizes, [f"{s:g}x" for s in sizes])
        axes.minorticks_off()
        axes.set_ylim(-0.05, 1.05)
        axes.set_xlabel("context size (multiples of the model's window)")
        axes.set_ylabel("mean score")
        axes.set_title(f"{family}: score vs size\n{title}", fontsize=9)
        axes.grid(True, alpha=0.3)
        axes.legend()
        figure.tight_layout()
        path = folder / f"{family}.png"
        figure.savefig(path, dpi=100)
        plt.close(figure)
        paths.append(path)
    return paths, None
