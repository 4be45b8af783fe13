"""The OpenAI-compatible HTTP gateway: POST /v1/chat/completions, POST /v1/completions,
GET /v1/models, GET /health and, given their hooks, GET /metrics and GET /v1/usage (both for
admin tokens only); served by aiohttp on llmosd's event loop, beside the gRPC syscalls.

Every request is a real llmos process (n choices: a process and n-1 forks of it, one kernel
operation), made through the same KernelThread as the gRPC syscalls and streamed from the
same ProcMirror. The gateway translates and holds no policy: `authenticate` (llmosd's, from
bearer tokens) names the caller's Cred, and the kernel decides the rest. A client that goes
away before its answer is complete sends TERM to its processes, and they are reaped.
"""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ssl
import inspect
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, TypeVar

from aiohttp import web

from llmos.kernel import accounting, grammar
from llmos.kernel.errors import NotFound
from llmos.kernel.kernel import Kernel
from llmos.kernel.mirror import ProcMirror
from llmos.kernel.thread import KernelThread
from llmos.kernel.users.cred import Cred
from llmos.syscalls.http import openai as oai
from llmos.syscalls.http import replies
from llmos.syscalls.http.openai import ApiError, Request
from llmos.syscalls.http.tools import Reply

T = TypeVar("T")
log = logging.getLogger("llmos.http")

# Who is calling: the Cred a request's headers name, or None to refuse it (401). There is no
# default: a gateway without one would have to guess, and no guess is safe.
Authenticate = Callable[[Mapping[str, str]], Cred | None | Awaitable[Cred | None]]
# The /metrics page: (body, content type).
Metrics = Callable[[], tuple[bytes, str] | Awaitable[tuple[bytes, str]]]
_END = object()
USAGE_OPTIONS = ("user", "model", "since", "by")  # GET /v1/usage, in accounting.report's order


