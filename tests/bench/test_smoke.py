"""The benchmarks run end to end in tiny mode and write the figures they promise.

Behaviour and keys only: timings on a shared machine prove nothing, so none is asserted.
One `python -m bench --tiny` session runs all eight (one scratch database, one private Redis,
one worker process; the fleet's four GPU workers besides), in about a minute and a half.
"""
import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.integration

NAMES = ("throughput", "dispatch", "completion", "overhead", "fleet", "routing", "cost", "installer")
COMMON_KEYS = {"name", "title", "mode", "database", "started_at", "elapsed_seconds", "machine", "params",
               "figures", "baseline", "ratio", "ratio_meaning", "targets", "lines"}


def _bench(*args, timeout=240):
    return subprocess.run([sys.executable, "-m", "bench", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench-results")
    done = _bench("--tiny", "--out", str(out))
    assert done.returncode == 0, done.stdout[-5000:] + done.stderr[-5000:]
    return {path.stem: json.loads(path.read_text()) for path in out.glob("*.json")}, done.stdout


def test_every_benchmark_writes_its_json_with_the_common_keys(session):
    results, _ = session
    assert sorted(results) == sorted(NAMES)
    for name, result in results.items():
        assert COMMON_KEYS <= set(result), name
        assert result["name"] == name and result["mode"] == "tiny"
        assert isinstance(result["ratio"], (int, float)) or result["ratio"] is None
        assert result["targets"] and all({"what", "value", "target", "met"} <= set(t) for t in result["targets"])


def test_each_benchmark_prints_its_figures_the_ratio_and_its_targets(session):
    results, stdout = session
    for name, result in results.items():
        block = stdout.split(f"== {name}:", 1)[1].split("\n== ", 1)[0]
        assert "ratio" in block, name
        verdicts = [line for line in block.splitlines() if line.strip().startswith(("target MET", "target MISSED"))]
        assert len(verdicts) == len(result["targets"]), name
    assert "8 of 8 benchmarks ran" in stdout


def test_throughput_jobs_go_all_the_way_to_a_charge(session):
    result = session[0]["throughput"]
    jobs = result["figures"]
    assert jobs["succeeded"] == jobs["jobs"] == result["params"]["jobs"]
    assert jobs["charged"] == jobs["succeeded"]  # routed to a priced backend: hold, then charge
    assert result["baseline"]["before"]["tasks"] == result["params"]["noops"]
    assert result["baseline"]["raw_noop_per_second"] > 0


def test_dispatch_and_completion_report_percentiles_for_ours_and_the_baseline(session):
    dispatch, completion = session[0]["dispatch"], session[0]["completion"]
    for summary in (dispatch["figures"]["dispatch"], dispatch["baseline"]["celery_round_trip"],
                    completion["figures"]["websocket"], completion["baseline"]["polling_fallback"]):
        assert {"n", "p50_ms", "p99_ms"} <= set(summary) and summary["n"] > 0
    assert dispatch["figures"]["dispatch"]["n"] == dispatch["params"]["samples"]
    assert completion["figures"]["websocket"]["n"] == completion["params"]["samples"]


def test_overhead_runs_both_workflows_directly_and_through_the_system_and_counts_queries(session):
    result = session[0]["overhead"]
    figures, baseline, samples = result["figures"], result["baseline"], result["params"]["samples"]
    assert result["params"]["comfyui"] == "fake"  # COMFYUI_URL unset: the fake in its fastest mode
    runs = (figures["through_instant"], figures["through_slow"], baseline["direct_instant"], baseline["direct_slow"])
    assert all(summary["n"] == samples for summary in runs)
    # node_delay makes the slow workflow last 0.25 s on both sides (a floor, not a timing claim)
    assert figures["through_slow"]["min_ms"] >= 250 and baseline["direct_slow"]["min_ms"] >= 250
    assert result["ratio"] == round(figures["through_slow"]["p50_ms"] / baseline["direct_slow"]["p50_ms"], 4)
    queries = figures["queries"]
    assert queries["api"] > 0 and queries["workers"] > 0  # the workers' counter reaches every child
    assert queries["per_job"] == round(queries["api"] + queries["workers"], 2)
    assert 0 < queries["per_job_without_transaction_control"] < queries["per_job"]


def test_fleet_runs_a_burst_on_four_gpus_of_different_speeds_and_routes_with_fifty_backends(session):
    result = session[0]["fleet"]
    burst, gpus = result["figures"]["burst"], list(result["figures"]["burst"]["gpus"].values())
    assert [gpu["speed"] for gpu in gpus] == [1.0, 1.5, 2.0, 3.0]
    assert sum(gpu["jobs"] for gpu in gpus) == burst["jobs"] == result["params"]["jobs"]
    assert all(gpu["jobs"] > 0 for gpu in gpus)  # every GPU's own worker took work from its own queue
    assert [gpu["run_s"] for gpu in gpus] == sorted(gpu["run_s"] for gpu in gpus)  # 1× to 3×: runs grow
    assert burst["ideal_s"] > 0 and result["ratio"] == burst["ratio"]
    routing = result["figures"]["routing"]
    assert routing["1"]["n"] == routing["50"]["n"] == result["params"]["samples"]
    assert result["baseline"]["routing_one_backend"] == routing["1"]
    assert {row["function"].split(":")[-1] for row in routing["profile"]} >= {"job_route", "candidates_for"}


def test_routing_measures_every_backlog_level(session):
    result = session[0]["routing"]
    levels = result["figures"]["levels"]
    assert list(levels) == [str(level) for level in result["params"]["levels"]] + ["0 again"]
    assert all(level["n"] == result["params"]["samples"] and level["queries_per_decision"] > 0
               for level in levels.values())


def test_cost_replays_every_scenario_under_every_policy(session):
    scenarios = session[0]["cost"]["figures"]["scenarios"]
    assert {key.split("@")[0] for key in scenarios} == {"creator_with_gpu", "creator_without_gpu",
                                                       "burst_local_busy", "month"}
    for key, scenario in scenarios.items():
        expected = {"ours", "cloud-only", "round-robin", "ours-before"} | (
            {"local-only"} if scenario["has_local"] else set())
        assert set(scenario["policies"]) == expected, key
        assert all(p["failed"] == 0 and p["jobs"] == scenario["jobs"] for p in scenario["policies"].values()), key
        # a relaxation can never cost more than the policy it is computed for
        assert scenario["lower_bound"]["cost"] <= scenario["policies"]["ours"]["total_cost"] + 1e-6, key


def test_installer_compares_with_a_plain_and_a_throttled_copy(session):
    result = session[0]["installer"]
    assert result["figures"]["installer_mib_s"] > 0 and result["baseline"]["plain_copy_mib_s"] > 0
    assert {"installer", "plain", "durable", "ratio"} <= set(result["figures"]["throttled"])


def test_one_benchmark_runs_alone_by_name(tmp_path):
    done = _bench("cost", "--tiny", "--out", str(tmp_path), timeout=60)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert [path.name for path in tmp_path.glob("*.json")] == ["cost.json"]


def test_an_unknown_benchmark_is_refused_with_the_list_of_names():
    done = _bench("nope", timeout=30)
    assert done.returncode == 2
    assert "unknown benchmark nope" in done.stderr and "throughput" in done.stderr


def test_the_cost_simulation_is_deterministic():
    from bench import cost, costtrace

    config = cost.config_from_settings()
    first, second = (cost.evaluate(config, costtrace.scenarios(7, 2)[3]) for _ in range(2))
    assert first == second
