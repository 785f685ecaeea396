"""Client for Google Gemini through google-genai 3.4.0: images through an image model's
`generateContent`; video through Gemini Omni Flash in the Interactions API.

What each transport can do with the SDK's public methods (tests/captures/README.md has the
sources; tests/captures/gemini-sdk-3.4.0.json is the SDK's own traffic, recorded):
- "gemini", the Gemini Developer API (an AI Studio key): `models.generate_content` for images
  (POST /v1beta/models/{m}:generateContent); `interactions.create(background=True)` then
  `interactions.get` for video (POST /v1beta/interactions, GET /v1beta/interactions/{id}), the
  video model Google's Gemini API documents by default. Veo is not reachable here:
  `models.generate_videos` raises ValueError on this API before sending anything ("Currently,
  only Gemini Enterprise Agent Platform supports video generation", the SDK's README; the same
  in 3.6.1, the newest release), and the Developer API's Veo ids were shut down. `models.get`
  says whether a model exists for this key, and what it can do.
- "vertex", Vertex AI express mode (a Google Cloud API key, `vertexai=True`, no project): its
  REST reference lists countTokens, generateContent and streamGenerateContent, nothing else. So
  images only, and the health probe uses countTokens (there is no models.get); Veo
  (predictLongRunning) needs full Vertex AI with OAuth, which this project does not speak.
- Both send the key as the `x-goog-api-key` header, never in a URL. The API version is always
  passed explicitly (3.0 moved the Developer API's default to `v1`; interactions are `v1beta`).

Retries are the SDK's own (HttpRetryOptions), with one exception for money's sake: the SDK
retries a call that timed out after it was sent, as it does a 503, and Google may have made
(and billed) the image or video that call asked for. So a paid call (generateContent, creating
an interaction) gets one attempt, and only an answer that proves Google started nothing (429,
503, refused) is sent again, by the poll chain's countdown. Reads (models.get, countTokens,
interactions.get, downloads) are retried by the SDK. One SDK client per process and
configuration is kept (`_sdk_for`): building one per call threw away its connection pool.
What Google's answers mean (errors classed, images and videos read) is in gemini_answers.py.
"""
import base64
import binascii
import hashlib
import logging
import math
import os
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Optional

from django.conf import settings
from google import genai
from google.genai import types

from .base import BackendError, Client, Done, Failed, Health, Progress, ProgressCallback, RemoteOutput
from .gemini_answers import (ERR_NO_PROMPT, ERR_NO_VIDEO_MODEL, ERR_NO_VIDEO_ON_EXPRESS, ERR_NOT_CONFIGURED,
                             ERR_VEO_ON_GEMINI_API, ERR_WORKFLOW, HTTP_ERRORS, TRANSPORTS, GeminiError, caused_by,
                             classify, extension_for, image_result, status_of, video_outcome)
from .gemini_video import video_duration

log = logging.getLogger(__name__)


DEFAULT_API_VERSION = {"gemini": "v1beta", "vertex": "v1"}
# Aspect ratios the Gemini image models accept, and the two the video model accepts.
IMAGE_ASPECTS = ("1:1", "2:3", "3:2", "3:4", "4:3", "4:5", "5:4", "9:16", "16:9", "21:9")
VIDEO_ASPECTS = ("16:9", "9:16")
HEALTH_TIMEOUT = 5.0
RETRY_STATUSES = (408, 429, 500, 502, 503, 504)  # what the SDK retries on reads (its own default set)
RUNNING = {"queued", "in_progress"}


@dataclass(frozen=True)
class GeminiOptions:
    transport: str = "gemini"
    api_version: str = ""  # empty: DEFAULT_API_VERSION of the transport
    base_url: str = ""  # empty: Google's
    image_model: str = "gemini-3.1-flash-image"
    video_model: str = "gemini-omni-1.1-flash"  # empty: images only
    timeout: float = 120.0  # seconds, per HTTP call
    video_poll_seconds: float = 10.0
    retry_attempts: int = 3  # SDK attempts per read (the first included); paid calls get one
    retry_seconds: float = 2.0  # first wait after a 429/5xx
    retry_max_seconds: float = 30.0  # longest wait after a 429/5xx; below the sweeper's re-send age
    image_give_up_seconds: float = 180.0  # an image attempt fails over after this long
    video_give_up_seconds: float = 1200.0  # a video attempt fails over after this long


# --- one SDK client per process and configuration -----------------------------------------
_SDKS: dict = {}
_SDKS_LOCK = threading.Lock()


