"""The chaos run, short (bench/chaos.py, `make chaos` runs the long one).

50 jobs through the JSON API, real Redis and real Celery workers (one per queue, plus beat) to
the fake ComfyUI, RunPod and Gemini, each behind a ChaosProxy failing 10 % of requests on a
fixed seed, while a worker is SIGKILLed (also on purpose inside a paid call to RunPod and to
Gemini), a pod's ComfyUI dies mid-job and Redis crashes twice (once coming back from its AOF,
once empty). Jobs are submitted to the real web server (gunicorn).
The run is a separate process (it configures Django for its own scratch database and Redis).
Small samples are noisy, so the success bar here is 95 %; the long run's target is 99 %.
"""
import json
import subprocess
import sys
import time
from collections import Counter
from decimal import Decimal

import pytest
import requests

from tests.conftest import ROOT
from tests.fakes.chaos_proxy import ChaosProxy
from tests.fakes.comfyui import FakeComfyUI

pytestmark = pytest.mark.integration

JOBS = 50


@pytest.fixture(scope="module")
def chaos(tmp_path_factory):
    out = tmp_path_factory.mktemp("chaos")
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "bench.chaos", "--jobs", str(JOBS), "--seed", "11", "--timeout", "90",
                           "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=280)
    report = done.stdout[-6000:] + done.stderr[-4000:]
    path = out / "chaos.json"
    assert path.exists(), report
    return json.loads(path.read_text()), done.returncode, report, time.monotonic() - started


def test_the_run_really_was_chaotic(chaos):
    result, _, report, _ = chaos
    faults = result["faults"]
    assert faults["proxies"]["local"]["fault_total"] > 0 and faults["proxies"]["runpod"]["fault_total"] > 0, report
    happened = Counter(event["what"] for event in faults["events"] if not event["detail"].startswith("skipped"))
    assert happened["kill worker"] >= 1 and happened["restart redis"] == 1, report
    assert happened["restart redis empty"] == 1, report  # as a Redis without an AOF comes back
    # a worker killed on purpose while RunPod or Google had started a paid run and not answered
    assert happened["kill during runpod /run"] + happened["kill during gemini call"] >= 1, report
    assert result["jobs"]["submitted"] == JOBS and result["jobs"]["refused_at_submit"] == 0, report


def test_every_job_ends_and_none_runs_twice(chaos):
    result, returncode, report, _ = chaos
    assert result["jobs"]["not_finished"] == 0, report
    assert result["duplicates"]["total"] == 0, result["duplicates"]
    assert result["paid_runs"]["unrecorded"] == 0, result["paid_runs"]  # against the fakes' own records
    assert Decimal(result["paid_runs"]["pod_time_unrecorded"]) <= Decimal("0.01"), result["paid_runs"]  # pods' uptime
    assert (returncode == 0) == result["invariants_hold"], report


def test_the_run_fails_on_a_ledger_that_does_not_add_up(tmp_path):
    done = subprocess.run([sys.executable, "-m", "bench.chaos", "--jobs", "3", "--seed", "2", "--fault-rate", "0",
                           "--timeout", "60", "--out", str(tmp_path), "--break-ledger"],
                          cwd=ROOT, capture_output=True, text=True, timeout=240)
    report = done.stdout[-4000:] + done.stderr[-3000:]
    result = json.loads((tmp_path / "chaos.json").read_text())
    missed = [t["what"] for t in result["targets"] if t["hard"] and not t["met"]]
    assert done.returncode == 1 and "ledger equals job costs (to the cent), every hold settled" in missed, report
    assert Decimal(result["ledger"]["difference"]) == Decimal("0.01"), result["ledger"]  # exactly the broken cent


def test_the_ledger_equals_the_job_costs_to_the_cent_and_every_hold_is_settled(chaos):
    ledger = chaos[0]["ledger"]
    assert ledger["matches_to_the_cent"], ledger
    assert ledger["holds_not_settled"] == 0 and ledger["charges_on_jobs_not_succeeded"] == 0, ledger


def test_no_pod_is_left_running_once_the_reaper_has_run(chaos):
    pods = chaos[0]["pods"]
    assert pods["left_running"] == 0, pods


def test_every_failure_is_one_the_user_could_not_have_avoided(chaos):
    failures = chaos[0]["failures"]
    assert failures["avoidable"] == 0, json.dumps([f for f in failures["jobs"] if not f["unavoidable"]], indent=1)


def test_at_least_95_percent_of_the_jobs_that_could_succeed_succeed(chaos):
    result, _, report, _ = chaos
    assert result["success_rate_of_jobs_that_could_succeed"] >= 0.95, report


# --- the proxy itself ---------------------------------------------------------------------------
@pytest.fixture
def comfy():
    with FakeComfyUI(steps=1, step_delay=0.01) as fake:
        yield fake


def _outcome(url):
    try:
        response = requests.get(url, timeout=0.5)
    except requests.Timeout:
        return "timeout"
    except requests.ConnectionError:
        return "connection error"
    try:
        response.json()
    except ValueError:
        return f"{response.status_code} not json"
    return response.status_code


def test_the_proxys_decisions_follow_the_seed_not_the_order_of_requests(comfy):
    decisions = []
    for _ in range(2):
        with ChaosProxy(comfy.url, seed=3, fault_rate=0.5, style="comfyui") as proxy:
            decisions.append([proxy.decide("GET", f"/history/{i % 7}")[0] for i in range(60)])
    assert decisions[0] == decisions[1] and {"pass", "http5xx"} <= set(decisions[0])


FAULTS_SEEN = [("http5xx", "not json"), ("garbage", "200 not json"), ("drop", "connection error"),
               ("hang", "timeout"), ("lost", "connection error")]


@pytest.mark.parametrize("kind, seen", FAULTS_SEEN)
def test_each_fault_looks_to_a_client_like_the_real_thing(comfy, kind, seen):
    with ChaosProxy(comfy.url, fault_rate=1.0, faults={kind: 1}, hang_seconds=2) as proxy:
        outcome = _outcome(proxy.url + "/queue")
        proxy.fault_rate = 0
        assert _outcome(proxy.url + "/queue") == 200
    assert seen in str(outcome)
    assert proxy.stats()["faults"] == {kind: 1}
    # Only a lost answer means the backend did the work.
    assert comfy.received.count(("GET", "/queue")) == (2 if kind == "lost" else 1)


def test_gemini_style_faults_are_googles_json_errors():
    from tests.fakes.gemini import FakeGemini

    with FakeGemini() as gemini, ChaosProxy(gemini.url, fault_rate=1.0, style="gemini", faults={"http429": 1}) as proxy:
        response = requests.post(proxy.url + "/v1beta/models/m:countTokens", json={},
                                 headers={"x-goog-api-key": gemini.api_key}, timeout=5)
    assert response.status_code == 429 and response.json()["error"]["status"] == "RESOURCE_EXHAUSTED"
    assert not gemini.requests  # a faulted request never reaches the backend
