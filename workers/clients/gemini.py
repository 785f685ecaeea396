"""Client for Google Gemini through google-genai: images through an image model's
`generateContent`, video through Veo as a long-running operation.

Facts this relies on (shared/reference/external-apis.md §0 and §3, google-genai 3.4.0):
- Google retires models and SDK paths often, so model ids, transport and API version are
  settings (GEMINI_*), and a Backend row's `config` may override the models in the admin.
- Two transports, chosen by GEMINI_TRANSPORT: "gemini" (the Gemini Developer API, an AI Studio
  key) and "vertex" (Vertex AI express mode: a Google Cloud API key and `vertexai=True`, no
  project/location). Both send the key as the `x-goog-api-key` header, never in a URL.
- The API version is always passed explicitly (SDK defaults moved between releases: 3.0 made
  the Developer API default `v1`, while Veo and image output are documented on `v1beta`).
- 3.x refuses `generate_videos` on the Developer API before sending anything. See
  `_start_video_developer` for how video still works there.
- A Developer API video is a file URI `https://…/files/<id>:download?alt=media`; the SDK takes
  the id from it and downloads from the configured base URL. Vertex returns the bytes inline.
- Retries belong to us, not the SDK (`retry_options=None`: one attempt per call): a poll never
  sleeps; it returns `Progress(next_poll=…)` and the poll task re-schedules itself.
"""
import importlib
import json
import logging
import math
import mimetypes
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Optional

from google import genai
from google.genai import errors as genai_errors
from google.genai import types

from .base import BackendError, Client, Done, Failed, Health, Progress, ProgressCallback, RemoteOutput

log = logging.getLogger(__name__)


def _http_errors():
    """Transport errors of httpx and of httpx2, its fork that google-genai 3.x prefers when
    installed (it is one of its dependencies): failures to connect (nothing was sent), timeouts,
    then every other HTTP error."""
    connects, timeouts, others = [], [], []
    for name in ("httpx", "httpx2"):
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        connects.extend((module.ConnectError, module.ConnectTimeout))
        timeouts.append(module.TimeoutException)
        others.append(module.HTTPError)
    return tuple(connects), tuple(timeouts), tuple(others)


CONNECT_ERRORS, TIMEOUT_ERRORS, HTTP_ERRORS = _http_errors()

TRANSPORTS = {"gemini": "Gemini API", "vertex": "Vertex AI express"}
DEFAULT_API_VERSION = {"gemini": "v1beta", "vertex": "v1"}
# Aspect ratios the Gemini image models accept, and the two Veo accepts.
IMAGE_ASPECTS = ("1:1", "2:3", "3:2", "3:4", "4:3", "4:5", "5:4", "9:16", "16:9", "21:9")
VIDEO_ASPECTS = ("16:9", "9:16")
VEO_DURATIONS = (4, 6, 8)  # seconds Veo 3.x accepts
HEALTH_TIMEOUT = 5.0
# A candidate that ended for one of these reasons was blocked by Google's filters: the
# prompt is the problem, another try (or backend) will not help.
BLOCKED_REASONS = {"SAFETY", "IMAGE_SAFETY", "PROHIBITED_CONTENT", "IMAGE_PROHIBITED_CONTENT", "BLOCKLIST",
                   "SPII", "RECITATION", "IMAGE_RECITATION", "NO_IMAGE", "LANGUAGE", "MODEL_ARMOR", "JAILBREAK"}
# google.rpc codes of a failed operation that are the request's fault, not Google's.
PERMANENT_RPC_CODES = {3, 7, 9, 16}  # INVALID_ARGUMENT, PERMISSION_DENIED, FAILED_PRECONDITION, UNAUTHENTICATED

ERR_WORKFLOW = "Gemini cannot run a custom ComfyUI workflow; choose a ComfyUI backend (local or cloud)."
ERR_NO_PROMPT = "Gemini needs a text prompt."
ERR_NOT_CONFIGURED = "not configured"


