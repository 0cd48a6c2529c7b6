"""bench.pooled: every pair of every full run on one CPU model, per configuration."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bench import pooled
from bench.report import load_runs


def _record(config: str, ours: list[float], uws: list[float]) -> dict[str, Any]:
    def run(cpu: float) -> dict[str, float]:
        return {"cpu_per_delivery_us": cpu, "p99_ms": 10.0}
    return {"id": config,
            "runs": {"roomcast": run(ours[0]), "uws": run(uws[0])},
            "repeats": {"roomcast": [run(v) for v in ours[1:]],
                        "uws": [run(v) for v in uws[1:]]}}


def _run(started: str, model: str, records: list[dict[str, Any]],
         quick: bool = False) -> dict[str, Any]:
    return {"started": started, "quick": quick, "machine": {"cpu_model": model},
            "results": records}


def _write(tmp_path: Path, runs: dict[str, dict[str, Any]]) -> Path:
    for name, run in runs.items():
        (tmp_path / f"{name}.json").write_text(json.dumps(run))
    return tmp_path


def test_pairs_of_every_full_run_on_the_latest_model_are_pooled(tmp_path: Path) -> None:
    runs_dir = _write(tmp_path, {
        "a": _run("2026-12-02T10:00", "AMD", [_record("sat", [2.0, 1.0, 3.0], [1.0, 1.0, 3.0])]),
        "b": _run("2026-12-03T10:00", "AMD", [_record("sat", [1.0], [2.0])]),
        "c": _run("2026-12-03T11:00", "Xeon", [_record("sat", [9.0], [1.0])]),
        "d": _run("2026-12-03T12:00", "AMD", [_record("sat", [9.0], [1.0])], quick=True),
        "e": _run("2026-12-03T13:00", "AMD", [_record("fan", [1.0], [1.0])]),
    })
    runs = pooled.full_runs(load_runs(runs_dir), None, None)
    assert [r["_file"] for r in runs] == ["a.json", "b.json", "e.json"]
    by_config = {(p.config, p.against): p for p in pooled.pool(runs, "cpu_per_delivery_us")}
    assert set(by_config) == {("sat", "uws"), ("fan", "uws")}  # never ours against ours
    sat = by_config[("sat", "uws")]
    assert sorted(sat.ratios) == [0.5, 1.0, 1.0, 2.0]
    assert sat.median == 1.0
    assert sat.per_run == {"a.json": 1.0, "b.json": 0.5}
    assert sorted(sat.ours_first) == [0.5, 1.0, 2.0]  # each run's pairs 1 and 3
    assert sat.theirs_first == [1.0]


def test_a_pair_left_out_for_an_error_does_not_shift_the_order_of_the_rest(
    tmp_path: Path,
) -> None:
    def run(cpu: float, started: float, error: bool = False) -> dict[str, Any]:
        return {"cpu_per_delivery_us": cpu, "started_monotonic": started,
                **({"error": "driver died"} if error else {})}
    # pairs: ours first (2.0), theirs first but ours failed, ours first (4.0), theirs first (0.5)
    ours = [run(2.0, 1), run(9.0, 4, error=True), run(4.0, 5), run(0.5, 8)]
    uws = [run(1.0, 2), run(1.0, 3), run(1.0, 6), run(1.0, 7)]
    record = {"id": "sat", "runs": {"roomcast": ours[0], "uws": uws[0]},
              "repeats": {"roomcast": ours[1:], "uws": uws[1:]}}
    runs_dir = _write(tmp_path, {"a": _run("2026-12-03T10:00", "AMD", [record])})
    (sat,) = pooled.pool(load_runs(runs_dir), "cpu_per_delivery_us")
    assert sat.ratios == [2.0, 4.0, 0.5]
    assert (sat.ours_first, sat.theirs_first) == ([2.0, 4.0], [0.5])


def test_since_and_model_choose_the_runs(tmp_path: Path) -> None:
    runs_dir = _write(tmp_path, {
        "a": _run("2026-12-02T10:00", "AMD", [_record("sat", [2.0], [1.0])]),
        "b": _run("2026-12-03T10:00", "AMD", [_record("sat", [1.0], [2.0])]),
        "c": _run("2026-12-03T11:00", "Xeon", [_record("sat", [3.0], [1.0])]),
    })
    loaded = load_runs(runs_dir)
    assert [r["_file"] for r in pooled.full_runs(loaded, None, "2026-12-03")] == ["c.json"]
    amd = pooled.full_runs(loaded, "AMD", "2026-12-03")
    assert [p.ratios for p in pooled.pool(amd, "cpu_per_delivery_us")] == [[0.5]]


def test_the_command_prints_the_table_and_refuses_an_empty_choice(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    runs_dir = _write(tmp_path, {
        "a": _run("2026-12-03T10:00", "AMD", [_record("sat", [1.0, 3.0], [2.0, 2.0])])})
    assert pooled.main(["--runs", str(runs_dir)]) == 0
    out = capsys.readouterr().out
    assert "| sat | uws | 1.000x | 2 | 1 | 0.50x-1.50x | 0.500x / 1.500x | a 1.00x |" in out
    with pytest.raises(SystemExit) as refused:
        pooled.main(["--runs", str(runs_dir), "--since", "2027"])
    assert refused.value.code == 1
