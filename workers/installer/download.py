"""Resumable, verified downloads: the answer to "20 GB that restart from zero".

Bytes go to `<file>.part`; after every chunk the part is fsync'd and then its length is
recorded in `<file>.part.json` (written atomically), so the state never claims bytes that
are not on disk. A process killed at any moment - or a machine that loses power - resumes
from the recorded length with an HTTP Range request; at most the chunk in flight is fetched
twice. The finished part is checked against its SHA-256 and only then renamed into place
(an atomic rename), so a file in place is always complete and verified. A mismatch
deletes the part and fetches once more, then fails without touching what is in place.

Redirects are followed here, not by requests, so that each hop gets the Hugging Face token
only if its own host is Hugging Face's (hub.py).

What the front shows: "<name>: checking the 64.0 MB already downloaded (40%)" while a resumed
part is re-hashed, then "<name>: resumed at 64.0 MB of 205 MB" with the bar at that offset
(skipped over, so speed and ETA count only what this run fetches); a retry says why and when
("...; retrying in 4 s (attempt 2 of 7)") until bytes flow again.
"""
import hashlib
import json
import math
import os
import random
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Protocol
from urllib.parse import urljoin

import requests

from .errors import Failure
from .hub import auth_headers, hub_token, refused
from .progress import Control, Quiet, check_control, human_bytes, no_control

USER_AGENT = "ComfyHybrid-Installer/1.0"
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")
MAX_REDIRECTS = 10  # Hugging Face takes one (to its CDN); more than ten is a loop
HASH_BLOCK = 8 * 1024 * 1024  # bytes read per step of a re-hash, and so per progress update
# The URL does not exist or is not ours to fetch: retrying will not help.
_PERMANENT = {400, 401, 403, 404, 405, 410, 451}


@dataclass
class Policy:
    # Also the most that is ever fetched twice after a kill. Each chunk ends with an fsync;
    # 32 MiB keeps that cost small (bench/installer.py) while a kill loses seconds, not minutes.
    chunk_size: int = 32 * 1024 * 1024
    retries: int = 6  # failures in a row without progress before giving up
    backoff_base: float = 1.0  # seconds; doubles on each failure in a row
    backoff_max: float = 60.0
    connect_timeout: float = 15.0
    read_timeout: float = 60.0  # a stalled server counts as a failure after this long


@dataclass
class Item:
    url: str
    dest: Path
    sha256: Optional[str] = None
    size: Optional[int] = None
    label: str = ""


@dataclass
class Result:
    sha256: str
    fetched_bytes: int  # bytes received in this call (a resume fetches only the rest)
    resumed_from: int
    refetched: bool


class _Transient(Exception):
    """Worth another try: the network, a 5xx, a connection dropped mid-file."""


class Progress(Protocol):
    """Where a download reports: a StepReporter, a progress.FileBar, or progress.Quiet."""

    def update(self, *, message: Optional[str] = None, bytes_done: Optional[int] = None,
               bytes_total: Optional[int] = None) -> None: ...

    def skip_to(self, bytes_done: int, *, bytes_total: Optional[int] = None,
                message: Optional[str] = None) -> None: ...


def part_path(dest: Path) -> Path:
    return dest.with_name(dest.name + ".part")


def state_path(dest: Path) -> Path:
    return dest.with_name(dest.name + ".part.json")


