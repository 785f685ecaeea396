"""The RunPod worker's progress report (deploy/runpod-worker/handler.py), fed ComfyUI's events
one by one with a clock the test moves: what it computes, when it sends, what it ignores.
(tests/deploy/test_runpod_worker_handler.py runs it for real under the SDK's worker loop.)"""
import importlib.util
import json

import pytest

from tests.conftest import ROOT, free_port

spec = importlib.util.spec_from_file_location("runpod_worker_handler", ROOT / "deploy/runpod-worker/handler.py")
handler = importlib.util.module_from_spec(spec)
spec.loader.exec_module(handler)

JOB = {"id": "job-1", "input": {}}
WORKFLOW = {"4": {"class_type": "CheckpointLoaderSimple", "inputs": {}},
            "5": {"class_type": "EmptyLatentImage", "inputs": {}},
            "3": {"class_type": "KSampler", "inputs": {}},
            "9": {"class_type": "SaveImage", "inputs": {}}}


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


@pytest.fixture
def report():
    sent, clock = [], Clock()
    report = handler.ProgressReport(JOB, WORKFLOW, send=lambda job, payload: sent.append((job["id"], payload)),
                                    clock=clock)
    report.sent_payloads, report.test_clock = sent, clock
    return report


def event(kind, **data):
    return json.dumps({"type": kind, "data": {"prompt_id": JOB["id"], **data}})


def states(**nodes):
    """progress_state's `nodes`: id=(state, value, max)."""
    return {node_id: {"state": state, "value": value, "max": top, "node_id": node_id}
            for node_id, (state, value, top) in nodes.items()}


def test_percent_is_finished_nodes_plus_the_running_nodes_steps_out_of_the_workflows_nodes(report):
    report.feed(event("execution_start"))
    report.feed(event("progress_state", nodes=states(**{"4": ("finished", 1, 1), "5": ("finished", 1, 1),
                                                        "3": ("running", 0, 1)})))
    report.feed(event("executing", node="3"))
    at_start = report.payload()
    report.feed(event("progress_state", nodes=states(**{"4": ("finished", 1, 1), "5": ("finished", 1, 1),
                                                        "3": ("running", 5, 20)})))
    report.feed(event("progress", node="3", value=5, max=20))

    assert at_start == {"percent": 50, "node": "3", "class_type": "KSampler"}  # no steps yet: no `step`
    assert report.payload() == {"percent": 56, "node": "3", "class_type": "KSampler", "step": "5/20"}  # (2+.25)/4


def test_cached_nodes_count_as_finished(report):
    report.feed(event("execution_cached", nodes=["4", "5"]))
    report.feed(event("progress_state", nodes=states(**{"3": ("running", 0, 1)})))

    assert report.payload()["percent"] == 50


def test_it_says_99_at_most_until_the_job_is_done(report):
    report.feed(event("progress_state", nodes=states(**{n: ("finished", 1, 1) for n in WORKFLOW})))

    assert report.payload() == {"percent": 99}


def test_it_sends_only_when_the_percent_moved_and_at_most_once_a_second(report):
    sent, clock = report.sent_payloads, report.test_clock
    running = {"4": ("finished", 1, 1), "5": ("finished", 1, 1)}
    report.flush()  # nothing done yet: 0 % is not news
    for step in (1, 2, 3):  # three steps within the same second: one update
        report.feed(event("progress_state", nodes=states(**running, **{"3": ("running", step, 4)})))
        report.flush()
        clock.now += 0.3
    clock.now += 0.2  # a second after the first update, and no new event: the last step goes now
    report.flush()
    clock.now += 5
    report.flush()  # no change: nothing

    assert [payload["percent"] for _, payload in sent] == [56, 68]  # (2 + 1/4)/4, (2 + 3/4)/4
    assert sent[1] == ("job-1", {"percent": 68, "node": "3", "class_type": "KSampler", "step": "3/4"})
    assert handler.PROGRESS_SECONDS == 1.0


def test_events_of_other_prompts_and_garbage_are_ignored(report):
    for text in ("not json", "[1, 2]", '"text"', json.dumps({"type": "progress_state", "data": [1]}),
                 json.dumps({"type": "progress_state", "data": {"prompt_id": "other", "nodes": states(
                     **{n: ("finished", 1, 1) for n in WORKFLOW})}}),
                 event("progress_state", nodes=5), event("progress_state", nodes={"4": "finished", "5": None}),
                 event("execution_cached", nodes=7), event("progress", node="3", value="x", max=None),
                 event("progress", node=["3"], value=1, max=0),
                 event("progress", node="5", value=float("inf"), max=float("nan"))):  # JSON's Infinity, NaN
        report.feed(text)

    report.flush()

    assert report.payload()["percent"] == 0 and report.sent_payloads == []


def test_a_progress_update_that_cannot_be_sent_never_fails_the_job(monkeypatch, capsys):
    def no_thread(job, payload):
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(handler.runpod.serverless, "progress_update", no_thread)

    handler.send_progress(JOB, {"percent": 10})

    assert "progress update not sent: RuntimeError" in capsys.readouterr().out


def test_without_comfyuis_websocket_the_job_just_runs_without_progress(monkeypatch, capsys, report):
    monkeypatch.setattr(handler, "COMFY_HOST", f"127.0.0.1:{free_port()}")  # nothing listens there

    watch = handler.ProgressWatch(report, "runpod-job-1")
    watch.listen(0.01)
    watch.close()

    assert watch.ws is None and "no progress for this job" in capsys.readouterr().out