class GeminiError(BackendError):
    """A classed Gemini failure. `transient` (429, 5xx, timeouts) is worth waiting for on the
    same backend; other retryable errors (a retired model) should fail over at once."""

    transient, retry_after = False, None  # also after unpickling (BackendError.__reduce__)

    def __init__(self, message: str, *, retryable: bool, transient: bool = False,
                 retry_after: Optional[float] = None):
        super().__init__(message, retryable=retryable, outage=transient)
        self.transient = transient
        self.retry_after = retry_after


@dataclass(frozen=True)
class GeminiOptions:
    transport: str = "gemini"
    api_version: str = ""  # empty: DEFAULT_API_VERSION of the transport
    base_url: str = ""  # empty: Google's
    image_model: str = "gemini-3.1-flash-image"
    video_model: str = "veo-3.1-generate-001"
    timeout: float = 120.0  # seconds, per HTTP call
    video_poll_seconds: float = 10.0
    retry_seconds: float = 2.0  # first wait after a 429/5xx
    retry_max_seconds: float = 30.0  # longest wait after a 429/5xx; below the sweeper's re-send age
    image_give_up_seconds: float = 180.0  # an image attempt fails over after this long
    video_give_up_seconds: float = 1200.0  # a video attempt fails over after this long


class GeminiClient(Client):
    service = "Gemini"

    def __init__(self, api_key: str, options: GeminiOptions = GeminiOptions()):
        self._api_key = api_key or ""
        self.options = options

    def __repr__(self):  # never the key
        return f"GeminiClient(transport={self.options.transport!r})"

    @classmethod
    def for_backend(cls, backend, url: str) -> "GeminiClient":
        from django.conf import settings

        config = backend.config or {}
        return cls(settings.GEMINI_API_KEY, GeminiOptions(
            transport=settings.GEMINI_TRANSPORT, api_version=settings.GEMINI_API_VERSION,
            base_url=url or settings.GEMINI_BASE_URL,
            image_model=config.get("image_model") or settings.GEMINI_IMAGE_MODEL,
            video_model=config.get("video_model") or settings.GEMINI_VIDEO_MODEL,
            timeout=settings.GEMINI_HTTP_TIMEOUT, video_poll_seconds=settings.GEMINI_VIDEO_POLL_SECONDS,
            retry_seconds=settings.GEMINI_RETRY_SECONDS, retry_max_seconds=settings.GEMINI_RETRY_MAX_SECONDS,
            image_give_up_seconds=settings.GEMINI_IMAGE_GIVE_UP_SECONDS,
            video_give_up_seconds=settings.GEMINI_VIDEO_GIVE_UP_SECONDS,
        ))

    # --- submit ---------------------------------------------------------------------------
    def submit(self, spec: dict) -> dict:
        """Images: only record the request; the first poll makes the call, so this task stays
        quick and a 429 there gets the poll's backoff. Video: start the Veo operation now and
        keep its name, which is all a later poll (on any worker) needs."""
        if spec.get("custom_workflow"):
            raise BackendError(ERR_WORKFLOW, retryable=False)  # the router never sends one; defence in depth
        if not (spec.get("prompt") or "").strip():
            raise BackendError(ERR_NO_PROMPT, retryable=False)
        self._check_configured()
        handle = self._new_handle(spec)
        if handle["kind"] == "video":
            with self._sdk(handle) as sdk:
                handle["operation"] = _start_video(sdk, handle)
            log.info("gemini: Veo operation %s started for attempt %s", handle["operation"], handle["attempt_id"])
        return handle

    def starts_paid_run(self, phase: str, handle: dict) -> bool:
        """Veo starts at submit; an image is generated by the poll's generateContent. Neither
        takes an idempotency key, so a call cut short may still be billed."""
        video = handle.get("kind") == "video"
        return video if phase == "submit" else not video

    def _new_handle(self, spec: dict) -> dict:
        """Everything a poll needs, as plain JSON (it is stored on the attempt): the request,
        the transport and API version it went to, and the attempt's deadline. No key."""
        video = spec.get("kind") == "video"
        now = time.time()
        give_up = self.options.video_give_up_seconds if video else self.options.image_give_up_seconds
        width, height = int(spec.get("width") or 512), int(spec.get("height") or 512)
        handle = {
            "kind": "video" if video else "image", "transport": self.options.transport,
            "api_version": self._api_version(), "attempt_id": str(spec.get("attempt_id", "")),
            "model": self.options.video_model if video else self.options.image_model,
            "prompt": spec["prompt"].strip(), "negative_prompt": (spec.get("negative_prompt") or "").strip(),
            "seed": _seed(spec.get("seed")),
            "aspect_ratio": closest_aspect(width, height, VIDEO_ASPECTS if video else IMAGE_ASPECTS),
            "started_at": round(now, 3), "give_up_at": round(now + give_up, 3),
        }
        if video:
            handle["duration_seconds"] = veo_duration(spec.get("duration_seconds") or 0)
        return handle

    # --- poll -----------------------------------------------------------------------------
    def poll(self, handle: dict, on_progress: Optional[ProgressCallback] = None):
        try:
            self._check_configured()
            if handle.get("kind") == "video":
                return self._poll_video(handle)
            if on_progress:
                on_progress(Progress(percent=0, running=True))  # the call below takes seconds
            return self._make_image(handle)
        except GeminiError as error:
            return self._after_error(handle, error)

    def _make_image(self, handle: dict):
        config = types.GenerateContentConfig(
            response_modalities=["IMAGE"], seed=handle.get("seed"),
            image_config=types.ImageConfig(aspect_ratio=handle.get("aspect_ratio")),
            automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True),  # no tools here
        )
        with self._sdk(handle) as sdk:
            response = sdk.models.generate_content(model=handle["model"], config=config,
                                                   contents=_image_prompt(handle["prompt"], handle["negative_prompt"]))
        return image_result(response, _stem(handle), seconds=_elapsed(handle))

    def _poll_video(self, handle: dict):
        with self._sdk(handle) as sdk:
            operation = sdk.operations.get(types.GenerateVideosOperation(name=handle["operation"]))
            if not operation.done:
                if time.time() >= handle["give_up_at"]:
                    minutes = (handle["give_up_at"] - handle["started_at"]) / 60
                    return Failed(f"Veo did not finish within {minutes:.0f} minutes", retryable=True)
                return Progress(percent=0, running=True, next_poll=self.options.video_poll_seconds)
            outcome = video_outcome(operation)
            if isinstance(outcome, Failed):
                return outcome
            data = self._video_bytes(sdk, outcome)
        mime = outcome.mime_type or "video/mp4"
        output = RemoteOutput(filename=f"gemini-{_stem(handle)}{_extension(mime, '.mp4')}", mime=mime, data=data)
        return Done(outputs=[output], seconds=_elapsed(handle))

    def _video_bytes(self, sdk, video: "types.Video") -> bytes:
        if video.video_bytes:
            return video.video_bytes  # Vertex: inline base64, already decoded by the SDK
        if not (video.uri or "").startswith("https://"):
            # A gs:// URI needs OAuth, and we never ask for one (no output_gcs_uri).
            raise GeminiError(f"Veo returned a video we cannot fetch ({(video.uri or 'no URI')[:200]})",
                              retryable=True)
        try:
            # Developer API: the SDK takes <id> out of https://…/files/<id>:download and fetches
            # it from the configured base URL (with the key header), following Google's redirect.
            return sdk.files.download(file=video)
        except ValueError as error:  # a URI the SDK cannot read a file id from
            raise GeminiError(f"Veo returned a video URI the SDK cannot download: {error}", retryable=True)

    def _after_error(self, handle: dict, error: GeminiError):
        """Permanent → Failed at once. Transient (429/5xx/timeout) → wait and poll again, with
        a growing delay, until the attempt's deadline; then fail over. Other → fail over now."""
        if not error.retryable:
            return Failed(error.message, retryable=False)
        # A timeout or a dropped connection during generateContent: Google may have made (and
        # billed) the image we never received.
        billed = handle.get("kind") != "video" and error.transient and not getattr(error, "resend_safe", False)
        now = time.time()
        if not error.transient or now >= handle.get("give_up_at", 0):
            waited = now - handle.get("started_at", now)
            suffix = f" (gave up after {waited:.0f}s)" if error.transient else ""
            return Failed(error.message + suffix, retryable=True, outage=error.transient, maybe_billed=billed)
        delay = error.retry_after or self.backoff(now - handle.get("started_at", now))
        delay = min(delay, self.options.retry_max_seconds, max(0.0, handle["give_up_at"] - now) + 0.01)
        log.info("gemini: %s; polling attempt %s again in %.1fs", error.message, handle.get("attempt_id"), delay)
        return Progress(percent=0, running=handle.get("kind") == "video", next_poll=round(delay, 3),
                        maybe_billed=billed)

    def backoff(self, elapsed: float) -> float:
        """The wait after a transient error. The handle is written once, at submit, so it cannot
        count errors; instead we wait as long as the attempt has already run, which doubles the
        wait after each consecutive error (exponential backoff), between the two bounds."""
        return min(self.options.retry_max_seconds, max(self.options.retry_seconds, elapsed))

    # --- cancel, health -------------------------------------------------------------------
    def cancel(self, handle: dict) -> None:
        """Nothing to do remotely: an image call is one request, and Veo operations have no
        cancel method in either API. The job is already cancelled in our database, and a
        poll of a final job ends the chain, so the result is never fetched or charged."""
        return None

    def health(self) -> Health:
        """countTokens on the image model: free, served by both transports (Vertex express
        mode has no models.get), and it proves the key, the base URL and the model id."""
        if not self._api_key:
            return Health(ok=False, detail=ERR_NOT_CONFIGURED)
        started = time.monotonic()
        handle = {"transport": self.options.transport, "api_version": self._api_version()}
        try:
            self._check_configured()
            with self._sdk(handle, timeout=min(HEALTH_TIMEOUT, self.options.timeout)) as sdk:
                sdk.models.count_tokens(model=self.options.image_model, contents="ping")
        except GeminiError as error:
            return Health(ok=False, detail=error.message)
        return Health(ok=True, latency_ms=round((time.monotonic() - started) * 1000, 1),
                      detail=f"{TRANSPORTS[self.options.transport]}: {self.options.image_model}, "
                             f"{self.options.video_model}")

    # --- the SDK, and turning its errors into ours ----------------------------------------
    def _check_configured(self) -> None:
        if not self._api_key:
            raise GeminiError("Gemini is not configured (GEMINI_API_KEY is not set)", retryable=True)
        if self.options.transport not in TRANSPORTS:
            raise GeminiError(f"GEMINI_TRANSPORT must be one of {', '.join(TRANSPORTS)}, "
                              f"not {self.options.transport!r}", retryable=True)

    def _api_version(self) -> str:
        return self.options.api_version or DEFAULT_API_VERSION.get(self.options.transport, "v1beta")

    @contextmanager
    def _sdk(self, handle: dict, timeout: Optional[float] = None):
        """A google-genai client for the handle's transport (kept in the handle: an operation
        name only makes sense on the API that started it), closed after use; every error it
        raises comes out as a GeminiError with the key scrubbed from the message."""
        transport = handle.get("transport") or self.options.transport
        http_options = types.HttpOptions(
            base_url=self.options.base_url or None, api_version=handle.get("api_version") or self._api_version(),
            timeout=int((timeout or self.options.timeout) * 1000), retry_options=None,
        )
        try:
            with genai.Client(api_key=self._api_key, vertexai=transport == "vertex", http_options=http_options) as sdk:
                yield sdk
        except GeminiError as error:
            error.message = self._scrub(error.message)
            error.args = (error.message,)
            raise
        except Exception as error:  # noqa: BLE001 — classed below; unknown ones are the backend's fault
            classified = self._classify(error, timeout or self.options.timeout)
            if not isinstance(error, (genai_errors.APIError, *HTTP_ERRORS)):
                log.warning("gemini: unexpected %s: %s", type(error).__name__, classified.message)
            raise classified from None

    def _classify(self, error: Exception, timeout: float) -> GeminiError:
        if isinstance(error, genai_errors.APIError):
            return self._api_error(error)
        if isinstance(error, CONNECT_ERRORS):  # no request left this machine: nothing can have run
            refused = GeminiError(f"Gemini is not reachable: {self._scrub(str(error))[:300]}", retryable=True,
                                  transient=True)
            refused.resend_safe = True
            return refused
        if isinstance(error, TIMEOUT_ERRORS):
            return GeminiError(f"Gemini did not answer within {timeout:g}s", retryable=True, transient=True)
        if isinstance(error, HTTP_ERRORS):
            return GeminiError(f"Gemini is not reachable: {self._scrub(str(error))[:300]}", retryable=True,
                               transient=True)
        return GeminiError(f"Gemini sent an answer we could not read: {self._scrub(str(error))[:300]}",
                           retryable=True)

    def _api_error(self, error: "genai_errors.APIError") -> GeminiError:
        """Google's own words reach the user: `{"error": {"code", "message", "status"}}`."""
        code = int(error.code or 0)
        status = error.status or ""
        message = self._scrub(error.message or status or "no message")
        text = f"Gemini: {message} (HTTP {code}{' ' + status if status else ''})"
        if code in (408, 429) or code >= 500:
            classified = GeminiError(text, retryable=True, transient=True, retry_after=_retry_delay(error.details))
            classified.resend_safe = code in (429, 503)  # Google did not start anything
            return classified
        # 400/401/403: the request or the key is wrong; trying again will not help.
        # 404 (a retired model, an expired operation): another backend may still run the job.
        return GeminiError(text, retryable=code == 404)

    def _scrub(self, text: str) -> str:
        return text.replace(self._api_key, "[redacted]") if self._api_key else text


