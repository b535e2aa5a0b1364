"""Shared harness for the benchmarks: alternating pairs, robust summaries, one JSON per script.

Design note. These machines are shared and noisy, so a benchmark never compares two figures taken
at different moments: ``alternate`` runs side A, then side B, then A again, and so on, so that any
drift hits both sides alike. We report medians with the 10th and 90th percentiles (the spread),
and ratios of medians rather than absolute times alone. Every script writes one
``bench/results/<name>.json`` (shape in bench/README.md) and ``print_table`` turns all of them
into the single table that ``make bench`` prints.

Usage from a script::

    from harness import Measurement, alternate, ratio, summary, write_result
    a, b = alternate(run_sdnctl, run_cni, rounds=5)   # each call returns one sample or a list
    write_result("attach", {"measurements": [Measurement("sdnctl ADD", "ms", a)], ...})

Scripts run as ``.venv/bin/python bench/NAME.py --quick|--full`` from the checkout root, so
``bench/`` is ``sys.path[0]`` and ``from harness import ...`` works; ``agent`` and ``sdnctl`` come
from the editable install.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
RESULTS_DIR = os.path.join(BENCH_DIR, "results")

Sample = float | Sequence[float]


@dataclass
class Measurement:
    """One named series of samples in one unit (``ms``, ``Gbit/s``, ``ops/s``...)."""

    name: str
    unit: str
    samples: list[float] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        median, p10, p90 = summary(self.samples)
        return {"name": self.name, "unit": self.unit, "n": len(self.samples), "median": median,
                "p10": p10, "p90": p90, "samples": self.samples}


def _extend(samples: list[float], got: Sample) -> None:
    if isinstance(got, int | float):
        samples.append(float(got))
    else:
        samples.extend(float(x) for x in got)


def alternate(a: Callable[[], Sample], b: Callable[[], Sample],
              rounds: int) -> tuple[list[float], list[float]]:
    """Run ``a`` and ``b`` alternately ``rounds`` times each (a, b, b, a, a, b, ...).

    Each call returns one sample or a list of samples (a batch timed per item). The order flips
    every round so that neither side always runs first (warm caches, a neighbour's load).
    Returns the samples of ``a`` and of ``b``.
    """
    got_a: list[float] = []
    got_b: list[float] = []
    for i in range(rounds):
        order = ((a, got_a), (b, got_b)) if i % 2 == 0 else ((b, got_b), (a, got_a))
        for fn, into in order:
            _extend(into, fn())
    return got_a, got_b


def alternate_many(sides: dict[str, Callable[[], Sample]], rounds: int) -> dict[str, list[float]]:
    """``alternate`` for any number of sides: the order rotates every round."""
    names = list(sides)
    got: dict[str, list[float]] = {n: [] for n in names}
    for i in range(rounds):
        k = i % len(names)
        for name in names[k:] + names[:k]:
            _extend(got[name], sides[name]())
    return got


def percentile(samples: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile, ``q`` in [0, 100]."""
    data = sorted(samples)
    if not data:
        return float("nan")
    pos = (len(data) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(data) - 1)
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)


def summary(samples: Sequence[float]) -> tuple[float, float, float]:
    """(median, p10, p90) of the samples; NaNs when there are none."""
    if not samples:
        nan = float("nan")
        return nan, nan, nan
    return statistics.median(samples), percentile(samples, 10), percentile(samples, 90)


def ratio(a: Sequence[float] | float, b: Sequence[float] | float) -> float:
    """median(a) / median(b) (a number stands for itself)."""
    ma = a if isinstance(a, int | float) else summary(a)[0]
    mb = b if isinstance(b, int | float) else summary(b)[0]
    return float(ma) / float(mb) if mb else float("inf")


def paired_ratio(a: Sequence[float], b: Sequence[float]) -> float:
    """Median of a[i] / b[i] over samples taken side by side (as ``alternate`` returns them).

    More robust than ``ratio`` when the machine's load drifts: each pair shared its moment.
    """
    pairs = [x / y for x, y in zip(a, b, strict=True) if y]
    return statistics.median(pairs) if pairs else float("nan")


