"""A fault-injecting HTTP + WebSocket proxy for loopback fakes (the chaos run, bench/chaos.py).

Put it in front of a fake backend and point the backend's URL at the proxy. Every request gets
one seeded decision, made before anything is forwarded: a faulted request never reaches the
backend, except with ``lost``.

* ``pass``     forwarded as is (WebSockets too: both directions are pumped);
* ``http5xx``  a 5xx in the backend's own style (aiohttp's 500 page for ComfyUI, Cloudflare's
               502/503 page in front of RunPod, Google's JSON error for Gemini);
* ``http429``  a rate limit (Google's RESOURCE_EXHAUSTED JSON for Gemini);
* ``hang``     no answer for ``hang_seconds`` (longer than any client timeout), then the
               connection is dropped;
* ``garbage``  200 with an HTML page where JSON was expected;
* ``drop``     the TCP connection is aborted without any answer;
* ``lost``     the request IS forwarded and runs on the backend, then the answer is lost (the
               connection is aborted): the one fault after which a client cannot know whether
               its request was done, so it tests idempotent submission. Not in the Gemini
               style: Google's API has no idempotency key, so a lost answer to generateContent
               can only be followed by a second generation.

A WebSocket that passes can still be cut mid-stream (no close frame) after a few messages,
with probability ``ws_drop_rate`` (default: the fault rate).

Decisions are reproducible: the n-th request with a given method and path gets
``Random(f"{seed}|{name}|{method} {path}|{n}")``, so a decision does not depend on how
concurrent requests interleave. Knobs (``fault_rate``, ``faults``, ``enabled``) are plain
attributes and may be changed while the proxy runs.

    with ChaosProxy(fake.url, seed=7, fault_rate=0.1, style="comfyui") as proxy:
        requests.get(proxy.url + "/queue")
    proxy.stats()  # {"requests": ..., "faults": {"http5xx": ..., ...}, ...}
"""
from __future__ import annotations

import asyncio
import collections
import json
import logging
import random
import re
import threading

import aiohttp
from aiohttp import WSMsgType, web
from tests.fakes.loopback import serve_until_terminated

KINDS = ("http5xx", "http429", "hang", "garbage", "drop", "lost")
# What goes wrong most often in front of each kind of backend (weights, normalised).
STYLES = {
    "comfyui": {"http5xx": 0.3, "hang": 0.15, "garbage": 0.2, "drop": 0.25, "lost": 0.1},
    "runpod": {"http5xx": 0.3, "http429": 0.1, "hang": 0.15, "garbage": 0.15, "drop": 0.2, "lost": 0.1},
    "gemini": {"http429": 0.5, "http5xx": 0.25, "hang": 0.1, "drop": 0.15},
    "plain": {"http5xx": 0.4, "hang": 0.2, "garbage": 0.2, "drop": 0.2},
}
HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailers",
              "transfer-encoding", "upgrade", "host", "content-length", "content-encoding"}
AIOHTTP_500 = "500 Internal Server Error\n\nServer got itself in trouble"
CLOUDFLARE = ("<!DOCTYPE html><html><head><title>{code} | {host}</title></head><body><h1>Error {code}</h1>"
              "<p>{what}</p><p>Cloudflare Ray ID: 8c1f00d1e2f3a4b5</p></body></html>")
GARBAGE = b"<!DOCTYPE html><html><body><h1>It works!</h1><p>This is not the JSON you wanted.</p></body></html>"
GOOGLE_ERRORS = {
    429: ("RESOURCE_EXHAUSTED", "Resource has been exhausted (e.g. check quota)."),
    500: ("INTERNAL", "An internal error has occurred. Please retry or report in "
                      "https://developers.generativeai.google/guide/troubleshooting"),
    503: ("UNAVAILABLE", "The model is overloaded. Please try again later."),
}
_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}(-u1)?|[0-9a-z]{14}(?=-8188)|"
                 r"(?<=operations/)[0-9a-f]+|(?<=files/)[0-9a-f]+")

log = logging.getLogger(__name__)


def path_class(path: str) -> str:
    """The path with ids replaced, for counting faults by route."""
    return _ID.sub("{id}", path)