def _sdk_for(api_key: str, transport: str, base_url: str, api_version: str, timeout: float,
             retry: tuple) -> "genai.Client":
    """The process's google-genai client for this configuration, built once. Keyed by the
    process id too: a client (and its connection pool) made before a fork is not reused by a
    prefork child. `retry` is (attempts, first wait, longest wait)."""
    digest = hashlib.sha256(api_key.encode()).hexdigest()  # the key itself is never a dict key
    key = (os.getpid(), digest, transport, base_url, api_version, timeout, retry)
    with _SDKS_LOCK:
        sdk = _SDKS.get(key)
        if sdk is None:
            attempts, first, longest = retry
            options = types.HttpOptions(
                base_url=base_url or None, api_version=api_version, timeout=int(timeout * 1000),
                # Jitter of up to half the first wait, so that workers do not all retry in step.
                retry_options=types.HttpRetryOptions(attempts=attempts, initial_delay=first, max_delay=longest,
                                                     jitter=first / 2, http_status_codes=list(RETRY_STATUSES)),
            )
            sdk = _SDKS[key] = genai.Client(api_key=api_key, vertexai=transport == "vertex", http_options=options)
    return sdk


class GeminiClient(Client):
    service = "Gemini"

    def __init__(self, api_key: str, options: GeminiOptions = GeminiOptions()):
        self._api_key = api_key or ""
        self.options = options

    def __repr__(self):  # never the key
        return f"GeminiClient(transport={self.options.transport!r})"

    @classmethod
    def for_backend(cls, backend, url: str) -> "GeminiClient":
        config = backend.config or {}
        return cls(settings.GEMINI_API_KEY, GeminiOptions(
            transport=settings.GEMINI_TRANSPORT, api_version=settings.GEMINI_API_VERSION,
            base_url=url or settings.GEMINI_BASE_URL,
            image_model=config.get("image_model") or settings.GEMINI_IMAGE_MODEL,
            # An empty "video_model" in the row's config makes this backend images-only.
            video_model=(config["video_model"] if "video_model" in config else settings.GEMINI_VIDEO_MODEL) or "",
            timeout=settings.GEMINI_HTTP_TIMEOUT, video_poll_seconds=settings.GEMINI_VIDEO_POLL_SECONDS,
            retry_attempts=settings.GEMINI_RETRY_ATTEMPTS,
            retry_seconds=settings.GEMINI_RETRY_SECONDS, retry_max_seconds=settings.GEMINI_RETRY_MAX_SECONDS,
            image_give_up_seconds=settings.GEMINI_IMAGE_GIVE_UP_SECONDS,
            video_give_up_seconds=settings.GEMINI_VIDEO_GIVE_UP_SECONDS,
        ))

    # --- submit ---------------------------------------------------------------------------
    def submit(self, spec: dict) -> dict:
        """Images: only record the request; the first poll makes the call, so this task stays
        quick and a 429 there gets the poll's backoff. Video: start the interaction now and
        keep its id, which is all a later poll (on any worker) needs."""
        if spec.get("custom_workflow"):
            raise BackendError(ERR_WORKFLOW, retryable=False)  # the router never sends one; defence in depth
        if not (spec.get("prompt") or "").strip():
            raise BackendError(ERR_NO_PROMPT, retryable=False)
        self._check_configured(video=spec.get("kind") == "video")
        handle = self._new_handle(spec)
        if handle["kind"] == "video":
            handle["interaction"] = self._start_video(handle)
            log.info("gemini: video interaction %s started for attempt %s", handle["interaction"],
                     handle["attempt_id"])
        return handle

    def starts_paid_run(self, phase: str, handle: dict) -> bool:
        """Video starts at submit; an image is generated by the poll's generateContent. Neither
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
            handle["duration_seconds"] = video_duration(spec.get("duration_seconds") or 0)
        return handle

    def _start_video(self, handle: dict) -> str:
        """POST /v1beta/interactions in the background: it answers at once with the
        interaction's id and status; the video is fetched by `interactions.get` later."""
        response_format = {"type": "video", "aspect_ratio": handle["aspect_ratio"],
                           "duration": f"{handle['duration_seconds']}s", "delivery": "inline"}
        generation = {"seed": handle["seed"]} if handle["seed"] else None
        with self._calling(model=("GEMINI_VIDEO_MODEL", handle["model"])):
            interaction = self._sdk(handle, paid=True).interactions.create(
                model=handle["model"], input=_prompt(handle["prompt"], handle["negative_prompt"]),
                response_modalities=["video"], response_format=response_format, background=True,
                **({"generation_config": generation} if generation else {}))
        if not interaction.id:
            raise GeminiError(f"Gemini started no interaction (status {interaction.status!r})", retryable=True)
        return interaction.id

    # --- poll -----------------------------------------------------------------------------
    def poll(self, handle: dict, on_progress: Optional[ProgressCallback] = None):
        try:
            self._check_configured(video=handle.get("kind") == "video")
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
        with self._calling(model=("GEMINI_IMAGE_MODEL", handle["model"])):
            response = self._sdk(handle, paid=True).models.generate_content(
                model=handle["model"], config=config, contents=_prompt(handle["prompt"], handle["negative_prompt"]))
        return image_result(response, _stem(handle), seconds=_elapsed(handle))

    def _poll_video(self, handle: dict):
        if not handle.get("interaction"):  # a Veo operation an earlier version started
            return Failed("This video was started through an API this version no longer uses", retryable=True)
        sdk = self._sdk(handle)
        with self._calling():
            interaction = sdk.interactions.get(handle["interaction"])
        if interaction.status in RUNNING:
            if time.time() >= handle["give_up_at"]:
                minutes = (handle["give_up_at"] - handle["started_at"]) / 60
                return Failed(f"Gemini did not finish the video within {minutes:.0f} minutes", retryable=True)
            return Progress(percent=0, running=interaction.status == "in_progress",
                            next_poll=self.options.video_poll_seconds)
        outcome = video_outcome(interaction)
        if isinstance(outcome, Failed):
            return outcome
        data = self._video_bytes(sdk, outcome)
        mime = outcome.mime_type or "video/mp4"
        output = RemoteOutput(filename=f"gemini-{_stem(handle)}{extension_for(mime, '.mp4')}", mime=mime, data=data)
        return Done(outputs=[output], seconds=_elapsed(handle))

    def _video_bytes(self, sdk, video) -> bytes:
        if video.data:
            try:
                return base64.b64decode(video.data, validate=True)
            except (binascii.Error, ValueError):
                raise GeminiError("Gemini sent a video that is not base64", retryable=True)
        uri = video.uri or ""
        if not (uri.startswith("https://") and "/files/" in uri):
            raise GeminiError(f"Gemini returned a video we cannot fetch ({(uri or 'no URI')[:200]})", retryable=True)
        with self._calling():
            # A Files API URI: the SDK takes <id> out of https://…/files/<id>… and fetches it from
            # the configured base URL with the key header, following Google's redirect.
            return sdk.files.download(file=types.Video(uri=uri))

    def _after_error(self, handle: dict, error: GeminiError):
        """Misconfigured → fail over, marking the backend down. Permanent → Failed at once.
        Transient (429/5xx/timeout; reads were already retried by the SDK) → poll again after
        a growing delay, until the attempt's deadline; then fail over. Other → fail over now."""
        if error.misconfigured:
            return Failed(error.message, retryable=True, outage=True, misconfigured=True)
        if not error.retryable:
            return Failed(error.message, retryable=False)
        # A timeout or a dropped connection during generateContent: Google may have made (and
        # billed) the image we never received.
        billed = handle.get("kind") != "video" and error.transient and not error.resend_safe
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
        """Nothing to do remotely: an image call is one request. The job is already cancelled
        in our database, and a poll of a final job ends the chain, so the result is never
        fetched or charged."""
        return None

    def health(self) -> Health:
        """Whether the configured models exist and can be used with this key: models.get for
        each on the Gemini API (the image model must offer generateContent); countTokens on the
        image model on Vertex express mode, which has no models.get. A setting that cannot work
        (Veo with a Gemini API key, any video model on express mode) is down, with what to do."""
        if not self._api_key:
            return Health(ok=False, detail=ERR_NOT_CONFIGURED)
        started = time.monotonic()
        handle = {"transport": self.options.transport, "api_version": self._api_version()}
        try:
            self._check_configured(video=bool(self.options.video_model))
            sdk = self._sdk(handle, timeout=min(HEALTH_TIMEOUT, self.options.timeout))
            if self.options.transport == "vertex":
                with self._calling(model=("GEMINI_IMAGE_MODEL", self.options.image_model)):
                    sdk.models.count_tokens(model=self.options.image_model, contents="ping")
            else:
                self._check_model(sdk, "GEMINI_IMAGE_MODEL", self.options.image_model, "generateContent")
                if self.options.video_model:
                    self._check_model(sdk, "GEMINI_VIDEO_MODEL", self.options.video_model, None)
        except GeminiError as error:
            return Health(ok=False, detail=error.message, misconfigured=error.misconfigured)
        video = self.options.video_model or "no video"
        return Health(ok=True, latency_ms=round((time.monotonic() - started) * 1000, 1),
                      detail=f"{TRANSPORTS[self.options.transport]}: {self.options.image_model}, {video}")

    def _check_model(self, sdk, setting: str, model: str, action: Optional[str]) -> None:
        with self._calling(model=(setting, model)):
            found = sdk.models.get(model=model)
        actions = found.supported_actions or []
        if action and action not in actions:
            raise GeminiError(f"{setting} {model!r} cannot {action} on the {TRANSPORTS[self.options.transport]} "
                              f"(it offers {', '.join(actions) or 'nothing'})", retryable=True, misconfigured=True)

    # --- the SDK, and turning its errors into ours ----------------------------------------
    def _check_configured(self, *, video: bool = False) -> None:
        """Settings that cannot work, found before anything is sent."""
        if not self._api_key:
            raise GeminiError("Gemini is not configured (GEMINI_API_KEY is not set)", retryable=True)
        if self.options.transport not in TRANSPORTS:
            raise GeminiError(f"GEMINI_TRANSPORT must be one of {', '.join(TRANSPORTS)}, "
                              f"not {self.options.transport!r}", retryable=True, misconfigured=True)
        if not video:
            return
        if not self.options.video_model:  # a video job routed to an images-only backend: not its fault
            raise GeminiError(ERR_NO_VIDEO_MODEL, retryable=True)
        if self.options.transport == "vertex":
            raise GeminiError(ERR_NO_VIDEO_ON_EXPRESS, retryable=True, misconfigured=True)
        if self.options.video_model.startswith("veo-"):
            raise GeminiError(ERR_VEO_ON_GEMINI_API.format(model=self.options.video_model), retryable=True,
                              misconfigured=True)

    def _api_version(self) -> str:
        return self.options.api_version or DEFAULT_API_VERSION.get(self.options.transport, "v1beta")

    def _sdk(self, handle: dict, *, paid: bool = False, timeout: Optional[float] = None) -> "genai.Client":
        """The cached SDK client for the handle's transport and API version (an interaction id
        only makes sense on the API that started it). A paid call gets one attempt (see the
        module docstring); reads get the SDK's retries."""
        retry = (1, 0.0, 0.0) if paid else (max(1, self.options.retry_attempts), self.options.retry_seconds,
                                            self.options.retry_max_seconds)
        return _sdk_for(self._api_key, handle.get("transport") or self.options.transport, self.options.base_url,
                        handle.get("api_version") or self._api_version(), timeout or self.options.timeout, retry)

    @contextmanager
    def _calling(self, *, model: Optional[tuple] = None):
        """Every error an SDK call raises comes out as a GeminiError with the key scrubbed from
        its message. `model`: (setting, model id) of a call that names a model, so that a 404
        says which setting names a model Google does not know."""
        try:
            yield
        except GeminiError as error:
            error.message = self._scrub(error.message)
            error.args = (error.message,)
            raise
        except Exception as error:  # noqa: BLE001 — classed below; unknown ones are the backend's fault
            classified = classify(error, scrub=self._scrub, timeout=self.options.timeout,
                                  transport=self.options.transport, model=model)
            if not (status_of(error) or caused_by(error, HTTP_ERRORS)):
                log.warning("gemini: unexpected %s: %s", type(error).__name__, classified.message)
            raise classified from None

    def _scrub(self, text: str) -> str:
        return text.replace(self._api_key, "[redacted]") if self._api_key else text


def closest_aspect(width: int, height: int, choices) -> str:
    """The allowed "w:h" ratio nearest to width/height (compared on a log scale, so 2:1 and
    1:2 are equally far from 1:1)."""
    target = math.log(max(1, width) / max(1, height))

    def distance(choice: str) -> float:
        w, h = (int(n) for n in choice.split(":"))
        return abs(math.log(w / h) - target)

    return min(choices, key=distance)


def _prompt(prompt: str, negative: str) -> str:
    # Neither generateContent nor interactions has a negative prompt field; the models follow
    # it as an instruction.
    return f"{prompt}\n\nAvoid: {negative}" if negative else prompt


def _seed(value) -> Optional[int]:
    # Google's seeds are int32; 0 / empty means "let Google pick".
    seed = int(value or 0) % 2**31
    return seed or None


def _stem(handle: dict) -> str:
    return (handle.get("attempt_id") or "output")[:8]


def _elapsed(handle: dict) -> Optional[float]:
    started = handle.get("started_at")
    return round(time.time() - started, 3) if started else None