# --- starting a Veo operation ------------------------------------------------------------
def _start_video(sdk, handle: dict) -> str:
    if handle["transport"] == "vertex":
        config = types.GenerateVideosConfig(
            number_of_videos=1, duration_seconds=handle["duration_seconds"], aspect_ratio=handle["aspect_ratio"],
            negative_prompt=handle["negative_prompt"] or None, seed=handle["seed"],
            generate_audio=True,  # Veo 3.x's price (GEMINI_PRICE_PER_VIDEO_SECOND) is with audio
        )
        operation = sdk.models.generate_videos(
            model=handle["model"], source=types.GenerateVideosSource(prompt=handle["prompt"]), config=config)
        return _operation_name(operation.name)
    return _start_video_developer(sdk, handle)


def _start_video_developer(sdk, handle: dict) -> str:
    """POST models/{m}:predictLongRunning on the Gemini Developer API.

    google-genai 3.x raises ValueError for `generate_videos` on this API before sending
    anything, although the REST method exists (SDK ≤2.34 used it). We send that request through
    the SDK's own API client rather than plain HTTP because then the one thing that differs is
    the body: base URL, API version, key header, timeout and error classes (errors.APIError →
    `_api_error`) are exactly those of every other call here. `_api_client` is private, so the
    tests drive this line through the real SDK against the fake, and the SDK is pinned in
    requirements.txt: an upgrade that moves it fails the tests, not production. Polling and
    the download use the public `operations.get` and `files.download`, which 3.x keeps for
    this API. The body is what SDK 2.34's `_GenerateVideosParameters_to_mldev` produced (it
    sent no seed on this API, so neither do we).
    """
    parameters = {"sampleCount": 1, "durationSeconds": handle["duration_seconds"],
                  "aspectRatio": handle["aspect_ratio"]}
    if handle["negative_prompt"]:
        parameters["negativePrompt"] = handle["negative_prompt"]
    body = {"instances": [{"prompt": handle["prompt"]}], "parameters": parameters}
    response = sdk._api_client.request("post", f"models/{handle['model']}:predictLongRunning", body)
    try:
        name = json.loads(response.body or "{}").get("name")
    except ValueError:
        name = None
    return _operation_name(name)