class HttpGateway:
    """The OpenAI-compatible API of one llmosd, on the event loop of its gRPC server."""

    def __init__(self, kthread: KernelThread, mirror: ProcMirror, authenticate: Authenticate,
                 metrics: Metrics | None = None, max_body: int = 16 << 20,
                 usage: "accounting.UsageStore | None" = None) -> None:
        self.kt = kthread
        self.mirror = mirror
        self.authenticate = authenticate
        self.metrics = metrics
        self.usage = usage
        self.app = web.Application(middlewares=[_errors], client_max_size=max_body)
        self.app.add_routes([web.post("/v1/chat/completions", self.chat), web.post("/v1/completions", self.text),
                             web.get("/v1/models", self.models), web.get("/v1/models/{model:.+}", self.model),
                             web.get("/health", self.health)])
        if metrics is not None:
            self.app.add_routes([web.get("/metrics", self.serve_metrics)])
        if usage is not None:
            self.app.add_routes([web.get("/v1/usage", self.serve_usage)])
        self._runner: web.AppRunner | None = None
        self._releases: set[asyncio.Task] = set()

    async def start(self, address: str, ssl_context: "ssl.SSLContext | None" = None) -> str:
        """Serve on HOST:PORT (port 0: any free port), over TLS with `ssl_context`; returns the URL bound."""
        host, _, port = address.rpartition(":")
        # handler_cancellation: a client that disconnects cancels its handler, which ends its processes.
        self._runner = web.AppRunner(self.app, handler_cancellation=True, access_log=None, shutdown_timeout=2.0)
        await self._runner.setup()
        await web.TCPSite(self._runner, host.strip("[]"), int(port), ssl_context=ssl_context).start()
        bound_host, bound_port = self._runner.addresses[0][:2]
        scheme = "https" if ssl_context is not None else "http"
        return f"{scheme}://{f'[{bound_host}]' if ':' in bound_host else bound_host}:{bound_port}"

    async def stop(self) -> None:
        """Close the listener, end the open requests, and let their processes be released."""
        if self._runner is not None:
            await self._runner.cleanup()
        if self._releases:
            await asyncio.gather(*self._releases, return_exceptions=True)

    # --- routes --------------------------------------------------------------------------------
    async def chat(self, request: web.Request) -> web.StreamResponse:
        return await self._complete(request, "chat")

    async def text(self, request: web.Request) -> web.StreamResponse:
        return await self._complete(request, "text")

    async def models(self, request: web.Request) -> web.Response:
        cred = await self._user(request)
        return web.json_response({"object": "list", "data": await self.kt.run(lambda k: _model_list(k, cred))})

    async def model(self, request: web.Request) -> web.Response:
        cred = await self._user(request)
        name, models = request.match_info["model"], await self.kt.run(lambda k: _model_list(k, cred))
        for m in models:
            if m["id"] == name:
                return web.json_response(m)
        raise NotFound(f"model {name!r} is not loaded (loaded: {', '.join(m['id'] for m in models) or 'none'})")

    async def health(self, request: web.Request) -> web.Response:
        ok = self.kt.kernel.accepting and self.kt.alive
        return web.json_response({"status": "ok" if ok else "unavailable"}, status=200 if ok else 503)

    async def serve_metrics(self, request: web.Request) -> web.Response:
        """The Prometheus page, for admin tokens only (it is the daemon's, not the caller's)."""
        (await self._user(request)).check("metrics")
        out = self.metrics()
        body, content_type = await out if inspect.isawaitable(out) else out
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def serve_usage(self, request: web.Request) -> web.Response:
        """The usage records (the Usage syscall's), for admin tokens only; query options user,
        model, since and by, as `llmos usage` takes them."""
        cred = await self._user(request)
        cred.check("usage")
        q = request.query
        extra = sorted(set(q) - set(USAGE_OPTIONS))
        if extra:
            raise oai.bad(extra[0], f"unknown query option {extra[0][:64]!r}; options are {', '.join(USAGE_OPTIONS)}")
        rows = await accounting.report(self.kt, self.usage, cred, *(q.get(o, "") for o in USAGE_OPTIONS))
        return web.json_response({"object": "list", "data": [dataclasses.asdict(r) for r in rows]})

    # --- completions -----------------------------------------------------------------------------
    async def _complete(self, request: web.Request, kind: str) -> web.StreamResponse:
        cred = await self._user(request)
        req = oai.parse(kind, await _json(request), request.headers.get(oai.PRIORITY_HEADER))
        await grammar.ready(self.kt, cred, req.spawn)  # compiled off the kernel thread; a bad one is a 400
        pids = await self.kt.run(lambda k: [p.pid for p in k.spawn_n(cred, req.spawn, req.n)])
        log.info("http request", extra={"fields": {"pid": pids[0], "n": req.n, "owner": cred.user,
                                                   "user": req.user or "",
                                                   "model": req.model, "stream": req.stream}})
        try:
            return await (self._stream(request, req, cred, pids) if req.stream else self._whole(req, cred, pids))
        except BaseException:  # cancelled (the client left) or failed: end what is left of it
            self._release(cred, pids)
            raise

    async def _whole(self, req: Request, cred: Cred, pids: list[int]) -> web.Response:
        for pid in pids:
            await self.mirror.wait(cred, pid)
        outputs, used = await self._finish(cred, pids)
        return web.json_response(replies.completion(req, pids[0], outputs, used), headers=_pid_header(pids))

    async def _stream(self, request: web.Request, req: Request, cred: Cred, pids: list[int]) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                           **_pid_header(pids)})
        await resp.prepare(request)

        async def send(event: dict) -> None:
            await resp.write(b"data: " + json.dumps(event).encode() + b"\n\n")
        try:
            if req.kind == "chat":
                for i in range(req.n):
                    await send(replies.chunk(req, pids[0], i, first=True))
            answers = [Reply(pids[0], i, req.calls) for i in range(req.n)]
            async with contextlib.aclosing(_merge([self.mirror.read(cred, pid) for pid in pids])) as events:
                async for i, (text, end, snap, lps) in events:
                    if req.kind == "text" and (text or lps):
                        await send(replies.chunk(req, pids[0], i, text, lps=lps, start=end - len(text)))
                    elif req.kind == "chat":
                        deltas = answers[i].deltas(text, final=snap.state.done) or ([{}] if lps else [])
                        for n, delta in enumerate(deltas):
                            await send(replies.chunk(req, pids[0], i, delta=delta, lps=lps if n == 0 else None))
                    if snap.state.done:
                        made = answers[i].calls > 0 and not answers[i].cut_short
                        await send(replies.chunk(req, pids[0], i, reason=snap.reason, calls=made))
            _, used = await self._finish(cred, pids)
            if req.include_usage:
                await send(replies.usage_chunk(req, pids[0], used))
        except ConnectionError:  # the client is gone
            self._release(cred, pids)
            return resp
        except Exception as e:  # noqa: BLE001 - after the headers, an error can only be an event
            self._release(cred, pids)
            with contextlib.suppress(ConnectionError):
                await send(oai.api_error(e).body())
        with contextlib.suppress(ConnectionError):
            await resp.write(b"data: [DONE]\n\n")
        return resp

    async def _finish(self, cred: Cred, pids: list[int]) -> tuple[list[tuple[str, str, list]], dict]:
        """Reap the ended processes: their (output, reason, logprobs) and the request's usage."""
        def finish(k: Kernel) -> tuple[list[tuple[str, str, list]], dict]:
            procs = [k.reap(cred, pid) for pid in pids]
            used = replies.usage(procs[0].usage.prompt_tokens, sum(p.usage.generated_tokens for p in procs))
            used["prompt_tokens_details"] = {"cached_tokens": procs[0].usage.cached_tokens}
            return [(p.stdout, p.reason, p.logprobs) for p in procs], used
        return await self.kt.run(finish)

    def _release(self, cred: Cred, pids: list[int]) -> None:
        """TERM and reap a request's processes, on a task of its own: it runs to the end even
        though the handler that calls it is being cancelled."""
        task = asyncio.ensure_future(self.kt.run(lambda k: end_choices(k, cred, pids)))
        self._releases.add(task)
        task.add_done_callback(self._releases.discard)
        task.add_done_callback(lambda t: t.cancelled() or t.exception())  # retrieved: the kernel may have stopped

    async def _user(self, request: web.Request) -> Cred:
        user = self.authenticate(request.headers)
        if inspect.isawaitable(user):
            user = await user
        if user is None:
            raise ApiError(401, "missing or invalid API token: send Authorization: Bearer <token>",
                           "authentication_error", code="invalid_api_key")
        return user