def partial_bytes(dest: Path) -> int:
    """Bytes already downloaded for `dest` (what a resume will not fetch again)."""
    try:
        return int(json.loads(state_path(dest).read_text())["bytes"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def file_sha256(path: Path, progress: Optional[Callable[[int], None]] = None, limit: Optional[int] = None) -> str:
    hasher = _hash_prefix(path, limit if limit is not None else path.stat().st_size, progress)
    return hasher.hexdigest()


def _hash_prefix(path: Path, length: int, progress=None):
    hasher, done = hashlib.sha256(), 0
    with open(path, "rb") as handle:
        while done < length:
            block = handle.read(min(HASH_BLOCK, length - done))
            if not block:
                break
            hasher.update(block)
            done += len(block)
            if progress:
                progress(done)
    return hasher


def fsync_dir(path: Path) -> None:
    # A rename is durable only once its directory is synced; Windows has no such call.
    if os.name == "nt":
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Downloader:
    def __init__(self, *, session: Optional[requests.Session] = None, policy: Optional[Policy] = None,
                 control: Control = no_control, progress: Optional[Progress] = None,
                 sleep: Callable[[float], None] = time.sleep, token: Optional[str] = None):
        self.session = session or _session()
        self.policy = policy or Policy()
        self.control = control
        self.progress = progress or Quiet()
        self.sleep = sleep
        self.token = hub_token() if token is None else token  # "" sends none; see hub.py
        self._noted = False  # a retry or mismatch note is showing: the next bytes replace it

    def fetch(self, item: Item) -> Result:
        """Download `item` into place, resuming what a previous run left; see module doc."""
        item.dest.parent.mkdir(parents=True, exist_ok=True)
        part, self._noted = _Part(item), False
        resumed_from = part.load(self._checking(item))
        self._download(part)
        refetched = False
        if item.sha256 and part.hasher.hexdigest() != item.sha256:
            first, refetched = part.hasher.hexdigest(), True
            part.reset()  # the only re-fetch: a second mismatch is not bad luck
            self._note(f"{_name(item)}: checksum mismatch, downloading it again")
            self._download(part)
            if part.hasher.hexdigest() != item.sha256:
                part.discard()
                raise _mismatch(item, first, part.hasher.hexdigest())
        part.commit()
        return Result(sha256=part.hasher.hexdigest(), fetched_bytes=part.received, resumed_from=resumed_from,
                      refetched=refetched)

    def _checking(self, item: Item) -> Callable[[int, int], None]:
        """Progress of re-hashing a resumed part: text only, the bar moves once it is resumed."""
        def checking(done: int, total: int) -> None:
            self.progress.update(message=f"{_name(item)}: checking the {human_bytes(total)} already downloaded "
                                         f"({100 * done // max(total, 1)}%)")
        return checking

    def _note(self, message: str) -> None:
        self.progress.update(message=message)
        self._noted = True

    def _download(self, part) -> None:
        """Fetch until the part is complete, retrying with backoff while progress is made."""
        failures = 0
        while not part.complete:
            check_control(self.control)
            before = part.offset
            try:
                self._stream(part)
            except _Transient as error:
                failures = 1 if part.offset > before else failures + 1
                if failures > self.policy.retries:
                    raise Failure(f"{part.item.label}: {error} ({failures} failures in a row)",
                                  "check the network connection and run the installer again: it resumes "
                                  f"from the {human_bytes(part.offset)} already downloaded")
                self._backoff(failures, str(error), part)

    def _backoff(self, failures: int, reason: str, part) -> None:
        delay = min(self.policy.backoff_base * 2 ** (failures - 1), self.policy.backoff_max)
        delay *= 0.5 + random.random() / 2  # jitter: many clients do not retry in lockstep
        # Tries in a row without progress: the first one and `retries` more.
        self._note(f"{_name(part.item)}: {reason}; retrying in {math.ceil(delay)} s "
                   f"(attempt {failures + 1} of {self.policy.retries + 1})")
        deadline = time.monotonic() + delay
        while (left := deadline - time.monotonic()) > 0:
            check_control(self.control)  # pause/cancel work during a backoff too
            self.sleep(min(left, 0.5))

    def _stream(self, part) -> None:
        try:
            with self._get(part) as response:
                self._accept(part, response)
                self._receive(part, response)
        except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError) as error:
            raise _Transient(f"connection problem ({type(error).__name__})")
        if part.total is not None and part.offset < part.total:
            raise _Transient(f"connection closed after {human_bytes(part.offset)} of {human_bytes(part.total)}")
        if part.total is None:
            part.total = part.offset  # no length announced: a clean end of stream is the end

    def _get(self, part) -> requests.Response:
        """GET the item, following redirects hop by hop: each carries the token only if its own
        host is Hugging Face's (requests would drop it on a new host, but never add it back)."""
        url = part.item.url
        for _ in range(MAX_REDIRECTS + 1):
            response = self.session.get(url, headers={**part.request_headers(), **auth_headers(url, self.token)},
                                        stream=True, allow_redirects=False,
                                        timeout=(self.policy.connect_timeout, self.policy.read_timeout))
            target = self.session.get_redirect_target(response)
            if not target:
                return response
            response.close()
            url = urljoin(url, target)
        raise Failure(f"{part.item.label}: {part.item.url} redirects more than {MAX_REDIRECTS} times",
                      "the URL in the manifest is wrong (a redirect loop): correct the manifest")

    def _receive(self, part, response) -> None:
        """Append the body chunk by chunk. The stream's start is skipped to (not fetched now)."""
        start = part.offset
        flowing = f"{_name(part.item)}: resumed at {human_bytes(start)} of {human_bytes(part.total)}" if start \
            else f"Downloading {_name(part.item)}"
        self.progress.skip_to(start, bytes_total=part.total, message=None if self._noted else flowing)
        for chunk in response.iter_content(self.policy.chunk_size):
            part.append(chunk)
            message, self._noted = (flowing if self._noted else None), False
            self.progress.update(bytes_done=part.offset, bytes_total=part.total, message=message)
            check_control(self.control)  # after append: the state already covers this chunk

    def _accept(self, part, response) -> None:
        status = response.status_code
        if status in _PERMANENT:
            raise refused(part.item, response.url, status, token_sent=bool(auth_headers(response.url, self.token)))
        etag = response.headers.get("ETag", "")
        if status == 206:
            part.set_total(_content_range(response, part), etag)
        elif status == 200:
            part.reset()  # the server ignored Range (or If-Range saw a changed file): from zero
            part.set_total(_length(response), etag)
        elif status == 416 and part.complete:
            return  # everything was already here
        elif status == 416:
            part.reset()
            raise _Transient("the server refused the byte range; starting over")
        else:
            raise _Transient(f"{part.item.url} answered HTTP {status}")


def _name(item: Item) -> str:
    return item.label or item.dest.name


def _content_range(response, part) -> Optional[int]:
    match = _CONTENT_RANGE.match(response.headers.get("Content-Range", ""))
    if not match or int(match.group(1)) != part.offset:
        part.reset()
        raise _Transient("the server answered a different byte range than asked; starting over")
    return None if match.group(3) == "*" else int(match.group(3))


def _length(response) -> Optional[int]:
    length = response.headers.get("Content-Length", "")
    return int(length) if length.isdigit() else None


def _mismatch(item: Item, first: str, second: str) -> Failure:
    return Failure(f"{item.label}: SHA-256 mismatch twice (expected {item.sha256}, got {first} then {second})",
                   f"the file at {item.url} is not the one the manifest describes; correct the manifest's "
                   "url/sha256 or try again later. Nothing was moved into place")


def _session() -> requests.Session:
    session = requests.Session()
    session.headers["User-Agent"] = USER_AGENT
    # Compressed transfer would make byte offsets meaningless for Range requests.
    session.headers["Accept-Encoding"] = "identity"
    return session


class _Part:
    """The `.part` file of one download and its persisted state (see module doc)."""

    def __init__(self, item: Item):
        self.item = item
        self.path, self.state_file = part_path(item.dest), state_path(item.dest)
        self.offset, self.total, self.etag = 0, item.size, ""
        self.hasher = hashlib.sha256()
        self.received = 0  # bytes fetched by this process, kept or not

    @property
    def complete(self) -> bool:
        return self.total is not None and self.offset >= self.total

    def load(self, progress) -> int:
        """Continue from the recorded length, or start afresh if the state does not fit."""
        state = self._read_state()
        if not state or not self.path.exists() or self.path.stat().st_size < state["bytes"]:
            self.reset()
            return 0
        self.offset, self.etag = state["bytes"], state.get("etag", "")
        self.total = state.get("total") or self.total
        with open(self.path, "r+b") as handle:
            handle.truncate(self.offset)  # bytes past the record were never confirmed
        self.hasher = _hash_prefix(self.path, self.offset, lambda done: progress(done, self.offset))
        return self.offset

    def _read_state(self) -> Optional[dict]:
        try:
            state = json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return None
        same = (state.get("url"), state.get("sha256"), state.get("size")) == \
            (self.item.url, self.item.sha256, self.item.size)
        return state if same and isinstance(state.get("bytes"), int) else None

    def request_headers(self) -> dict:
        if not self.offset:
            return {}
        headers = {"Range": f"bytes={self.offset}-"}
        if self.etag and not self.etag.startswith("W/"):
            headers["If-Range"] = self.etag  # a changed file comes back whole (200), never spliced
        return headers

    def set_total(self, total: Optional[int], etag: str) -> None:
        self._check_size(total)
        self.total, self.etag = total if total is not None else self.total, etag or self.etag
        self.save()

    def _check_size(self, total: Optional[int]) -> None:
        if total is not None and self.item.size is not None and total != self.item.size:
            raise Failure(f"{self.item.label}: the server has {total} bytes, the manifest says {self.item.size}",
                          "the file changed upstream or the manifest is wrong: correct the manifest's size/sha256")

    def reset(self) -> None:
        self.offset, self.hasher, self.etag = 0, hashlib.sha256(), ""
        self.total = self.item.size
        with open(self.path, "wb"):
            pass
        self.save()

    def append(self, chunk: bytes) -> None:
        if self.total is not None and self.offset + len(chunk) > self.total:
            raise _Transient("the server sent more bytes than announced")
        with open(self.path, "r+b") as handle:
            handle.seek(self.offset)
            handle.write(chunk)
            handle.flush()
            os.fsync(handle.fileno())  # data first, then the state that vouches for it
        self.hasher.update(chunk)
        self.offset += len(chunk)
        self.received += len(chunk)
        self.save()

    def save(self) -> None:
        state = {"url": self.item.url, "sha256": self.item.sha256, "size": self.item.size,
                 "total": self.total, "etag": self.etag, "bytes": self.offset}
        temporary = self.state_file.with_name(self.state_file.name + ".tmp")
        with open(temporary, "w") as handle:
            json.dump(state, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, self.state_file)

    def commit(self) -> None:
        os.replace(self.path, self.item.dest)
        fsync_dir(self.item.dest.parent)
        self.state_file.unlink(missing_ok=True)

    def discard(self) -> None:
        self.path.unlink(missing_ok=True)
        self.state_file.unlink(missing_ok=True)
        self.offset, self.hasher = 0, hashlib.sha256()
        self.total = self.item.size
