"""deploy/runpod-worker/handler.py under the REAL `runpod.serverless` worker loop.

The loop polls the fake RunPod's job-take / job-done / job-stop URLs (reference §2.7); the
handler starts a fake ComfyUI itself (COMFY_START_COMMAND) and runs workflows on it; the
server's own serverless client submits and polls through the public API.
"""
import base64
import os
import subprocess
import sys
import time

import pytest
import requests

from tests.conftest import OUTPUT_DIR, ROOT, free_port, wait_for
from tests.fakes.comfyui import make_png
from tests.fakes.runpod import ENDPOINT_ID, FakeRunPod
from workers.clients import Done, Failed, Progress
from workers.clients.runpod import RunPodClient

pytestmark = pytest.mark.integration

VIDEO_WORKFLOW = {
    "1": {"class_type": "EmptyImage", "inputs": {"width": 32, "height": 32, "batch_size": 4, "color": 255}},
    "2": {"class_type": "CreateVideo", "inputs": {"images": ["1", 0], "fps": 8.0}},
    "3": {"class_type": "SaveVideo", "inputs": {"video": ["2", 0], "filename_prefix": "clip", "format": "mp4",
                                                "codec": "h264"}},
    "4": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "frame"}},
    "5": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}},
}
SLOW_WORKFLOW = {
    "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "v1-5-pruned-emaonly.safetensors"}},
    "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
    "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a cat", "clip": ["4", 1]}},
    "3": {"class_type": "KSampler", "inputs": {"model": ["4", 0], "positive": ["6", 0], "negative": ["6", 0],
                                               "latent_image": ["5", 0], "seed": 1, "steps": 20, "cfg": 7.0,
                                               "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}},
    "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
    "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "slow"}},
}


@pytest.fixture(scope="module")
def serverless():
    """The fake control plane, one real worker process, and the client that talks to both."""
    fake = FakeRunPod(mode="worker", take_wait=0.5).start()
    comfy_port = free_port()
    OUTPUT_DIR.mkdir(exist_ok=True)
    log_path = OUTPUT_DIR / "runpod-worker-handler.log"
    env = {**os.environ, **fake.worker_env(), "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1",
           "COMFY_HOST": f"127.0.0.1:{comfy_port}", "COMFY_START_TIMEOUT": "30",
           "COMFY_START_COMMAND": f"{sys.executable} -m tests.fakes.comfyui --port {comfy_port} "
                                  f"--steps 40 --step-delay 0.05"}
    with open(log_path, "w") as log:
        worker = subprocess.Popen([sys.executable, "deploy/runpod-worker/handler.py"], cwd=ROOT, env=env,
                                  stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    client = RunPodClient(api_key="test-key", endpoint_id=ENDPOINT_ID, base_url=fake.serverless_url,
                          timeout=5, poll_interval=0.1)
    yield fake, client, f"http://127.0.0.1:{comfy_port}", log_path
    os.killpg(worker.pid, 15)
    worker.wait(15)
    fake.stop()


def answers(url):
    try:
        return requests.get(url, timeout=1).ok
    except requests.RequestException:
        return False


def run(client, spec_workflow, images=None, timeout=30):
    handle = client.submit({"workflow": spec_workflow, "images": images})
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = client.poll(handle)
        if not isinstance(result, Progress):
            return handle, result
        time.sleep(0.1)
    raise AssertionError("the serverless job never finished")


def test_a_workflow_with_a_video_output_comes_back_with_the_video(serverless):
    fake, client, _, log_path = serverless

    handle, done = run(client, VIDEO_WORKFLOW)

    assert isinstance(done, Done), done
    by_mime = {output.mime: output for output in done.outputs}
    assert set(by_mime) == {"video/mp4", "image/png"}  # the temp preview is not returned
    assert by_mime["video/mp4"].data[4:8] == b"ftyp" and by_mime["video/mp4"].filename.endswith(".mp4")
    assert by_mime["image/png"].data.startswith(b"\x89PNG")
    job = fake.jobs[handle["job_id"]]
    assert job.worker == "worker-1" and done.seconds == job.as_status()["executionTime"] / 1000
    assert "starting ComfyUI" in log_path.read_text()  # the handler started ComfyUI itself


def test_comfyuis_validation_error_comes_back_readable_and_fails_the_job_at_once(serverless):
    _, client, _, _ = serverless
    bad = {"1": {"class_type": "EmptyImage", "inputs": {"width": 0, "height": 8, "batch_size": 1, "color": 0}},
           "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}}}

    _, failed = run(client, bad)

    assert isinstance(failed, Failed) and not failed.retryable
    assert "ComfyUI rejected the workflow" in failed.error
    assert "node 1 (EmptyImage): Value 0 smaller than min of 1" in failed.error
    assert "Traceback" not in failed.error


def test_a_model_or_node_the_worker_lacks_fails_over_naming_what_it_lacks(serverless):
    _, client, _, _ = serverless
    missing_vae = {
        "1": {"class_type": "VAELoader", "inputs": {"vae_name": "missing_vae.safetensors"}},
        "2": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "3": {"class_type": "VAEDecode", "inputs": {"samples": ["2", 0], "vae": ["1", 0]}},
        "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "x"}}}
    unknown_node = {"1": {"class_type": "NoSuchNode", "inputs": {}},
                    "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}}}

    _, no_vae = run(client, missing_vae)
    _, no_node = run(client, unknown_node)

    assert isinstance(no_vae, Failed) and no_vae.retryable and no_vae.lacks == ("vae/missing_vae.safetensors",)
    assert isinstance(no_node, Failed) and no_node.retryable and no_node.lacks == ("node NoSuchNode",)


def test_input_images_are_uploaded_before_the_workflow_runs(serverless):
    _, client, _, _ = serverless
    picture = make_png(16, 16, (1, 2, 3))
    workflow = {"1": {"class_type": "LoadImage", "inputs": {"image": "input_1.png"}},
                "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "echo"}}}
    images = [{"name": "input_1.png", "image": "data:image/png;base64," + base64.b64encode(picture).decode()}]

    _, done = run(client, workflow, images=images)

    assert isinstance(done, Done), done
    assert done.outputs[0].data.startswith(b"\x89PNG")


def test_the_worker_reports_progress_while_comfyui_runs_at_most_once_a_second(serverless):
    """The SDK's progress_update reaches the fake exactly as RunPod gets it, and /status shows
    the last one while the job runs: the fake keeps the job running after its result came."""
    fake, client, _, _ = serverless
    fake.hold_results = True
    try:
        handle = client.submit({"workflow": SLOW_WORKFLOW})
        job = fake.jobs[handle["job_id"]]
        wait_for(lambda: job.held_result is not None, 30, message="the worker to send its result")
        running = client.poll(handle)
    finally:
        fake.hold_results = False
        fake.release()

    done = client.poll(handle)

    percents = [post["percent"] for post in job.progress_posts]
    assert percents and all(0 < p < 100 for p in percents)
    assert percents == sorted(set(percents))  # sent only when it moved
    # at most one a second: the sends fall between the job's take and its result
    assert len(percents) <= (job.result_at - job.started) / 1.0 + 1
    for post in job.progress_posts:
        assert set(post) <= {"percent", "node", "class_type", "step"}
        if post.get("class_type") == "KSampler":
            assert post["node"] == "3" and post["step"].endswith("/40")
    assert isinstance(running, Progress) and running.running and running.percent == job.progress["percent"]
    assert isinstance(done, Done) and done.outputs[0].data.startswith(b"\x89PNG")


def test_a_job_cancelled_on_runpod_is_interrupted_on_comfyui(serverless):
    fake, client, comfy_url, _ = serverless
    handle = client.submit({"workflow": SLOW_WORKFLOW})
    wait_for(lambda: fake.jobs[handle["job_id"]].status == "IN_PROGRESS", 10, message="the worker to take the job")
    wait_for(lambda: requests.get(f"{comfy_url}/queue", timeout=2).json()["queue_running"], 10,
             message="ComfyUI to run the prompt")

    client.cancel(handle)

    def interrupted():
        entry = requests.get(f"{comfy_url}/history/{handle['job_id']}", timeout=2).json().get(handle["job_id"])
        return entry and entry["status"]["messages"][-1][0] == "execution_interrupted"

    wait_for(interrupted, 10, message="ComfyUI to interrupt the prompt")
    assert isinstance(client.poll(handle), Failed)


def test_a_pod_stops_itself_when_no_job_arrived_for_the_set_time():
    """start.sh in pod mode: the second line of defence, with no server involved at all."""
    with FakeRunPod() as fake:
        pod_id = fake.add_orphan_pod(name="comfy-hybrid-self-stop")
        port = free_port()
        env = {**os.environ, "PYTHONPATH": str(ROOT), "COMFY_HYBRID_MODE": "pod", "COMFY_HOST": f"127.0.0.1:{port}",
               "COMFY_START_COMMAND": f"{sys.executable} -m tests.fakes.comfyui --port {port}",
               "POD_IDLE_STOP_SECONDS": "2", "POD_IDLE_CHECK_SECONDS": "0.3", "RUNPOD_POD_ID": pod_id,
               "RUNPOD_API_KEY": "test-key", "RUNPOD_API_BASE_URL": fake.url}
        launched = time.monotonic()
        script = subprocess.Popen(["bash", "deploy/runpod-worker/start.sh"], cwd=ROOT, env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_for(lambda: answers(f"http://127.0.0.1:{port}/system_stats"), 10, 0.2, "ComfyUI to start in the pod")

            wait_for(lambda: fake.terminated == [pod_id], 15, 0.1, "the pod to terminate itself")

            assert time.monotonic() - launched >= 1.0  # 2 s idle, counted in whole seconds by `date +%s`
            assert script.wait(10) == 0
            assert b"no job for 2s" in script.stdout.read()
        finally:
            if script.poll() is None:
                os.killpg(script.pid, 9)


def test_the_inventory_probe_job_reports_what_the_workers_comfyui_holds(serverless):
    _, client, _, _ = serverless
    handle = client.start_inventory_probe()
    deadline = time.monotonic() + 30
    while (result := client.inventory_probe_result(handle)) is None and time.monotonic() < deadline:
        time.sleep(0.1)
    inventory, seconds = result
    assert "v1-5-pruned-emaonly.safetensors" in inventory["models"]["checkpoints"]  # the manifest's, in the fake
    assert {"KSampler", "SaveImage", "CheckpointLoaderSimple"} <= set(inventory["nodes"]) and seconds >= 0