def _operation_name(name) -> str:
    if not name or "/operations/" not in name:
        raise GeminiError(f"Gemini started no operation (it answered with name {name!r})", retryable=True)
    return name


# --- reading results ----------------------------------------------------------------------
def image_result(response: "types.GenerateContentResponse", stem: str, seconds: Optional[float] = None):
    """The first image part → Done; a blocked prompt or filtered output → Failed (permanent,
    with Google's reason); an empty or odd answer → Failed (retryable)."""
    feedback = response.prompt_feedback
    if feedback is not None and feedback.block_reason:
        detail = f": {feedback.block_reason_message}" if feedback.block_reason_message else ""
        return Failed(f"Gemini blocked the prompt ({_name(feedback.block_reason)}){detail}", retryable=False)
    candidates = response.candidates or []
    for candidate in candidates:
        for part in (candidate.content.parts if candidate.content else None) or []:
            blob = part.inline_data
            if blob is not None and blob.data and (blob.mime_type or "").startswith("image/"):
                mime = blob.mime_type
                output = RemoteOutput(filename=f"gemini-{stem}{_extension(mime, '.png')}", mime=mime, data=blob.data)
                return Done(outputs=[output], seconds=seconds)
    if not candidates:
        return Failed("Gemini returned no image and no reason", retryable=True)
    candidate = candidates[0]
    reason = _name(candidate.finish_reason) or "no reason given"
    text = " ".join(p.text for p in ((candidate.content.parts if candidate.content else None) or []) if p.text)
    detail = candidate.finish_message or text
    detail = f": {detail[:500]}" if detail else ""
    if reason in BLOCKED_REASONS or (reason == "STOP" and text):
        return Failed(f"Gemini returned no image ({reason}){detail}", retryable=False)
    return Failed(f"Gemini returned no image ({reason}){detail}", retryable=True)


