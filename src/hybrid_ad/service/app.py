"""The HTTP application (FastAPI) and the server (uvicorn) of `hybrid-ad serve`.

Endpoints: `POST /v1/score`, `GET /healthz`, `GET /readyz`, `GET /v1/model`, `GET /metrics`,
`POST /v1/admin/reload` (and SIGHUP). With a token, every endpoint but the two probes needs
`Authorization: Bearer <token>`; the admin endpoints always do, so without `--token-file`
reloading is by SIGHUP only. SIGTERM (or Ctrl-C) stops accepting connections, lets the
requests in flight finish, writes the last checkpoint and exits with code 0.

`POST /v1/score` is served by the outer ASGI layer itself, not routed through FastAPI: its
middleware stack, routing, dependency solving and `Request` cost more of the event loop's CPU
per single-event request than reading, validating and queueing the event (profiled in a
running server). FastAPI serves the other endpoints, `/docs` and the OpenAPI document, which
describes `/v1/score` with the request schema generated from the model.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import signal
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, MutableMapping
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import uvicorn
from fastapi import FastAPI, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from hybrid_ad.errors import HybridADError, InputError
from hybrid_ad.service.metrics import ServiceMetrics
from hybrid_ad.service.runtime import (
    CHECKPOINT_SECONDS,
    CONTRIBUTIONS,
    EXPLAIN,
    ReloadRefused,
    Runtime,
)
from hybrid_ad.service.schema import MAX_EVENTS
from hybrid_ad.service.state import StateDir

MAX_BODY_BYTES = 4 * 1024 * 1024
"""A request body above this is refused with 413 (1,000 events take well under 1 MiB)."""
GRACEFUL_SECONDS = 30
"""At SIGTERM, requests in flight get this long to finish."""
KEEP_ALIVE_SECONDS = 75
"""An idle connection is closed after this long: longer than a load balancer's usual 60 s,
so the server is not the side that closes a connection a client is about to reuse."""
SCORE_PATH = "/v1/score"
OPEN_PATHS = ("/healthz", "/readyz")
ADMIN_PREFIX = "/v1/admin/"
EXPLAIN_CHOICES = ("all", "alerts", "none")
CONTRIBUTION_CHOICES = ("approximate", "exact")
ENDPOINTS = (SCORE_PATH, "/healthz", "/readyz", "/v1/model", "/metrics", "/v1/admin/reload")

log = logging.getLogger("uvicorn.error")
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Handler = Callable[[Scope, Receive, Send], Awaitable[None]]


class BodyTooLarge(Exception):
    """The request body is over `MAX_BODY_BYTES`."""


class ClientGone(Exception):
    """The client disconnected before its request body arrived: there is no one to answer."""


class Guard:
    """The outer ASGI layer: bearer-token check, the request latency histogram per endpoint,
    `POST /v1/score` (`score`), and FastAPI (`app`) for the rest (plain ASGI, not a
    BaseHTTPMiddleware, to keep a fraction of a millisecond per request)."""

    def __init__(
        self, app: Any, token: str | None, metrics: ServiceMetrics, score: Handler
    ) -> None:
        self.app = app
        self.token = None if token is None else f"Bearer {token}".encode()
        self.metrics = metrics
        self.score = score
        self._latency: dict[tuple[str, int], Any] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        path = scope["path"]
        status = 500

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            refusal = self._refusal(scope)
            if refusal is not None:
                await _reply(sending, 401, {"error": refusal}, [(b"www-authenticate", b"Bearer")])
            elif path == SCORE_PATH:
                await self.score(scope, receive, sending)
            else:
                await self.app(scope, receive, sending)
        finally:
            self._observe(path if path in ENDPOINTS else "other", status, started)

    def _observe(self, endpoint: str, status: int, started: float) -> None:
        """One request's latency (the labelled histogram looked up once per endpoint and
        status, not per request)."""
        key = (endpoint, status)
        histogram = self._latency.get(key)
        if histogram is None:
            histogram = self.metrics.request_seconds.labels(endpoint, str(status))
            self._latency[key] = histogram
        histogram.observe(time.perf_counter() - started)

    def _refusal(self, scope: Scope) -> str | None:
        path = scope["path"]
        if path in OPEN_PATHS:
            return None
        if self.token is None:
            if path.startswith(ADMIN_PREFIX):
                return "admin endpoints need a token: start with --token-file (or send SIGHUP)"
            return None
        given = dict(scope["headers"]).get(b"authorization", b"")
        if hmac.compare_digest(given, self.token):
            return None
        return "missing or wrong bearer token" if given else "missing bearer token"


async def _reply(send: Send, status: int, payload: Any, headers: list | None = None) -> None:
    await _send(send, status, json.dumps(payload).encode(), headers)


async def _reply_json(send: Send, status: int, payload: Any, headers: list | None = None) -> None:
    """An answer with the bytes FastAPI's `JSONResponse` gives `payload` (compact JSON)."""
    body = json.dumps(payload, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    await _send(send, status, body.encode(), headers)


async def _send(send: Send, status: int, body: bytes, headers: list | None = None) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _read_body(scope: Scope, receive: Receive) -> bytes:
    declared = next((value for name, value in scope["headers"] if name == b"content-length"), b"")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise BodyTooLarge
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            raise ClientGone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise BodyTooLarge
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def create_app(runtime: Runtime, token: str | None, on_fatal: Callable[[], None]) -> Any:
    """The ASGI application: FastAPI routes behind the `Guard` middleware.

    `on_fatal` is called when the model cannot be loaded at start (the server then exits).
    """
    metrics = runtime.metrics

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        app.state.loop = asyncio.get_running_loop()
        starting = asyncio.create_task(start())
        try:
            yield
        finally:
            starting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await starting
            await runtime.stop()
            log.info("hybrid-ad serve: state checkpointed, stopped")

    async def start() -> None:
        loading = time.perf_counter()
        await runtime.start()
        if runtime.failure is not None:
            log.error("hybrid-ad serve: %s", runtime.failure)
            on_fatal()
            return
        assert runtime.current is not None
        log.info(
            "hybrid-ad serve: model %s ready in %.2f s",
            runtime.current.version,
            time.perf_counter() - loading,
        )
        app.openapi_schema = None
        while True:
            await asyncio.sleep(CHECKPOINT_SECONDS)
            try:
                await runtime.checkpoint()
            except (HybridADError, OSError) as exc:
                log.error("hybrid-ad serve: checkpoint failed: %s", exc)

    app = FastAPI(
        title="hybrid-ad",
        summary="Scores events with a fitted hybrid-ad detector, keeping each entity's history.",
        lifespan=lifespan,
    )

    async def reload() -> tuple[int, dict[str, Any]]:
        try:
            result = await runtime.reload()
        except ReloadRefused as exc:
            old = runtime.current.version if runtime.current else None
            log.error("hybrid-ad serve: reload refused: %s", exc)
            return 409, {"error": str(exc), "version": old}
        app.openapi_schema = None
        log.info("hybrid-ad serve: reloaded %s -> %s", result["previous"], result["version"])
        return 200, result

    def hangup() -> None:
        loop = getattr(app.state, "loop", None)
        if loop is not None:  # before the lifespan starts there is nothing to reload
            loop.call_soon_threadsafe(start_reload)

    reloading: set[asyncio.Task[Any]] = set()  # held, so a running reload is not collected

    def start_reload() -> None:
        task = asyncio.ensure_future(reload())
        reloading.add(task)
        task.add_done_callback(reloading.discard)

    app.state.hangup = hangup

    def unexpected_answer(exc: Exception) -> JSONResponse:
        log.error("hybrid-ad serve: unexpected error", exc_info=exc)
        return JSONResponse(_internal_error(exc), status_code=500)

    @app.exception_handler(Exception)
    async def unexpected(_: Request, exc: Exception) -> JSONResponse:
        return unexpected_answer(exc)

    async def score(scope: Scope, receive: Receive, send: Send) -> None:
        """`POST /v1/score`, in plain ASGI (see the module's docstring)."""
        if scope["method"] != "POST":  # as FastAPI answers a route's other methods
            await _reply_json(send, 405, {"detail": "Method Not Allowed"}, [(b"allow", b"POST")])
            return
        try:
            body = await _read_body(scope, receive)
        except BodyTooLarge:
            metrics.invalid.labels("too_large").inc()
            error = f"body over {MAX_BODY_BYTES} bytes; send at most {MAX_EVENTS} events"
            await _reply_json(send, 413, {"error": error})
            return
        except ClientGone:
            return
        explain, contributions = EXPLAIN, CONTRIBUTIONS
        if scope["query_string"]:
            query = dict(parse_qsl(scope["query_string"].decode("latin-1"), True))
            explain = query.get("reasons", EXPLAIN)
            contributions = query.get("contributions", CONTRIBUTIONS)
            for name, value, choices in (
                ("reasons", explain, EXPLAIN_CHOICES),
                ("contributions", contributions, CONTRIBUTION_CHOICES),
            ):
                if value not in choices:
                    metrics.invalid.labels("validation").inc()
                    expected = ", ".join(choices)
                    error = f"{name}: expected one of {expected}, got {value!r}"
                    await _reply_json(send, 422, {"error": error})
                    return
        try:
            answer = await runtime.score(body, explain, contributions)
        except Exception as exc:  # answered: nothing a request sends may crash the server
            log.error("hybrid-ad serve: unexpected error", exc_info=exc)
            await _reply_json(send, 500, _internal_error(exc))
            return
        await _send(send, answer.status, answer.body)

    @app.get("/healthz", summary="The process is alive")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", summary="The model is loaded and the state restored (503 before)")
    async def readyz() -> JSONResponse:
        if runtime.current is None:
            status = "failed" if runtime.failure else "loading"
            return JSONResponse({"status": status, "error": runtime.failure}, status_code=503)
        return JSONResponse({"status": "ready", "version": runtime.current.version})

    @app.get("/v1/model", summary="The served model's manifest: version, hashes, metrics")
    async def model() -> JSONResponse:
        if runtime.current is None:
            return JSONResponse({"error": "not ready: the model is loading"}, status_code=503)
        return JSONResponse(runtime.current.describe())

    @app.get("/metrics", summary="Prometheus metrics")
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.post("/v1/admin/reload", summary="Load --model again, check it, swap it in")
    async def admin_reload() -> JSONResponse:
        status, payload = await reload()
        return JSONResponse(payload, status_code=status)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = get_openapi(
                title=app.title, version="1", summary=app.summary, routes=app.routes
            )
            served = runtime.current
            event = (
                served.schema.json_schema()
                if served is not None
                else {"type": "object", "description": "the model is loading"}
            )
            document.setdefault("components", {}).setdefault("schemas", {})["Event"] = event
            document["paths"] = {SCORE_PATH: SCORE_OPERATION, **document.get("paths", {})}
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return Guard(app, token, metrics, score)


SCORE_OPERATION = {
    "post": {
        "summary": "Score one event (an object) or a batch (an array, at most 1,000)",
        "description": "`?reasons=all` (default) explains every event; `alerts` only the "
        "alerting ones (the others get `reasons: null`), `none` none. "
        "`?contributions=approximate` (default) gives the judge's part as XGBoost's path "
        "attribution; `exact` as TreeSHAP, the values `hybrid-ad score` writes, at about "
        "3 ms per explained event on the streaming model.",
        "operationId": "score_v1_score_post",
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {
                        "oneOf": [
                            {"$ref": "#/components/schemas/Event"},
                            {
                                "type": "array",
                                "items": {"$ref": "#/components/schemas/Event"},
                                "maxItems": MAX_EVENTS,
                            },
                        ]
                    }
                }
            },
        },
        "responses": {
            "200": {
                "description": "Per event, in input order: event_id, score, alert, threshold, "
                "reasons, model_version (or error, for an event the scorer refused)",
                "content": {"application/json": {"schema": {}}},
            },
            "413": {"description": f"Body over {MAX_BODY_BYTES} bytes"},
            "422": {"description": "An event is invalid: `error` names it and the field"},
        },
    }
}
"""The OpenAPI operation of `POST /v1/score` (served by `Guard`, not a FastAPI route)."""


