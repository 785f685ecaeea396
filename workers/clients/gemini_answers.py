"""What Google's answers to the Gemini client mean: errors classed (retryable, transient,
misconfigured, safe to resend) and results read (an image part, a finished interaction's video,
Google's refusals in its own words). No SDK call is made here; gemini.py makes them.
"""
import importlib
import mimetypes
from typing import Optional

from google.genai import errors as genai_errors
from google.genai import types

from .base import BackendError, Done, Failed, RemoteOutput


def _http_errors():
    """Transport errors of httpx and of httpx2, its fork that google-genai 3.x uses: failures to
    connect (nothing was sent), timeouts, then every other HTTP error."""
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

TRANSPORTS = {"gemini": "Gemini API", "vertex": "Vertex AI express mode"}
# What the client answers before asking Google.
ERR_WORKFLOW = "Gemini cannot run a custom ComfyUI workflow; choose a ComfyUI backend (local or cloud)."
ERR_NO_PROMPT = "Gemini needs a text prompt."
ERR_NOT_CONFIGURED = "not configured"
ERR_NO_VIDEO_ON_EXPRESS = (
    "Vertex AI express mode cannot make videos (its API lists only generateContent and countTokens): "
    "set GEMINI_TRANSPORT=gemini with a Gemini API key for video, or set GEMINI_VIDEO_MODEL empty "
    "and untick 'supports video' on the gemini backend to use it for images only")
ERR_VEO_ON_GEMINI_API = (
    "Veo ({model}) cannot be used with a Gemini API key: google-genai offers Veo only on Vertex AI, "
    "and Google shut the Gemini API's Veo models down; set GEMINI_VIDEO_MODEL=gemini-omni-1.1-flash")
ERR_NO_VIDEO_MODEL = ("GEMINI_VIDEO_MODEL is empty, so this backend makes images only: untick "
                      "'supports video' on the gemini backend")
# A candidate that ended for one of these reasons was blocked by Google's filters: the
# prompt is the problem, another try (or backend) will not help.
BLOCKED_REASONS = {"SAFETY", "IMAGE_SAFETY", "PROHIBITED_CONTENT", "IMAGE_PROHIBITED_CONTENT", "BLOCKLIST",
                   "SPII", "RECITATION", "IMAGE_RECITATION", "NO_IMAGE", "LANGUAGE", "MODEL_ARMOR", "JAILBREAK"}
# google.rpc codes (by number or name) of a failed interaction that are the request's fault.
PERMANENT_CODES = {"3", "9", "INVALID_ARGUMENT", "FAILED_PRECONDITION"}
KEY_CODES = {"7", "16", "PERMISSION_DENIED", "UNAUTHENTICATED"}  # the key's fault: misconfigured


class GeminiError(BackendError):
    """A classed Gemini failure. `transient` (429, 5xx, timeouts) is worth waiting for on the
    same backend; other retryable errors (an expired interaction) should fail over at once."""

    transient, retry_after = False, None  # also after unpickling (BackendError.__reduce__)

    def __init__(self, message: str, *, retryable: bool, transient: bool = False,
                 retry_after: Optional[float] = None, resend_safe: bool = False, misconfigured: bool = False):
        super().__init__(message, retryable=retryable, outage=transient, resend_safe=resend_safe,
                         misconfigured=misconfigured)
        self.transient = transient
        self.retry_after = retry_after


# --- classing errors ----------------------------------------------------------------------
def classify(error: Exception, *, scrub, timeout: float, transport: str, model: Optional[tuple]) -> GeminiError:
    """Any exception an SDK call raised, as a GeminiError. `scrub` takes the key out of text;
    `model`: (setting, model id) of a call that names a model."""
    status = status_of(error)
    if status:
        return api_error(*status, scrub=scrub, transport=transport, model=model)
    if caused_by(error, CONNECT_ERRORS):  # no request left this machine: nothing can have run
        return GeminiError(f"Gemini is not reachable: {scrub(str(error))[:300]}", retryable=True,
                           transient=True, resend_safe=True)
    if caused_by(error, TIMEOUT_ERRORS) or type(error).__name__ == "APITimeoutError":
        return GeminiError(f"Gemini did not answer within {timeout:g}s", retryable=True, transient=True)
    if caused_by(error, HTTP_ERRORS):
        return GeminiError(f"Gemini is not reachable: {scrub(str(error))[:300]}", retryable=True,
                           transient=True)
    return GeminiError(f"Gemini sent an answer we could not read: {scrub(str(error))[:300]}", retryable=True)


