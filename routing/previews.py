"""The latest live preview of each running attempt (ComfyUI's sampler previews), kept in the
broker's Redis, never in the database: the attempt's poll writes it (at most PREVIEW_EVERY_SECONDS
apart, at most PREVIEW_MAX_BYTES), the job page and the API read it, and it is dropped when the
attempt ends (and expires by itself PREVIEW_TTL_SECONDS after the last frame)."""
import logging
import time
from typing import Optional

import redis
from django.conf import settings

from workers.base import redis_client

log = logging.getLogger(__name__)

PREVIEW_MIMES = ("image/jpeg", "image/png")


def _key(attempt_id) -> str:
    return f"comfy-hybrid:preview:{attempt_id}"


class PreviewThrottle:
    """One attempt's writer: keeps a frame only if the last one kept is old enough."""

    def __init__(self, attempt_id):
        self.attempt_id, self.last = attempt_id, float("-inf")

    def offer(self, mime: str, data: bytes) -> bool:
        now = time.monotonic()
        if now - self.last < settings.PREVIEW_EVERY_SECONDS or not data or len(data) > settings.PREVIEW_MAX_BYTES \
                or mime not in PREVIEW_MIMES:
            return False
        self.last = now
        return store(self.attempt_id, mime, data)


def store(attempt_id, mime: str, data: bytes) -> bool:
    """Keep this frame as the attempt's latest; its version (ms) lets pages ask for the new one."""
    try:
        pipe = redis_client().pipeline()
        pipe.hset(_key(attempt_id), mapping={"mime": mime, "version": int(time.time() * 1000), "data": data})
        pipe.expire(_key(attempt_id), settings.PREVIEW_TTL_SECONDS)
        pipe.execute()
        return True
    except redis.RedisError as error:  # a preview is a nicety: never fail a poll for it
        log.info("could not keep a preview of attempt %s: %s", attempt_id, error)
        return False


def version(attempt_id) -> Optional[int]:
    """The latest preview's version, without its bytes (what a page needs to show it)."""
    try:
        raw = redis_client().hget(_key(attempt_id), "version")
    except redis.RedisError:
        return None
    return int(raw) if raw else None


def latest(attempt_id) -> Optional[tuple[str, bytes]]:
    try:
        mime, data = redis_client().hmget(_key(attempt_id), ["mime", "data"])
    except redis.RedisError:
        return None
    if not mime or not data or mime.decode() not in PREVIEW_MIMES:
        return None
    return mime.decode(), data


def drop(attempt_id) -> None:
    try:
        redis_client().delete(_key(attempt_id))
    except redis.RedisError:
        pass  # it expires by itself