def video_outcome(operation: "types.GenerateVideosOperation"):
    """A done Veo operation → its first video, or Failed. No video at all (filtered count,
    filter reasons, or simply no samples) is Google refusing this prompt: permanent."""
    if operation.error:
        code = operation.error.get("code")
        message = operation.error.get("message") or "no message"
        return Failed(f"Veo failed: {message} (code {code})", retryable=code not in PERMANENT_RPC_CODES)
    result = operation.result or operation.response
    reasons = "; ".join((result.rai_media_filtered_reasons or []) if result else [])
    filtered = (result.rai_media_filtered_count or 0) if result else 0
    videos = [v.video for v in ((result.generated_videos if result else None) or []) if v.video]
    if filtered or not videos:
        why = reasons or "no reason given"
        return Failed(f"Veo's safety filters blocked the video ({filtered or 'no'} filtered): {why}", retryable=False)
    return videos[0]


# --- small pure helpers -------------------------------------------------------------------
def closest_aspect(width: int, height: int, choices) -> str:
    """The allowed "w:h" ratio nearest to width/height (compared on a log scale, so 2:1 and
    1:2 are equally far from 1:1)."""
    target = math.log(max(1, width) / max(1, height))

    def distance(choice: str) -> float:
        w, h = (int(n) for n in choice.split(":"))
        return abs(math.log(w / h) - target)

    return min(choices, key=distance)