class ChaosProxy:
    def __init__(self, upstream: str, *, seed: int = 0, fault_rate: float = 0.1, style: str = "plain",
                 faults: dict | None = None, name: str = "", hang_seconds: float = 20.0,
                 ws_drop_rate: float | None = None, exempt=None, host: str = "127.0.0.1", port: int = 0):
        self.upstream = upstream.rstrip("/")
        self.seed = seed
        self.fault_rate = fault_rate
        self.style = style
        self.faults = dict(faults or STYLES[style])
        self.name = name or style
        self.hang_seconds = hang_seconds
        self.ws_drop_rate = ws_drop_rate
        self.exempt = exempt  # callable(method, path) -> True: never faulted
        self.enabled = True
        self.host, self.port = host, port
        self._seen = collections.Counter()
        self._lock = threading.Lock()
        self.requests = 0
        self.injected = collections.Counter()  # kind -> count (ws_cut included)
        self.by_route = collections.defaultdict(collections.Counter)  # path class -> kind -> count
        self.websockets = 0
        self._thread = self._loop = self._runner = self._session = None

    # ---- lifecycle

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> "ChaosProxy":
        if self._thread is not None:
            return self
        ready, self._error = threading.Event(), None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._serve, args=(ready,), name=f"ChaosProxy-{self.name}",
                                        daemon=True)
        self._thread.start()
        ready.wait(10)
        if self._error is not None:
            raise self._error
        return self

    def stop(self) -> None:
        if self._thread is None:
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._thread = self._loop = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def _serve(self, ready):
        loop = self._loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._startup())
        except BaseException as error:  # the port is taken
            self._error = error
            ready.set()
            return
        ready.set()
        loop.run_forever()
        loop.run_until_complete(self._runner.cleanup())
        loop.run_until_complete(self._session.close())
        pending = asyncio.all_tasks(loop)  # hanging requests, open sockets
        for task in pending:
            task.cancel()
        loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        loop.close()

    async def _startup(self):
        app = web.Application(client_max_size=256 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300),
                                              auto_decompress=False)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1, handle_signals=False)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, self.port, reuse_address=True).start()
        self.port = self._runner.addresses[0][1]

    # ---- decisions

    def decide(self, method: str, path: str) -> tuple[str, random.Random]:
        """The seeded decision for this request, and the generator for its details."""
        key = f"{method} {path}"
        with self._lock:
            n = self._seen[key]
            self._seen[key] += 1
            self.requests += 1
        rng = random.Random(f"{self.seed}|{self.name}|{key}|{n}")
        roll = rng.random()
        if not self.enabled or (self.exempt and self.exempt(method, path)) or roll >= self.fault_rate:
            return "pass", rng
        kinds = [k for k in self.faults if self.faults[k] > 0]
        kind = rng.choices(kinds, weights=[self.faults[k] for k in kinds])[0]
        return kind, rng

    def _count(self, kind: str, path: str) -> None:
        with self._lock:
            self.injected[kind] += 1
            self.by_route[path_class(path)][kind] += 1

    def stats(self) -> dict:
        with self._lock:
            return {"name": self.name, "requests": self.requests, "websockets": self.websockets,
                    "faults": dict(self.injected), "fault_total": sum(self.injected.values()),
                    "by_route": {route: dict(kinds) for route, kinds in sorted(self.by_route.items())}}

    # ---- the handler

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        kind, rng = self.decide(request.method, request.path)
        if kind != "pass":
            self._count(kind, request.path)
            return await self._fault(request, kind, rng)
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return await self._websocket(request, rng)
        return await self._forward(request)

    async def _fault(self, request: web.Request, kind: str, rng: random.Random) -> web.StreamResponse:
        if kind == "lost":
            if request.headers.get("Upgrade", "").lower() != "websocket":
                await self._forward(request)  # it runs; the answer never arrives
            kind = "drop"
        if kind == "hang":
            await asyncio.sleep(self.hang_seconds)
            kind = "drop"
        if kind == "drop":
            if request.transport is not None:
                request.transport.abort()
            raise asyncio.CancelledError  # nothing more to write on an aborted connection
        if kind == "garbage":
            return web.Response(status=200, body=GARBAGE, content_type="application/json")
        code = 429 if kind == "http429" else rng.choice((500, 502, 503))
        return self._error_response(request, code)

    def _error_response(self, request: web.Request, code: int) -> web.Response:
        if self.style == "gemini":
            code = code if code in GOOGLE_ERRORS else 503
            status, message = GOOGLE_ERRORS[code]
            return web.json_response({"error": {"code": code, "message": message, "status": status}}, status=code)
        if self.style == "comfyui" and code == 500:
            return web.Response(status=500, text=AIOHTTP_500)
        if code == 429:
            return web.json_response({"error": "Too Many Requests"}, status=429)
        what = {502: "Bad gateway: the origin web server is not answering",
                503: "Service temporarily unavailable", 500: "Internal server error"}[code]
        return web.Response(status=code, content_type="text/html",
                            text=CLOUDFLARE.format(code=code, host=request.host, what=what))

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        target = self.upstream + request.rel_url.path_qs
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        body = await request.read()
        try:
            async with self._session.request(request.method, target, data=body or None, headers=headers,
                                             allow_redirects=False) as upstream:
                data = await upstream.read()
                kept = {k: v for k, v in upstream.headers.items() if k.lower() not in HOP_BY_HOP}
                if "Location" in kept and kept["Location"].startswith(self.upstream):
                    kept["Location"] = self.url + kept["Location"][len(self.upstream):]
                return web.Response(status=upstream.status, body=data, headers=kept)
        except (aiohttp.ClientError, asyncio.TimeoutError):
            # The backend itself is down: say so like a gateway would.
            return self._error_response(request, 502)

    async def _websocket(self, request: web.Request, rng: random.Random) -> web.StreamResponse:
        target = self.upstream.replace("http://", "ws://", 1) + request.rel_url.path_qs
        try:
            upstream = await self._session.ws_connect(target, timeout=aiohttp.ClientWSTimeout(ws_receive=None))
        except (aiohttp.ClientError, asyncio.TimeoutError):
            return self._error_response(request, 502)
        client = web.WebSocketResponse()
        await client.prepare(request)
        with self._lock:
            self.websockets += 1
        drop_rate = self.fault_rate if self.ws_drop_rate is None else self.ws_drop_rate
        cut_after = rng.randint(1, 6) if self.enabled and rng.random() < drop_rate else None

        async def downstream():
            sent = 0
            async for msg in upstream:
                if msg.type == WSMsgType.TEXT:
                    await client.send_str(msg.data)
                elif msg.type == WSMsgType.BINARY:
                    await client.send_bytes(msg.data)
                else:
                    break
                sent += 1
                if cut_after is not None and sent >= cut_after:
                    self._count("ws_cut", request.path)
                    if request.transport is not None:
                        request.transport.abort()  # a network drop: no close frame
                    return

        async def upstream_pump():
            async for msg in client:
                if msg.type == WSMsgType.TEXT:
                    await upstream.send_str(msg.data)
                elif msg.type == WSMsgType.BINARY:
                    await upstream.send_bytes(msg.data)
                else:
                    break

        tasks = [asyncio.ensure_future(downstream()), asyncio.ensure_future(upstream_pump())]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await upstream.close()
            if not client.closed:
                await client.close()
        return client


def main(argv=None):  # pragma: no cover - a manual tool
    import argparse
    import sys

    parser = argparse.ArgumentParser(description="Fault-injecting proxy in front of a loopback server")
    parser.add_argument("upstream")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fault-rate", type=float, default=0.1)
    parser.add_argument("--style", choices=sorted(STYLES), default="plain")
    args = parser.parse_args(argv)
    proxy = ChaosProxy(args.upstream, port=args.port, seed=args.seed, fault_rate=args.fault_rate,
                       style=args.style).start()
    serve_until_terminated(proxy)
    print(json.dumps(proxy.stats(), indent=2), file=sys.stderr)


if __name__ == "__main__":  # pragma: no cover
    main()