def _internal_error(exc: Exception) -> dict[str, str]:
    message = " ".join(str(exc).split()) or type(exc).__name__
    return {"error": f"internal error: {message}"}


class Server(uvicorn.Server):
    """uvicorn with SIGHUP for a reload, and a graceful SIGTERM that ends with exit code 0
    (uvicorn re-raises the signal after its shutdown, which would end the process by it)."""

    def __init__(self, config: uvicorn.Config, on_hangup: Callable[[], None]) -> None:
        super().__init__(config)
        self.on_hangup = on_hangup

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        handlers = {
            signal.SIGINT: self.handle_exit,
            signal.SIGTERM: self.handle_exit,
            signal.SIGHUP: lambda *_: self.on_hangup(),
        }
        original = {sig: signal.signal(sig, handler) for sig, handler in handlers.items()}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)


def read_token(path: Path) -> str:
    """The bearer token: the file's one non-empty line."""
    try:
        lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    except FileNotFoundError:
        raise InputError(f"--token-file {path}: not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"--token-file {path}: cannot be read ({exc})") from None
    tokens = [line for line in lines if line]
    if len(tokens) != 1 or any(ch.isspace() for ch in tokens[0]):
        raise InputError(f"--token-file {path}: expected one token on one line")
    return tokens[0]


def serve(
    model_dir: Path, host: str, port: int, token_file: Path | None, state: Path | None
) -> None:
    """Run the server until SIGTERM or Ctrl-C; a model that cannot be loaded is an error."""
    from hybrid_ad.artifacts import MANIFEST
    from hybrid_ad.errors import ArtifactError

    if not (model_dir / MANIFEST).is_file():
        raise ArtifactError(f"--model {model_dir}: not a saved model (no {MANIFEST})")
    token = read_token(token_file) if token_file is not None else None
    listener = _listen(host, port)
    state_dir = StateDir(state) if state is not None else None
    if state_dir is None:
        log.warning("hybrid-ad serve: no --state: the behavioural state is lost at exit")
    runtime = Runtime(model_dir, state_dir, ServiceMetrics())
    server: Server | None = None

    def fatal() -> None:
        assert server is not None
        server.should_exit = True

    app = create_app(runtime, token, fatal)
    config = uvicorn.Config(
        app,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        access_log=False,
        proxy_headers=False,  # nothing reads the client's address: no X-Forwarded-* parsing
        server_header=False,
        timeout_graceful_shutdown=GRACEFUL_SECONDS,
        timeout_keep_alive=KEEP_ALIVE_SECONDS,
    )
    server = Server(config, lambda: app.app.state.hangup())
    server.run(sockets=[listener])
    if runtime.failure is not None:
        raise ArtifactError(runtime.failure)


def _listen(host: str, port: int) -> socket.socket:
    """Bind before anything loads, so a taken port is a one-line error at once."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise InputError(f"--host {host}: {exc.strerror}") from None
    family, kind, proto, _, address = infos[0]
    listener = socket.socket(family, kind, proto)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind(address)
    except OSError as exc:
        listener.close()
        raise InputError(f"--port {port}: cannot listen on {host} ({exc.strerror})") from None
    listener.listen(2048)
    listener.set_inheritable(True)
    return listener
