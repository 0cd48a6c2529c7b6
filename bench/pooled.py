"""``python -m bench.pooled [--cpu-model M] [--since DATE] [--figure F]``: every pair, every run.

A target is judged on one run's pairs (results/README.md), and on this shared machine one run
can land a few percent either side of a peer it matches. This pools the pairs of every full run
in ``results/runs/`` on one CPU model (by default the latest full run's), per configuration and
counterpart (a peer, or a roomcast variant such as ``roomcast-nohistory``): how many pairs and
runs, the median of the pairs' ratios (ours / theirs), their spread, and each run's own median,
so a single verdict can be read against the distribution it was drawn from, and the medians
of the pairs in which roomcast ran first and of those in which the other did (the bench
alternates; each run's start time says which ran first, so a pair left out for an error does
not shift the rest), which shows whether the order biases a pair.
The runs may hold different versions of the code: ``--since`` keeps the pooled ones recent.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.report import PAIRED_FIGURES, load_runs, median, pair_figures
from bench.servers import OURS

RUNS = Path(__file__).resolve().parent.parent / "results" / "runs"


@dataclass
class Pooled:
    """The pairs of one configuration against one counterpart, over several runs."""

    config: str
    against: str
    ratios: list[float] = field(default_factory=list)
    ours_first: list[float] = field(default_factory=list)  # the pairs roomcast ran first in
    theirs_first: list[float] = field(default_factory=list)
    per_run: dict[str, float] = field(default_factory=dict)  # run file -> that run's median

    @property
    def median(self) -> float:
        return median(self.ratios) or 0.0  # a Pooled holds at least one ratio


def full_runs(runs: list[dict[str, Any]], cpu_model: str | None,
              since: str | None) -> list[dict[str, Any]]:
    """Full (not quick) runs on ``cpu_model`` (default: the latest full run's) started on or
    after ``since`` (an ISO date or timestamp prefix)."""
    full = [r for r in runs if not r.get("quick")]
    if not full:
        return []
    model = cpu_model or full[-1].get("machine", {}).get("cpu_model")
    return [r for r in full
            if r.get("machine", {}).get("cpu_model") == model
            and (since is None or r.get("started", "") >= since)]


def pool(runs: list[dict[str, Any]], figure: str) -> list[Pooled]:
    """Every configuration's pairs in ``runs``, per counterpart, in configuration order."""
    pooled: dict[tuple[str, str], Pooled] = {}
    for run in runs:
        for rec in run.get("results", []):
            for against in rec.get("repeats", {}):
                if against == OURS:  # our own repeats are one side of every pair
                    continue
                pairs = pair_figures(rec, against)[figure]
                ratios = pairs["ratios"]
                if not ratios:
                    continue
                entry = pooled.setdefault((rec["id"], against), Pooled(rec["id"], against))
                entry.ratios.extend(ratios)
                for ratio, ours_first in zip(ratios, pairs["ours_first"], strict=True):
                    (entry.ours_first if ours_first else entry.theirs_first).append(ratio)
                entry.per_run[run.get("_file", "?")] = median(ratios) or 0.0
    return sorted(pooled.values(), key=lambda p: (p.config, p.against))


def table(pooled: list[Pooled], figure: str) -> str:
    lines = [f"| configuration | ours / | {figure}: median of all pairs | pairs | runs | "
             "lowest-highest pair | ours first / theirs first | each run's median |",
             "|---|---|---|---|---|---|---|---|"]
    for p in pooled:
        runs = ", ".join(f"{name.removesuffix('.json')} {m:.2f}x"
                         for name, m in sorted(p.per_run.items()))
        order = " / ".join(f"{median(side) or 0:.3f}x" if side else "-"
                           for side in (p.ours_first, p.theirs_first))
        spread = f"{min(p.ratios):.2f}x-{max(p.ratios):.2f}x"
        lines.append(f"| {p.config} | {p.against} | {p.median:.3f}x | {len(p.ratios)} | "
                     f"{len(p.per_run)} | {spread} | {order} | {runs} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.pooled", description=__doc__)
    parser.add_argument("--runs", type=Path, default=RUNS, help="directory of run files")
    parser.add_argument("--cpu-model", help="default: the latest full run's")
    parser.add_argument("--since", help="ISO date or timestamp, e.g. 2026-12-03")
    parser.add_argument("--figure", choices=PAIRED_FIGURES, default="cpu_per_delivery_us")
    args = parser.parse_args(argv)
    runs = full_runs(load_runs(args.runs), args.cpu_model, args.since)
    pooled = pool(runs, args.figure)
    if not pooled:
        parser.exit(1, "no paired configurations in the chosen runs\n")
    print(f"{len(runs)} full run(s) from {args.runs}: "
          + ", ".join(r.get("_file", "?").removesuffix(".json") for r in runs))
    print(table(pooled, args.figure))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
