"""Growth curves: how time, memory, log size and resources grow with the work (issue #15).

Run: python benchmarks/scale.py [--quick] [--rlms-python PATH] [--json OUT] [--only CURVES]

Each curve is measured for this repository's ``rlm`` and, when an interpreter with
the public ``rlms`` 0.1.3 package is found, for rlms too, side by side in the same
run: every measurement is a fresh process (benchmarks/scale_driver.py, given the
case as JSON), the two packages alternate, and each figure is the median of 3.
The rlms interpreter is ``--rlms-python``, else ``$RLM_RLMS_PYTHON``, else
``/tmp/rlms013-venv/bin/python`` when it exists; make one with

    python3 -m venv /tmp/rlms013-venv && /tmp/rlms013-venv/bin/pip install -q rlms==0.1.3

The curves (all with scripted models, so no model time except where stated):

* ``context``: one completion over a str context of 1 MB to 500 MB (``--quick``: to
  50 MB), ours in ``local`` and ``subprocess``, rlms in ``local`` (it has no
  subprocess environment): time and the host's extra peak RSS (and the worker's);
* ``iterations``: 10, 50 and 200 iterations of a cell printing 1 KB, without and with
  a logger (ours also in the compact format): time, log bytes, bytes the logger holds;
* ``batch``: ``llm_query_batched`` of 1k, 10k and 50k prompts to an instant sub-model (in
  batches of at most 10,000, the most one batch may hold in ours: 50k is five batches);
* ``async``: 50 completions at once against a 100 ms model, ``acompletion()`` vs one
  thread per ``completion()`` (rlms 0.1.3 has no ``acompletion``: threads only);
* ``tree``: trees of child RLMs of depth 3 x fan-out 4 and depth 5 x fan-out 2, each RLM
  asking its children in turn (``rlm_query``) or at once (``rlm_query_batched``): time,
  peak threads and sockets of the process.

With the iterations curve it also times a round trip between two threads through the
wake-ups a LocalREPL's cell thread uses: the least a cell's hand-off to its own thread
costs on this machine (rlms runs cells in the caller's thread).

Fitted exponents are least-squares slopes on log-log axes (1.0: linear). The
figures are noisy on a shared machine; the ratios are from the same run.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DRIVER = HERE / "scale_driver.py"
DEFAULT_RLMS_PYTHON = "/tmp/rlms013-venv/bin/python"
MB = 1_000_000

sys.path.insert(0, str(HERE))
from environments import ms  # noqa: E402
from overhead import ANSWER  # noqa: E402

# ---------------------------------------------------------------------------
# Running one case in the package's own interpreter
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Side:
    """Where a measurement runs: ours (this interpreter, the repository's rlm) or rlms."""

    name: str
    python: str

    @property
    def ours(self) -> bool:
        return self.name == "ours"


def run_case(side: Side, case: dict[str, Any], timeout: float = 900) -> dict[str, Any]:
    """The driver's result for ``case``, run in a fresh process of ``side``'s interpreter.
    rlms runs from an empty folder with no PYTHONPATH, so it never sees this repository."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    command = [side.python, str(DRIVER), *(["--ours"] if side.ours else []), json.dumps(case)]
    with tempfile.TemporaryDirectory(prefix="rlm-scale-") as cwd:
        done = subprocess.run(
            command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
        )
    for line in reversed(done.stdout.splitlines()):
        if line.startswith("SCALE_RESULT "):
            return json.loads(line.removeprefix("SCALE_RESULT "))
    tail = (done.stderr or done.stdout).strip().splitlines()[-6:]
    raise RuntimeError(
        f"{side.name} failed on {case['kind']} (exit {done.returncode}):\n  " + "\n  ".join(tail)
    )


def find_rlms(path: str | None) -> tuple[Side | None, str]:
    """The rlms 0.1.3 interpreter to compare with, and a sentence saying what was found."""
    candidates = [
        (path, "--rlms-python"),
        (os.environ.get("RLM_RLMS_PYTHON"), "RLM_RLMS_PYTHON"),
        (DEFAULT_RLMS_PYTHON, "the default location"),
    ]
    for candidate, origin in candidates:
        if not candidate:
            continue
        if not os.path.exists(candidate):
            if origin != "the default location":
                return None, f"{candidate} (from {origin}) does not exist: measuring ours only"
            continue
        side = Side("rlms", candidate)
        try:
            info = run_case(side, {"kind": "package"}, timeout=120)
        except Exception as exc:
            return None, f"{candidate} (from {origin}) cannot run the driver ({exc}): ours only"
        if info.get("rlms_version") != "0.1.3" or str(ROOT) in info.get("file", ""):
            return None, (
                f"{candidate} (from {origin}) imports rlm from {info.get('file')} with rlms "
                f"{info.get('rlms_version') or 'not installed'}, not rlms 0.1.3: ours only"
            )
        return side, f"rlms 0.1.3 from {candidate} ({origin}): {info['file']}"
    return None, f"no rlms 0.1.3 interpreter ({DEFAULT_RLMS_PYTHON} is missing): ours only"


# ---------------------------------------------------------------------------
# Curves
# ---------------------------------------------------------------------------


@dataclass
class Variant:
    """One line of a curve: a side and the case options that make it."""

    label: str
    side: str  # "ours" or "rlms"
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class Curve:
    name: str
    x_label: str
    xs: list[Any]
    variants: list[Variant]
    case: Callable[[Any], dict[str, Any]]
    metrics: list[tuple[str, str]]  # (result key, how it prints: "time", "bytes", "count")
    fit: list[str] = field(default_factory=list)  # metrics to fit an exponent to
    x_value: Callable[[Any], float] = float
    x_text: Callable[[Any], str] = str
    # filled by measure(): label -> x index -> list of results
    results: dict[str, dict[int, list[dict[str, Any]]]] = field(default_factory=dict)


def curves(quick: bool, max_mb: int) -> list[Curve]:
    sizes = [s for s in (1, 10, 50, 100, 250, 500) if s <= min(max_mb, 50 if quick else max_mb)]
    return [
        Curve(
            "context",
            "context",
            sizes,
            [
                Variant("ours local", "ours", {"environment": "local"}),
                Variant("ours subprocess", "ours", {"environment": "subprocess"}),
                Variant("rlms local", "rlms", {"environment": "local"}),
            ],
            lambda mb: {"kind": "context", "size": mb * MB},
            [("time", "time"), ("host_extra", "bytes"), ("worker_peak", "bytes")],
            fit=["time", "host_extra"],
            x_text=lambda mb: f"{mb} MB",
        ),
        Curve(
            "iterations",
            "iterations",
            [10, 50, 200],
            [
                Variant("ours", "ours"),
                Variant("rlms", "rlms"),
                Variant("ours + log", "ours", {"logger": "default"}),
                Variant("rlms + log", "rlms", {"logger": "default"}),
                Variant("ours + compact log", "ours", {"logger": "compact"}),
            ],
            lambda n: {"kind": "iterations", "n": n, "output": 1000, "answer": ANSWER},
            [
                ("time", "time"),
                ("loop", "time"),
                ("per_iteration", "time"),
                ("log_bytes", "bytes"),
                ("held", "bytes"),
            ],
            fit=["loop", "log_bytes", "held"],
        ),
        Curve(
            "batch",
            "prompts",
            [1000, 10_000, 50_000],
            [Variant("ours", "ours"), Variant("rlms", "rlms")],
            lambda n: {"kind": "batch", "n": n, "chunk": 10_000},
            [("time", "time"), ("correct", "count")],
            fit=["time"],
            x_text=lambda n: f"{n:,}",
        ),
        Curve(
            "async",
            "completions",
            [50],
            [
                Variant("ours acompletion", "ours", {"mode": "acompletion"}),
                Variant("ours threads", "ours", {"mode": "threads"}),
                Variant("rlms threads", "rlms", {"mode": "threads"}),
            ],
            lambda n: {"kind": "async", "n": n, "delay": 0.1},
            [("time", "time"), ("correct", "count")],
        ),
        Curve(
            "tree",
            "depth x fan-out",
            [(3, 4), (5, 2)],
            [
                Variant("ours sequential", "ours", {"mode": "sequential"}),
                Variant("rlms sequential", "rlms", {"mode": "sequential"}),
                Variant("ours batched", "ours", {"mode": "batched"}),
                Variant("rlms batched", "rlms", {"mode": "batched"}),
            ],
            lambda shape: {"kind": "tree", "depth": shape[0], "fanout": shape[1], "answer": ANSWER},
            [
                ("time", "time"),
                ("peak_threads", "count"),
                ("peak_sockets", "count"),
                ("root_calls", "count"),
            ],
            x_text=lambda shape: f"{shape[0]} x {shape[1]}",
        ),
    ]


def measure(curve: Curve, sides: dict[str, Side], reps: int) -> None:
    """Every variant at every x, ``reps`` times, alternating the order of the variants."""
    variants = [v for v in curve.variants if v.side in sides]
    curve.results = {v.label: {i: [] for i in range(len(curve.xs))} for v in variants}
    for i, x in enumerate(curve.xs):
        for rep in range(reps):
            order = variants if rep % 2 == 0 else variants[::-1]
            for variant in order:
                case = {**curve.case(x), **variant.options}
                try:
                    result = run_case(sides[variant.side], case)
                except Exception as exc:  # a failed measurement is reported, not fatal
                    result = {"error": str(exc)}
                curve.results[variant.label][i].append(result)
        print(f"  measured {curve.name} at {curve.x_text(x)}", file=sys.stderr, flush=True)


def median(curve: Curve, label: str, i: int, key: str) -> float | None:
    values = [r[key] for r in curve.results.get(label, {}).get(i, []) if key in r]
    return statistics.median(values) if values else None


def exponent(xs: list[float], ys: list[float | None]) -> float | None:
    """Least-squares slope of log(y) on log(x) over the points with y > 0."""
    points = [
        (math.log(x), math.log(y)) for x, y in zip(xs, ys, strict=True) if y is not None and y > 0
    ]
    if len(points) < 2:
        return None
    mx = statistics.fmean(p[0] for p in points)
    my = statistics.fmean(p[1] for p in points)
    sxx = sum((p[0] - mx) ** 2 for p in points)
    if sxx == 0:
        return None
    return sum((p[0] - mx) * (p[1] - my) for p in points) / sxx


# ---------------------------------------------------------------------------
# Printing
# ---------------------------------------------------------------------------


def show(value: float | None, kind: str) -> str:
    if value is None:
        return "-"
    if kind == "time":
        return ms(value) if value < 1 else f"{value:.2f} s"
    if kind == "bytes":
        if value >= MB:
            return f"{value / MB:,.1f} MB"
        return f"{value / 1000:,.1f} KB"
    return f"{value:,.0f}"


def ratio_of(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def print_curve(curve: Curve) -> dict[str, Any]:
    labels = list(curve.results)
    summary: dict[str, Any] = {"x": [curve.x_text(x) for x in curve.xs], "medians": {}, "fits": {}}
    print(f"\n== {curve.name}")
    for key, kind in curve.metrics:
        rows = [[curve.x_text(x)] for x in curve.xs]
        header = [curve.x_label]
        for label in labels:
            header.append(label)
            values = [median(curve, label, i, key) for i in range(len(curve.xs))]
            summary["medians"].setdefault(label, {})[key] = values
            for row, value in zip(rows, values, strict=True):
                row.append(show(value, kind))
        pairs = paired(labels)
        for ours_label, rlms_label in pairs:
            header.append(f"{ours_label}/{rlms_label}".replace("ours ", "").replace("rlms ", ""))
            for i, row in enumerate(rows):
                r = ratio_of(median(curve, ours_label, i, key), median(curve, rlms_label, i, key))
                row.append("-" if r is None else f"{r:.2f}x")
        if all(cell == "-" for row in rows for cell in row[1:]):
            continue
        print(f"   {key}")
        widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=True)]
        for row in [header, *rows]:
            print("     " + "  ".join(str(c).rjust(w) for c, w in zip(row, widths, strict=True)))
        if key in curve.fit and len(curve.xs) > 1:
            xs = [curve.x_value(x) for x in curve.xs]
            fits = {label: exponent(xs, summary["medians"][label][key]) for label in labels}
            summary["fits"][key] = fits
            text = ", ".join(f"{k} {v:.2f}" for k, v in fits.items() if v is not None)
            print(f"     growth exponent of {key}: {text or '-'}")
    errors = [
        f"{label} at {curve.x_text(curve.xs[i])}: {r['error']}"
        for label, by_x in curve.results.items()
        for i, results in by_x.items()
        for r in results
        if "error" in r
    ]
    for error in dict.fromkeys(errors):
        print(f"   FAILED {error}")
    summary["errors"] = errors
    return summary


def thread_round_trip(trips: int = 2000, reps: int = 5) -> float:
    """Seconds for one thread to wake another and be woken back (median of ``reps`` runs
    of ``trips``), through the wake-ups a LocalREPL's cell thread uses
    (``rlm.comms.workers.Wake``): what handing a cell to its own thread costs at least,
    where rlms runs it in the caller's thread."""
    sys.path.insert(0, str(ROOT))
    from rlm.comms.workers import Wake

    times = []
    for _ in range(reps):
        there, back = Wake(), Wake()

        def echo(there: Wake, back: Wake) -> None:
            for _ in range(trips):
                there.wait()
                back.set()

        helper = threading.Thread(target=echo, args=(there, back), daemon=True)
        helper.start()
        start = time.perf_counter()
        for _ in range(trips):
            there.set()
            back.wait()
        times.append((time.perf_counter() - start) / trips)
        helper.join()
    return statistics.median(times)


def paired(labels: list[str]) -> list[tuple[str, str]]:
    """(ours, rlms) label pairs of the same configuration, e.g. "ours + log"/"rlms + log"."""
    out = []
    for label in labels:
        if label.startswith("ours"):
            twin = "rlms" + label[4:]
            if twin in labels:
                out.append((label, twin))
    return out


def targets(
    by_name: dict[str, Curve], quick: bool, round_trip: float | None = None
) -> list[dict[str, Any]]:
    """The issue's targets, as ratios from this run."""
    rows: list[dict[str, Any]] = []

    def add(name: str, value: float | None, limit: float | None, note: str = "") -> None:
        met = None if value is None or limit is None else value <= limit
        rows.append({"target": name, "value": value, "limit": limit, "met": met, "note": note})

    def at(curve_name: str, label: str, x: Any, key: str) -> float | None:
        curve = by_name.get(curve_name)
        if curve is None or x not in curve.xs:
            return None
        return median(curve, label, curve.xs.index(x), key)

    add(
        "time per iteration, ours/rlms (200, no logger)",
        ratio_of(
            at("iterations", "ours", 200, "per_iteration"),
            at("iterations", "rlms", 200, "per_iteration"),
        ),
        1.0,
    )
    if round_trip is not None:
        ours = at("iterations", "ours", 200, "per_iteration")
        add(
            "a thread round trip (a cell's hand-off), us",
            round_trip * 1e6,
            None,
            "rlms runs a cell in the caller's thread",
        )
        add(
            "time per iteration less one round trip, ours/rlms",
            ratio_of(
                None if ours is None else ours - round_trip,
                at("iterations", "rlms", 200, "per_iteration"),
            ),
            None,
        )
    for label, note in (
        ("ours + compact log", ""),
        ("ours + log", "the default format is rlms': every line repeats the history"),
    ):
        add(
            f"200 logged iterations (loop time), {label.removeprefix('ours + ')}/rlms",
            ratio_of(
                at("iterations", label, 200, "loop"), at("iterations", "rlms + log", 200, "loop")
            ),
            0.5,
            note,
        )

    def logging_cost(label: str, bare: str) -> float | None:
        logged, plain = at("iterations", label, 200, "loop"), at("iterations", bare, 200, "loop")
        return None if logged is None or plain is None else logged - plain

    rlms_cost = logging_cost("rlms + log", "rlms")
    for label in ("ours + compact log", "ours + log"):
        cost = logging_cost(label, "ours")
        add(
            f"the logger's own time in 200 iterations, {label.removeprefix('ours + ')}/rlms",
            ratio_of(cost, rlms_cost),
            None,
            "loop with the logger minus loop without, in each package",
        )
    iterations = by_name.get("iterations")
    if iterations is not None and iterations.results.get("ours + compact log"):
        xs = [float(x) for x in iterations.xs]
        ys = [median(iterations, "ours + compact log", i, "log_bytes") for i in range(len(xs))]
        add("log growth exponent, compact format", exponent(xs, ys), 1.1)
    add(
        "llm_query_batched 10k, ours/rlms",
        ratio_of(at("batch", "ours", 10_000, "time"), at("batch", "rlms", 10_000, "time")),
        1.0,
    )
    add(
        "50 acompletion()/50 thread completions, ours",
        ratio_of(
            at("async", "ours acompletion", 50, "time"), at("async", "ours threads", 50, "time")
        ),
        1.5,
    )
    for shape in ((3, 4), (5, 2)):
        for key in ("peak_threads", "peak_sockets"):
            add(
                f"tree {shape[0]} x {shape[1]} batched, {key.replace('_', ' ')}, ours/rlms",
                ratio_of(
                    at("tree", "ours batched", shape, key), at("tree", "rlms batched", shape, key)
                ),
                1.0,
                "Build: 'at most rlms' counts at the same shape'",
            )
    context = by_name.get("context")
    if context is not None and context.xs:
        top = context.xs[-1]
        extra = at("context", "ours subprocess", top, "host_extra")
        note = (
            ""
            if top == 500
            else f"measured at {top} MB, not 500 MB" + (" (--quick)" if quick else "")
        )
        add(
            f"subprocess {top} MB context: host extra peak / context size",
            None if extra is None else extra / (top * MB),
            1.1,
            note,
        )
    return rows


def print_targets(rows: list[dict[str, Any]]) -> None:
    print("\n== targets (issue #15)")
    for row in rows:
        value = "-" if row["value"] is None else f"{row['value']:.2f}"
        if row["limit"] is None:
            verdict, limit = "(for information)", ""
        else:
            verdict = {True: "met", False: "MISSED", None: "not measured"}[row["met"]]
            limit = f"<= {row['limit']:<4}"
        note = f"  ({row['note']})" if row["note"] else ""
        print(f"   {row['target']:<62} {value:>7}  {limit:<7} {verdict}{note}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="contexts up to 50 MB only")
    parser.add_argument("--rlms-python", help="an interpreter with rlms 0.1.3 installed")
    parser.add_argument("--json", metavar="OUT", help="also write every figure to OUT")
    parser.add_argument(
        "--only", help="comma-separated curves (context,iterations,batch,async,tree)"
    )
    parser.add_argument("--reps", type=int, default=3, help="measurements per point (median)")
    parser.add_argument("--max-mb", type=int, default=500, help="largest context, in MB")
    args = parser.parse_args()

    rlms, found = find_rlms(args.rlms_python)
    sides = {"ours": Side("ours", sys.executable)}
    if rlms is not None:
        sides["rlms"] = rlms
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs; ours: {ROOT / 'rlm'}")
    print(f"rlms: {found}")
    print(f"medians of {args.reps}, one fresh process per measurement, ours and rlms alternating")

    selected = curves(args.quick, args.max_mb)
    if args.only:
        wanted = set(args.only.split(","))
        selected = [c for c in selected if c.name in wanted]
    summaries = {}
    for curve in selected:
        measure(curve, sides, args.reps)
        summaries[curve.name] = print_curve(curve)
    by_name = {c.name: c for c in selected}
    round_trip = thread_round_trip() if "iterations" in by_name else None
    rows = targets(by_name, args.quick, round_trip)
    print_targets(rows)
    if args.json:
        data = {
            "python": sys.version.split()[0],
            "cpus": os.cpu_count(),
            "rlms": found,
            "quick": args.quick,
            "reps": args.reps,
            "curves": {c.name: {**summaries[c.name], "raw": c.results} for c in selected},
            "targets": rows,
        }
        Path(args.json).write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