def api_error(code: int, status: str, message: str, details, *, scrub, transport: str,
              model: Optional[tuple]) -> GeminiError:
    """Google's own words reach the user: `{"error": {"code", "message", "status"}}`."""
    message = scrub(message or status or "no message")
    text = f"Gemini: {message} (HTTP {code}{' ' + status if status else ''})"
    if code in (408, 429) or code >= 500:
        return GeminiError(text, retryable=True, transient=True, retry_after=_retry_delay(details),
                           resend_safe=code in (429, 503))  # Google did not start anything
    if code in (401, 403) or _key_invalid(details, message):
        # The Gemini API answers a wrong key with 400 API_KEY_INVALID, Vertex with 401.
        where = TRANSPORTS.get(transport, "Gemini")
        return GeminiError(f"The {where} refused GEMINI_API_KEY: {message} (HTTP {code} {status})".strip(),
                           retryable=True, misconfigured=True)
    if code == 404 and model:
        setting, model_id = model
        return GeminiError(f"{setting} {model_id!r} is not a model the {TRANSPORTS.get(transport)} "
                           f"knows (retired?): {message} (HTTP 404)", retryable=True, misconfigured=True)
    # 400: the request (the prompt) is wrong; trying again will not help. 404 on a poll (an
    # expired interaction): another backend may still run the job.
    return GeminiError(text, retryable=code == 404)


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
                output = RemoteOutput(filename=f"gemini-{stem}{extension_for(mime, '.png')}", mime=mime, data=blob.data)
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


def video_outcome(interaction):
    """A finished interaction → its video content block, or Failed. Completed with no video
    (the model answered in words: a refusal) is Google declining this prompt: permanent."""
    if interaction.status == "failed":
        problems = [(str(e.code or ""), e.message or "") for e in interaction.errors or []]
        problems += [(str(s.error.code or ""), s.error.message or "")
                     for s in interaction.steps or [] if getattr(s, "error", None)]
        code, message = problems[0] if problems else ("", "no message")
        text = f"Gemini could not make the video: {message} (code {code or 'none'})"
        if code in KEY_CODES:
            return Failed(text, retryable=True, outage=True, misconfigured=True)
        return Failed(text, retryable=code not in PERMANENT_CODES)
    if interaction.status != "completed":
        return Failed(f"Gemini ended the video interaction as {interaction.status!r}", retryable=True)
    video = interaction.output_video
    if video is None or not (video.data or video.uri):
        why = (interaction.output_text or "no reason given")[:500]
        return Failed(f"Gemini returned no video: {why}", retryable=False)
    return video


def status_of(error: Exception) -> Optional[tuple]:
    """(code, status, message, details) of an HTTP error answer from either SDK stack: the
    models API's errors.APIError, or the interactions API's status errors (`status_code`,
    `body`), whose body is Google's `{"error": {...}}`."""
    if isinstance(error, genai_errors.APIError):
        return int(error.code or 0), error.status or "", error.message or "", error.details
    code = getattr(error, "status_code", None)
    if not isinstance(code, int) or code < 400:
        return None
    body = getattr(error, "body", None)
    inner = body.get("error") if isinstance(body, dict) else None
    inner = inner if isinstance(inner, dict) else {}
    return code, str(inner.get("status") or ""), str(inner.get("message") or ""), body


def caused_by(error: BaseException, classes: tuple) -> bool:
    """The interactions API wraps httpx errors in its own; look down the chain."""
    seen = 0
    while error is not None and seen < 10:
        if classes and isinstance(error, classes):
            return True
        error, seen = error.__cause__ or error.__context__, seen + 1
    return False


def _key_invalid(details, message: str) -> bool:
    """google.rpc.ErrorInfo reason API_KEY_INVALID (the Gemini API's 400 for a wrong key)."""
    error = (details or {}).get("error", {}) if isinstance(details, dict) else {}
    reasons = {str((item or {}).get("reason")) for item in error.get("details") or [] if isinstance(item, dict)}
    return "API_KEY_INVALID" in reasons or "API key not valid" in (message or "")


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


def extension_for(mime: str, default: str) -> str:
    return {"image/jpeg": ".jpg"}.get(mime) or mimetypes.guess_extension(mime or "") or default
