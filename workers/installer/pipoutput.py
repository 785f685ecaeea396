"""pip's output, read for a person: a short progress message per line, and the one line that
says why a command failed.

pip's last line is rarely the reason: when the index cannot be reached it prints a retry
warning per attempt, then "Could not find a version that satisfies the requirement torch
(from versions: none)" — which reads like a wrong version, not a dead network. So the cause
is, in order: a network failure summarised from the retry / "Could not fetch URL" / name
resolution lines ("could not reach download.pytorch.org (Connection refused)"), the first
`ERROR:` line, an `ImportError` / `ModuleNotFoundError` (python -c checks), the last
exception of a traceback, and only then the last line.
"""
import re
from typing import Optional
from urllib.parse import unquote, urlsplit

from .commandlog import redact

_RETRY = re.compile(r"^WARNING: Retrying \(.*\) after connection broken by (.*)$")
_NETWORK = re.compile(r"Could not fetch URL|NewConnectionError|ConnectTimeoutError|ProxyError|SSLError|"
                      r"Temporary failure in name resolution|Name or service not known|nodename nor servname|"
                      r"getaddrinfo failed|Max retries exceeded|ReadTimeoutError")
_HOST = re.compile(r"host='([^']+)'|Could not fetch URL \w+://([^/:\s]+)|Connection to ([^\s]+) timed out")
_REASONS = (  # (what pip or urllib3 says, what we say), first match wins
    (re.compile(r"\[Errno -?\d+\] ([^'\")]+)"), None),  # the OS's own words: Connection refused, ...
    (re.compile(r"Temporary failure in name resolution|Name or service not known|nodename nor servname|"
                r"getaddrinfo failed"), "its name could not be resolved"),
    (re.compile(r"timed out", re.IGNORECASE), "timed out"),
    (re.compile(r"ProxyError|Cannot connect to proxy", re.IGNORECASE), "the proxy refused or could not connect"),
    (re.compile(r"CERTIFICATE_VERIFY_FAILED|SSLError"), "its TLS certificate was not accepted"),
)
_NO_MATCH = re.compile(r"No matching distribution found for (\S+)")
_IMPORT = re.compile(r"^(ModuleNotFoundError|ImportError): ")
_EXCEPTION = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit): ")
_DOWNLOADING = re.compile(r"^(Downloading|Using cached) (\S+)(?: \((.+)\))?")
_COLLECTED = re.compile(r"^(Installing collected packages|Successfully installed):? (.*)$")
_BAR = re.compile(r"^[━╸╺─]")  # a progress bar (pip draws none into a pipe, but a forced one would)


def progress_message(line: str, host: str = "") -> Optional[str]:
    """What to show for one line of pip's output, or None to keep showing the previous one."""
    text = line.strip()
    if not text or _BAR.match(text):
        return None
    retry = _RETRY.match(text)
    if retry:
        return f"pip cannot reach {_host_in(retry.group(1)) or host or 'the package index'} yet; retrying"
    downloading = _DOWNLOADING.match(text)
    if downloading:
        size = f" ({downloading.group(3)})" if downloading.group(3) else ""
        return f"{downloading.group(1)} {_wheel_name(downloading.group(2))}{size}"
    collected = _COLLECTED.match(text)
    if collected:
        count = len(collected.group(2).split())
        return f"{collected.group(1)} ({count} package{'s' if count != 1 else ''})"
    return redact(re.sub(r"\s+", " ", text))[:160]


def failure_cause(lines: list, host: str = "") -> str:
    """The line that says why the command failed (see the module doc)."""
    lines = [line.strip() for line in lines if line.strip()]
    network = _network_summary(lines, host)
    errors = [line for line in lines if line.startswith("ERROR:") and line != "ERROR: Exception:"]
    for found in (network, _first(errors), _first(line for line in lines if _IMPORT.match(line)),
                  _last(line for line in lines if _EXCEPTION.match(line)), _last(lines)):
        if found:
            return redact(found)[:300]
    return "no output"


def _network_summary(lines: list, host: str) -> str:
    broken = [line for line in lines if _NETWORK.search(line)]
    if not broken:
        return ""
    where = next((found for found in map(_host_in, broken) if found), "") or host or "the package index"
    reason = next((found for found in map(_reason, broken) if found), "")
    summary = f"could not reach {where}" + (f" ({reason})" if reason else "")
    missing = next((m.group(1) for m in map(_NO_MATCH.search, lines) if m), "")
    return summary + (f", so no {missing} could be found" if missing else "")


def _host_in(text: str) -> str:
    match = _HOST.search(text)
    return next((group for group in match.groups() if group), "").rstrip(".") if match else ""


def _reason(line: str) -> str:
    for pattern, said in _REASONS:
        match = pattern.search(line)
        if match:
            return said or match.group(1).strip()
    return ""


def _wheel_name(url_or_name: str) -> str:
    """torch-2.9.1+cu128-cp311-cp311-manylinux_2_28_x86_64.whl -> torch-2.9.1+cu128...whl"""
    name = unquote(urlsplit(url_or_name).path.rsplit("/", 1)[-1] or url_or_name)
    metadata = name.endswith(".metadata")  # pip reads a wheel's metadata before the wheel
    name = name[:-len(".metadata")] if metadata else name
    parts = name.split("-")
    if len(name) > 40 and len(parts) >= 3:
        name = f"{parts[0]}-{parts[1]}...{name.rsplit('.', 1)[-1]}"
    return name + (" metadata" if metadata else "")


def _first(lines) -> str:
    return next(iter(lines), "")


def _last(lines) -> str:
    found = ""
    for found in lines:
        pass
    return found
