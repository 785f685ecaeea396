"""RunPod on-demand pods: the GraphQL pod API, and jobs on a pod's ComfyUI.

A pod is a remote ComfyUI, so jobs reuse ComfyUIClient. Clients never touch the database:
the service layer chooses the pod (workers/pods/services.py) and puts it in the spec as
`spec["pod"] = {"id", "url"}`; the handle then carries the pod id and URL, so polls,
cancels and downloads need nothing but the handle.

GraphQL facts used here (shared/reference/external-apis.md §2.3):
- The SDK posts to `{RUNPOD_API_BASE_URL}/graphql`, reading that env var on every call, so it
  is set under a lock for the duration of each call. The key is passed as `api_key=`, never
  put in `runpod.api_key` (create/stop/terminate read that global, so they are sent through
  `run_graphql_query` with the SDK's own mutation text instead).
- `create_pod` first checks `gpuTypes(input:{id})`; we do the same and keep the price.
- `pod.runtime` is null while the container starts; "running" does not mean ComfyUI is up,
  so readiness is `runtime` present AND `GET /system_stats` answering through the proxy.
"""
import os
import threading
from decimal import Decimal
from typing import Optional

import requests
from django.conf import settings
from runpod import error as runpod_error
from runpod.api import ctl_commands
from runpod.api.graphql import run_graphql_query
from runpod.api.mutations import pods as pod_mutations

from .base import BackendError, Client, Done, Health, ProgressCallback, RemoteOutput
from .comfyui import ComfyUIClient

NO_POD = "No pod was chosen for this job"
_GRAPHQL_LOCK = threading.Lock()


class PodApi:
    """create / get / list / terminate / stop through the runpod SDK's GraphQL layer."""

    def __init__(self, *, api_key: str, api_base: str, cloud_type: str = "SECURE"):
        if not api_key:
            raise BackendError("RUNPOD_API_KEY not set", retryable=False)
        self.api_key = api_key
        self.api_base = api_base.rstrip("/")
        self.cloud_type = cloud_type

    def gpu(self, gpu_id: str) -> dict:
        return self._call("look up the GPU type", ctl_commands.get_gpu, gpu_id, api_key=self.api_key)

    def price_per_hour(self, gpu: dict) -> Decimal:
        community = self.cloud_type == "COMMUNITY"
        price = gpu.get("communityPrice" if community else "securePrice") or \
            (gpu.get("lowestPrice") or {}).get("uninterruptablePrice") or 0
        return Decimal(str(price))

    def create(self, *, name: str, image: str, gpu_types: list[str], env: dict, disk_gb: int) -> dict:
        """Try each GPU type in order; the first that RunPod can place wins."""
        errors = []
        for gpu_id in gpu_types:
            try:
                gpu = self.gpu(gpu_id)
                mutation = pod_mutations.generate_pod_deployment_mutation(
                    name=name, image_name=image, gpu_type_id=gpu_id, cloud_type=self.cloud_type,
                    support_public_ip=True, start_ssh=False, gpu_count=1, volume_in_gb=0,
                    container_disk_in_gb=disk_gb, min_vcpu_count=1, min_memory_in_gb=1, docker_args="",
                    ports="8188/http", volume_mount_path="/workspace", env=env)
                data = self._call("create a pod", run_graphql_query, mutation, api_key=self.api_key)
            except BackendError as error:
                if not error.retryable and "rejected" in error.message:
                    raise
                errors.append(f"{gpu_id}: {error.message}")
                continue
            pod = (data.get("data") or {}).get("podFindAndDeployOnDemand") or {}
            if pod.get("id"):
                return {"id": pod["id"], "gpu_type": gpu_id, "cost_per_hour": self.price_per_hour(gpu)}
            errors.append(f"{gpu_id}: RunPod answered without a pod id")
        raise BackendError("RunPod could not start a pod — " + "; ".join(errors), retryable=True)

    def get(self, pod_id: str) -> Optional[dict]:
        return self._call("read the pod", ctl_commands.get_pod, pod_id, api_key=self.api_key)

    def list(self) -> list[dict]:
        return self._call("list the pods", ctl_commands.get_pods, api_key=self.api_key) or []

    def terminate(self, pod_id: str) -> None:
        mutation = pod_mutations.generate_pod_terminate_mutation(pod_id)
        try:
            self._call("terminate the pod", run_graphql_query, mutation, api_key=self.api_key)
        except BackendError as error:
            if "not found" in error.message.lower():
                return  # already gone: terminating is idempotent
            raise

    def _call(self, what: str, function, *args, **kwargs):
        with _GRAPHQL_LOCK:
            os.environ["RUNPOD_API_BASE_URL"] = self.api_base
            try:
                return function(*args, **kwargs)
            except runpod_error.AuthenticationError:
                raise BackendError("RUNPOD_API_KEY rejected by RunPod (HTTP 401)", retryable=False)
            except runpod_error.QueryError as error:
                raise BackendError(f"RunPod refused to {what}: {error}", retryable=True)
            except requests.Timeout:
                raise BackendError(f"RunPod did not answer in time when asked to {what}", retryable=True)
            except requests.ConnectionError:
                raise BackendError(f"RunPod is not reachable (could not {what})", retryable=True)
            except ValueError as error:  # not JSON, or get_gpu's "No GPU found"
                raise BackendError(f"RunPod could not {what}: {error}", retryable=True)
            except (KeyError, TypeError, AttributeError) as error:  # JSON without "data" (a 429 or 5xx body)
                raise BackendError(f"RunPod sent an answer without the expected data when asked to {what} "
                                   f"({type(error).__name__}: {error})", retryable=True)


