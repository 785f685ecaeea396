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
import re
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
from .http import Http

NO_POD = "No pod was chosen for this job"
_GRAPHQL_LOCK = threading.Lock()


REGISTRY_AUTH_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def with_registry_auth(mutation: str, registry_auth_id: str) -> str:
    """The SDK's pod mutation with `containerRegistryAuthId` (a field of RunPod's deploy input the
    SDK's generator does not emit). The id is checked first: it goes into GraphQL text."""
    if not REGISTRY_AUTH_ID.match(registry_auth_id):
        raise BackendError(f"RUNPOD_POD_REGISTRY_AUTH_ID {registry_auth_id!r} is not a RunPod id", retryable=False,
                           misconfigured=True)
    return mutation.replace("input: {", f'input: {{\n          containerRegistryAuthId: "{registry_auth_id}",', 1)


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

    def create(self, *, name: str, image: str, gpu_types: list[str], env: dict, disk_gb: int,
               volume_id: str = "", registry_auth_id: str = "") -> dict:
        """Try each GPU type in order; the first that RunPod can place wins. With a network
        volume the pod must run in the volume's data center (RunPod's own create_pod looks it up
        the same way), mounted at /workspace where the image's ComfyUI reads models. A private
        image is pulled with the registry credentials saved on RunPod under `registry_auth_id`."""
        data_center = self.volume(volume_id)["dataCenterId"] if volume_id else None
        errors = []
        for gpu_id in gpu_types:
            try:
                gpu = self.gpu(gpu_id)
                mutation = pod_mutations.generate_pod_deployment_mutation(
                    name=name, image_name=image, gpu_type_id=gpu_id, cloud_type=self.cloud_type,
                    support_public_ip=True, start_ssh=False, gpu_count=1, volume_in_gb=0,
                    container_disk_in_gb=disk_gb, min_vcpu_count=1, min_memory_in_gb=1, docker_args="",
                    ports="8188/http", volume_mount_path="/workspace", env=env,
                    network_volume_id=volume_id or None, data_center_id=data_center)
                if registry_auth_id:
                    mutation = with_registry_auth(mutation, registry_auth_id)
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
        where = f" in data center {data_center} (where network volume {volume_id} is)" if data_center else ""
        raise BackendError(f"RunPod could not start a pod{where} — " + "; ".join(errors), retryable=True)

    def volume(self, volume_id: str) -> dict:
        """The network volume `volume_id` as RunPod lists it: {id, name, size, dataCenterId}."""
        user = self._call("list the network volumes", ctl_commands.get_user, api_key=self.api_key) or {}
        for volume in user.get("networkVolumes") or []:
            if volume.get("id") == volume_id:
                return volume
        raise BackendError(f"RunPod has no network volume {volume_id} on this account (RUNPOD_NETWORK_VOLUME_ID)",
                           retryable=False, misconfigured=True)

    def get(self, pod_id: str) -> Optional[dict]:
        return self._call("read the pod", ctl_commands.get_pod, pod_id, api_key=self.api_key)

    def list(self) -> list[dict]:
        return self._call("list the pods", ctl_commands.get_pods, api_key=self.api_key) or []

    def running_named(self, name: str) -> Optional[dict]:
        """The running pod called `name`, in create()'s shape, or None: how a redelivered spawn
        finds the pod its first delivery made instead of making a second one."""
        for remote in self.list():
            if remote.get("name") == name and remote.get("desiredStatus") == "RUNNING":
                gpu = (remote.get("machine") or {}).get("gpuDisplayName") or ""
                return {"id": remote["id"], "gpu_type": gpu, "cost_per_hour": Decimal(str(remote.get("costPerHr") or 0))}
        return None

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

    def sync_status(self, url: str) -> dict:
        """A volume sync pod's `GET /sync` (workers/installer/volume.py): {state, message, files,
        bytes_done, bytes_total}. BackendError while it does not answer (still starting)."""
        status = Http(url, "The volume sync pod", timeout=self.comfy_options["health_timeout"]).json("GET", "/sync")
        if not isinstance(status, dict) or status.get("state") not in ("running", "done", "failed"):
            raise BackendError("The volume sync pod answered something other than its status", retryable=True)
        return status

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