# --- on the kernel thread ------------------------------------------------------------------------
def end_choices(k: Kernel, cred: Cred, pids: list[int]) -> None:
    """TERM each process still in the table and detach it: nobody will read the rest, so it is
    reaped as soon as it ends."""
    for pid in pids:
        if pid in k.procs:
            k.signal(cred, pid, "TERM")
            k.detach(cred, pid)


def _model_list(k: Kernel, cred: Cred) -> list[dict]:
    loaded, _ = k.list_models(cred)
    return [{"id": m.name, "object": "model", "created": int(m.loaded_at), "owned_by": m.owner or "llmos"}
            for m, _, _ in loaded]


# --- helpers -------------------------------------------------------------------------------------
@web.middleware
async def _errors(request: web.Request, handler: Callable) -> web.StreamResponse:
    """Every failure as OpenAI's error JSON with its status (kernel errors: completions.api_error)."""
    try:
        return await handler(request)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        err = ApiError(e.status, e.text or e.reason, "invalid_request_error" if e.status < 500 else "server_error")
    except Exception as e:  # noqa: BLE001 - every failure becomes an error response, never a crash
        err = oai.api_error(e)
    return web.json_response(err.body(), status=err.status, headers=err.headers())


async def _json(request: web.Request) -> Any:
    try:
        return await request.json()
    except json.JSONDecodeError as e:
        raise ApiError(400, f"the request body is not valid JSON: {e}") from None


def _pid_header(pids: list[int]) -> dict[str, str]:
    return {"X-LLMOS-Pid": ",".join(map(str, pids))}


async def _merge(streams: list[AsyncIterator[T]]) -> AsyncIterator[tuple[int, T]]:
    """The items of several streams as they come, each with its stream's index."""
    if len(streams) == 1:
        async for item in streams[0]:
            yield 0, item
        return
    queue: asyncio.Queue = asyncio.Queue()

    async def pump(i: int, stream: AsyncIterator[T]) -> None:
        try:
            async for item in stream:
                queue.put_nowait((i, item, None))
        except Exception as e:  # noqa: BLE001 - handed to the consumer
            queue.put_nowait((i, _END, e))
            return
        queue.put_nowait((i, _END, None))
    tasks = [asyncio.ensure_future(pump(i, s)) for i, s in enumerate(streams)]
    try:
        live = len(tasks)
        while live:
            i, item, error = await queue.get()
            if error is not None:
                raise error
            if item is _END:
                live -= 1
            else:
                yield i, item
    finally:
        for t in tasks:
            t.cancel()