class PodClient(Client):
    """Jobs on the ComfyUI of the pod named in the spec / handle."""

    def __init__(self, *, api: Optional[PodApi], url_template: str, comfy_options: dict, image: str = ""):
        self.api = api
        self.url_template = url_template
        self.comfy_options = comfy_options
        self.image = image

    @classmethod
    def for_backend(cls, backend, url: str) -> "PodClient":
        api = PodApi(api_key=settings.RUNPOD_API_KEY, api_base=url or settings.RUNPOD_API_BASE_URL,
                     cloud_type=settings.RUNPOD_POD_CLOUD_TYPE) if settings.RUNPOD_API_KEY else None
        # Through RunPod's proxy: Cloudflare cuts a response at 100 s, so stay well below it.
        options = {"timeout": settings.COMFYUI_HTTP_TIMEOUT, "health_timeout": max(5.0, settings.COMFYUI_HEALTH_TIMEOUT),
                   "watch_seconds": settings.COMFYUI_WATCH_SECONDS, "poll_interval": settings.COMFYUI_POLL_INTERVAL}
        return cls(api=api, url_template=settings.RUNPOD_POD_URL_TEMPLATE, comfy_options=options,
                   image=settings.RUNPOD_POD_IMAGE)

    def pod_url(self, pod_id: str) -> str:
        return self.url_template.format(pod_id=pod_id)

    def comfy(self, url: str) -> ComfyUIClient:
        return ComfyUIClient(url, **self.comfy_options)

    # --- jobs -----------------------------------------------------------------------------
    def submit(self, spec: dict) -> dict:
        pod = spec.get("pod") or {}
        if not pod.get("url"):
            raise BackendError(NO_POD, retryable=True)
        handle = self.comfy(pod["url"]).submit(spec)
        return {**handle, "pod_id": pod["id"], "url": pod["url"]}

    def poll(self, handle: dict, on_progress: Optional[ProgressCallback] = None):
        result = self.comfy(handle["url"]).poll(handle, on_progress)
        if isinstance(result, Done):
            for output in result.outputs:
                output.ref["pod_url"] = handle["url"]
        return result

    def cancel(self, handle: dict) -> None:
        if handle.get("url"):
            self.comfy(handle["url"]).cancel(handle)

    def download(self, output: RemoteOutput) -> bytes:
        if output.data is not None:
            return output.data
        return self.comfy(output.ref["pod_url"]).download(output)

    def health(self) -> Health:
        """The pods backend is usable when the RunPod API answers with our key; each pod's
        ComfyUI is probed separately by the pod services."""
        if self.api is None:
            return Health(ok=False, detail="RUNPOD_API_KEY not set")
        if not self.image:
            return Health(ok=False, detail="RUNPOD_POD_IMAGE not set")
        try:
            pods = self.api.list()
        except BackendError as error:
            return Health(ok=False, detail=error.message)
        running = sum(1 for pod in pods if pod.get("desiredStatus") == "RUNNING")
        return Health(ok=True, detail=f"RunPod API answers; {running} pod(s) running on the account")