def veo_duration(seconds) -> int:
    """The shortest length Veo accepts that covers the request (4/6/8 s; longer asks get 8)."""
    wanted = max(1, int(seconds or 0))
    return next((d for d in VEO_DURATIONS if d >= wanted), VEO_DURATIONS[-1])


def _image_prompt(prompt: str, negative: str) -> str:
    # generateContent has no negative prompt field; image models follow it as an instruction.
    return f"{prompt}\n\nAvoid: {negative}" if negative else prompt


def _seed(value) -> Optional[int]:
    # Google's seeds are int32; 0 / empty means "let Google pick".
    seed = int(value or 0) % 2**31
    return seed or None


def _retry_delay(details) -> Optional[float]:
    """google.rpc.RetryInfo's retryDelay ("7s") from a 429 body, when Google sends one."""
    error = (details or {}).get("error", {}) if isinstance(details, dict) else {}
    for item in error.get("details") or []:
        delay = str((item or {}).get("retryDelay") or "")
        if delay.endswith("s"):
            try:
                return max(0.0, float(delay[:-1]))
            except ValueError:
                return None
    return None


def _name(value) -> str:
    return getattr(value, "value", None) or (str(value) if value else "")


def _stem(handle: dict) -> str:
    return (handle.get("attempt_id") or "output")[:8]


def _elapsed(handle: dict) -> Optional[float]:
    started = handle.get("started_at")
    return round(time.time() - started, 3) if started else None


def _extension(mime: str, default: str) -> str:
    return {"image/jpeg": ".jpg"}.get(mime) or mimetypes.guess_extension(mime or "") or default