class Timer:
    """``with Timer() as t: ...`` then ``t.ms``."""

    def __enter__(self) -> Timer:
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.ms = (time.perf_counter() - self._t0) * 1000


def bench_args(description: str, argv: list[str] | None = None) -> argparse.Namespace:
    """The common command line: ``--quick`` (default) or ``--full``."""
    p = argparse.ArgumentParser(description=description)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--quick", action="store_true", help="the small set (default)")
    g.add_argument("--full", action="store_true", help="the large N")
    args = p.parse_args(argv)
    args.quick = not args.full
    return args


def unique_prefix(tag: str) -> str:
    """A namespace/interface prefix unique to this run (short: names obey IFNAMSIZ)."""
    return f"b{tag}{os.getpid() % 100000:05d}"


def write_result(name: str, result: dict[str, Any]) -> str:
    """Write ``bench/results/<name>.json`` (shape in bench/README.md); return the path.

    Fills in ``name`` and ``timestamp`` when missing. ``measurements`` and ``comparisons``
    default to empty lists.
    """
    os.makedirs(RESULTS_DIR, exist_ok=True)
    doc = {"name": name, "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "measurements": [], "comparisons": [], **result}
    doc["measurements"] = [m.as_dict() if isinstance(m, Measurement) else m
                           for m in doc["measurements"]]
    path = os.path.join(RESULTS_DIR, f"{name}.json")
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(doc, f, indent=2, default=str)
        f.write("\n")
    os.replace(tmp, path)
    return path


def comparison(name: str, value: float, target: str, met: bool | None) -> dict[str, Any]:
    """One row of ``comparisons``: a ratio (or other figure) and its target."""
    return {"name": name, "value": value, "target": target, "met": met}


def load_results(paths: Iterable[str] | None = None) -> list[dict[str, Any]]:
    if paths is None:
        if not os.path.isdir(RESULTS_DIR):
            return []
        paths = sorted(os.path.join(RESULTS_DIR, p) for p in os.listdir(RESULTS_DIR)
                       if p.endswith(".json"))
    out = []
    for p in paths:
        with open(p) as f:
            out.append(json.load(f))
    return out


def _fmt(x: Any) -> str:
    if isinstance(x, bool) or x is None:
        return {True: "yes", False: "NO", None: "-"}[x]
    if isinstance(x, int | float):
        if x != x:  # NaN
            return "-"
        return f"{x:.3g}" if abs(x) < 100 else f"{x:.0f}"
    return str(x)


def print_table(results: list[dict[str, Any]], out: Any = None) -> None:
    """One table of every measurement (median, p10-p90) and every comparison (value, target)."""
    out = out or sys.stdout
    rows: list[tuple[str, ...]] = [("bench", "what", "median", "p10-p90", "unit", "n")]
    for r in results:
        for m in r.get("measurements", []):
            rows.append((r["name"], m["name"], _fmt(m["median"]),
                         f"{_fmt(m['p10'])}-{_fmt(m['p90'])}", m["unit"], str(m["n"])))
    comp: list[tuple[str, ...]] = [("bench", "comparison", "value", "target", "met")]
    for r in results:
        for c in r.get("comparisons", []):
            comp.append((r["name"], c["name"], _fmt(c["value"]), c.get("target") or "",
                         _fmt(c.get("met"))))
    for table in (rows, comp):
        if len(table) == 1:
            continue
        widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
        for j, row in enumerate(table):
            print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip(),
                  file=out)
            if j == 0:
                print("  ".join("-" * w for w in widths), file=out)
        print(file=out)
    for r in results:
        for note in r.get("notes", []):
            print(f"[{r['name']}] {note}", file=out)


if __name__ == "__main__":
    print_table(load_results(sys.argv[1:] or None))
