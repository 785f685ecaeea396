"""Two kinds of error text. What is stored (Attempt.error, Job.error, Job.reason, a backend's
health detail) is the staff's: the internal detail, shown in the admin and written to the logs.
What a user sees, on the pages, in the API and in webhooks, is `for_users(text)`: the same words
with the installation's insides taken out (backend URLs, addresses and ports, server paths), so
what happened and what to do stay, and nothing about the machines behind it leaks."""
import re

HIDDEN_ADDRESS = "(address hidden)"

# "ComfyUI at http://127.0.0.1:8188 is not reachable" → "ComfyUI is not reachable"
_SERVICE_AT_URL = re.compile(r"\s+at\s+[a-z][a-z0-9+.-]*://[^\s'\"<>),;]+", re.I)
_URL = re.compile(r"\b[a-z][a-z0-9+.-]*://[^\s'\"<>),;]+", re.I)
_IPV4 = re.compile(r"\b(?:\d{1,3}\.){3}\d{1,3}(?::\d{1,5})?\b")
_IPV6 = re.compile(r"\[[0-9a-f:]*:[0-9a-f:.]*\](?::\d{1,5})?", re.I)
_HOST_PORT = re.compile(r"\b(?:localhost|[a-z0-9-]+(?:\.[a-z0-9-]+)*\.(?:internal|local|lan|home|corp))(?::\d{1,5})?\b",
                        re.I)
# /home/ana/ComfyUI/models/x.safetensors → x.safetensors; C:\Users\ana\ComfyUI\x.py → x.py
_POSIX_PATH = re.compile(r"(?<![\w/.:])/(?:[\w.@+-]+/)+([\w.@+-]+)")
_WINDOWS_PATH = re.compile(r"\b[a-z]:\\(?:[^\\\s'\"<>]+\\)+([^\\\s'\"<>]+)", re.I)


def for_users(text: str) -> str:
    if not text:
        return text or ""
    text = _SERVICE_AT_URL.sub("", text)
    text = _URL.sub(HIDDEN_ADDRESS, text)
    text = _IPV6.sub(HIDDEN_ADDRESS, text)
    text = _IPV4.sub(HIDDEN_ADDRESS, text)
    text = _HOST_PORT.sub(HIDDEN_ADDRESS, text)
    text = _WINDOWS_PATH.sub(r"\1", text)
    return _POSIX_PATH.sub(r"\1", text)

