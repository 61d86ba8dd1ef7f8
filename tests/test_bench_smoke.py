"""`make bench` still runs: bench/run.py --quick --only plain,embeddings,completions, end to end, and the JSON it
writes; and bench/compare.py's summary of its rounds.

This checks the harness (servers start on a fresh database, wrk and the open-loop client run, every gateway
figure has its direct baseline, the bars are evaluated), not the speed: timings are only ever measured, never
asserted (the machine is shared). Skipped without `wrk` (`apt-get install wrk`).
"""

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

needs_wrk = pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed (apt-get install wrk)")

FIGURES = {"rps", "requests", "p50_ms", "p90_ms", "p99_ms", "max_ms", "non_2xx", "socket_errors"}


@pytest.mark.slow
@needs_wrk
def test_quick_plain_bench_writes_every_figure_with_its_baseline(tmp_path):
    out = tmp_path / "bench.json"
    # The other endpoints ride on the same servers: about 6 s more than chat alone.
    only = "plain,embeddings,completions"
    result = subprocess.run(
        [sys.executable, "bench/run.py", "--quick", "--only", only, "--connections", "1,16", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    results = json.loads(out.read_text())

    assert {"meta", "plain", "embeddings", "completions", "bars"} <= set(results)
    assert "streams" not in results
    meta = results["meta"]
    assert meta["quick"] is True and meta["workers"] == 2
    assert meta["database"] in ("sqlite", "postgresql")
    assert meta["machine"]["cpus"] >= 1

    plain = results["plain"]
    assert [level["connections"] for level in plain["levels"]] == [1, 16]
    for level in plain["levels"]:
        assert set(level["direct"]) >= FIGURES, level
        assert set(level["gateway"]) >= FIGURES | {"cpu_ms_per_request"}, level
        for side in ("direct", "gateway"):
            figures = level[side]
            assert figures["requests"] > 0 and figures["rps"] > 0, (side, figures)
            # Every request through the gateway (auth, limits, usage) succeeded.
            assert figures["non_2xx"] == 0 and figures["socket_errors"] == 0, (side, figures)
        assert level["added_p50_ms"] == pytest.approx(level["gateway"]["p50_ms"] - level["direct"]["p50_ms"], abs=1e-3)

    paced = plain["paced"]
    for side in ("direct", "gateway"):
        assert paced[side]["completed"] == paced[side]["requests"] > 0, paced[side]
        assert paced[side]["errors"] == 0 and paced[side]["non_2xx"] == 0, paced[side]
        assert {"p50", "p99", "max"} <= set(paced[side]["latency_ms"])

    cost = plain["limits_cost"]
    assert cost["with_limits"]["requests"] > 0 and cost["without_limits"]["requests"] > 0
    assert "p50_ms" in cost and "cpu_ms_per_request" in cost

    if meta["database"] == "postgresql":
        counters = plain["database"]["counters"]
        assert counters["transactions"]["during_run"] >= 0
        assert "per_request" in counters["rows_inserted"]

    for case, path in (("embeddings", "/v1/embeddings"), ("completions", "/v1/completions")):
        assert results[case]["path"] == path
        [level] = results[case]["levels"]
        assert level["connections"] == 16
        assert set(level["direct"]) >= FIGURES and set(level["gateway"]) >= FIGURES | {"cpu_ms_per_request"}
        for side in ("direct", "gateway"):
            figures = level[side]
            assert figures["requests"] > 0 and figures["non_2xx"] == 0 and figures["socket_errors"] == 0, (case, side)

    names = [bar["name"] for bar in results["bars"]]
    assert any("16 connections: req/s" in name for name in names), names
    assert any("open loop" in name for name in names), names

    # The table went to stdout.
    assert "Plain completions" in result.stdout and "Bars" in result.stdout
    assert "/v1/embeddings" in result.stdout and "/v1/completions" in result.stdout


def test_without_wrk_the_bench_says_how_to_install_it(tmp_path):
    result = subprocess.run(
        [sys.executable, "bench/run.py", "--quick", "--out", str(tmp_path / "never.json")],
        cwd=ROOT,
        env={"PATH": str(tmp_path)},  # no wrk on this PATH
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "apt-get install wrk" in result.stderr
    assert not (tmp_path / "never.json").exists()


def test_compare_summary_is_the_median_of_the_rounds_and_head_over_base():
    spec = importlib.util.spec_from_file_location("bench_compare", ROOT / "bench" / "compare.py")
    sys.path.insert(0, str(ROOT / "bench"))  # compare.py imports run.py as a sibling, as when run as a script
    try:
        compare = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(compare)
    finally:
        sys.path.remove(str(ROOT / "bench"))

    def run(rps, p50, errors=0):
        figures = {"rps": rps, "p50_ms": p50, "p99_ms": 2 * p50, "cpu_ms_per_request": 1000 / rps}
        return {**figures, "non_2xx": errors, "socket_errors": 0}

    rounds = [
        {"order": ["base", "head"], "base": run(1000, 8.0), "head": run(1500, 6.0)},
        {"order": ["head", "base"], "base": run(1200, 7.0), "head": run(1800, 5.0, errors=1)},
        {"order": ["base", "head"], "base": run(900, 9.0), "head": run(1200, 7.0)},
    ]
    summary = compare.summarize(rounds)

    assert summary["base"]["rps"] == {"median": 1000, "min": 900, "max": 1200}
    assert summary["head"]["rps"]["median"] == 1500
    assert summary["ratio"]["rps"] == 1.5
    assert summary["ratio"]["p50_ms"] == pytest.approx(6.0 / 8.0, abs=1e-3)
    assert summary["base"]["errors"] == 0 and summary["head"]["errors"] == 1
