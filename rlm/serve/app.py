"""``rlm serve``: an OpenAI-compatible chat-completions endpoint backed by an RLM.

An ASGI app on Starlette (served by uvicorn; ``pip install "rlm[server]"``):

- ``GET /v1/models`` lists the served RLM (one model id);
- ``POST /v1/chat/completions`` runs one RLM completion; ``stream: true`` answers with
  standard ``chat.completion.chunk`` server-sent events, the run's events riding in an
  ``rlm_event`` extension field of otherwise empty chunks;
- ``POST /v1/rlm/runs`` starts a long run and returns its id; ``GET /v1/rlm/runs/{id}``
  gives status and result, ``GET /v1/rlm/runs/{id}/events`` streams its events (from the
  first) as SSE, ``DELETE /v1/rlm/runs/{id}`` cancels it, down to its cells and children.

Messages to prompt (see docs/serving.md): the text of the last ``user`` message is the
question (``root_prompt``); the messages before it, as ``{"role", "content"}`` dicts,
are the context. A request with a single message has that message's text as the
context and no separate question. ``rlm.context`` in the request body replaces the
context (the last user message stays the question).

Per-request settings travel in the ``rlm`` extension object (``max_iterations``,
``max_budget``, ``max_timeout``, ``max_tokens``, ``environment``), each capped by the
server's maxima. At most ``max_concurrent`` runs execute at once and ``max_queue`` more
wait; beyond that a request gets 429 with ``Retry-After``. Every error is an
OpenAI-style ``{"error": {"message", "type", "param", "code"}}`` object.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import math
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from rlm.core import events as ev
from rlm.utils.exceptions import ConfigurationError
from rlm.utils.structured import from_openai_response_format

#: Finished runs kept for GET /v1/rlm/runs/{id}.
KEEP_FINISHED_RUNS = 1_000
LIMIT_KEYS = ("max_iterations", "max_budget", "max_timeout", "max_tokens")


@dataclass
class ServeConfig:
    """What ``rlm serve`` serves. ``rlm`` holds ``RLM(**rlm)`` arguments; the ``max_*``
    maxima cap what a request may ask for (None: the request may ask for any value,
    and the served RLM's own setting is the default)."""

    rlm: dict[str, Any]
    model_id: str = "rlm"
    api_key: str | None = None
    max_concurrent: int = 4
    max_queue: int = 64
    max_iterations: int | None = None
    max_budget: float | None = None
    max_timeout: float | None = None
    max_tokens: int | None = None
    environments: list[str] = field(default_factory=list)  # selectable per request

    def allowed_environments(self) -> list[str]:
        own = str(self.rlm.get("environment") or "local")
        return [own, *[e for e in self.environments if e != own]]


class APIError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = (
            status,
            message,
            type,
            code,
            param,
        )
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def error_for(exc: BaseException) -> APIError:
    """The API error for a run that ended with ``exc``."""
    from rlm.utils.exceptions import (
        CancellationError,
        ConfigurationError,
        LimitExceededError,
        ProviderError,
        StructuredOutputError,
    )

    if isinstance(exc, APIError):
        return exc
    text = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, CancellationError):
        return APIError(499, text, "invalid_request_error", "cancelled")
    if isinstance(exc, StructuredOutputError):
        return APIError(422, text, "invalid_response_error", "structured_output_failed")
    if isinstance(exc, LimitExceededError):
        return APIError(400, text, "invalid_request_error", "rlm_limit_exceeded")
    if isinstance(exc, ConfigurationError):
        return APIError(400, text, "invalid_request_error", "invalid_configuration")
    if isinstance(exc, ProviderError):
        return APIError(502, text, "server_error", "upstream_error")
    return APIError(500, text, "server_error", "internal_error")


# -- requests -> runs -----------------------------------------------------------------


def _text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            part.get("text", "") if isinstance(part, dict) else str(part) for part in content
        )
    return str(content)


def prompt_from_messages(messages: Any, context: Any = None) -> tuple[Any, str | None]:
    """(context, question) for a chat request; see the module docstring."""
    if not isinstance(messages, list) or not messages:
        raise APIError(400, "'messages' must be a non-empty list", param="messages")
    for message in messages:
        if not isinstance(message, dict) or "role" not in message:
            raise APIError(400, "every message needs a 'role'", param="messages")
    last_user = max((i for i, m in enumerate(messages) if m.get("role") == "user"), default=None)
    if last_user is None:
        raise APIError(400, "'messages' needs a user message", param="messages")
    question = _text(messages[last_user].get("content"))
    rest = [
        {"role": m["role"], "content": _text(m.get("content"))}
        for i, m in enumerate(messages)
        if i != last_user
    ]
    if context is not None:
        return context, question
    if not rest:
        return question, None
    return rest, question


def _number(value: Any, name: str, integer: bool) -> float | int:
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    if not ok or isinstance(value, bool) or value <= 0:
        kind = "a positive integer" if integer else "a positive number"
        raise APIError(400, f"rlm.{name} must be {kind}", param=f"rlm.{name}")
    return value


def run_settings(config: ServeConfig, extension: Any) -> dict[str, Any]:
    """The RLM arguments of one request: the served ones, the request's ``rlm`` extension
    applied and capped by the server's maxima."""
    if extension is None:
        extension = {}
    if not isinstance(extension, dict):
        raise APIError(400, "'rlm' must be an object", param="rlm")
    known = {*LIMIT_KEYS, "environment", "context"}
    unknown = sorted(set(extension) - known)
    if unknown:
        raise APIError(
            400,
            f"unknown rlm field(s) {unknown}; accepted: {sorted(known)}",
            param="rlm",
        )
    settings = dict(config.rlm)
    for key in LIMIT_KEYS:
        cap = getattr(config, key)
        value = extension.get(key)
        if value is not None:
            value = _number(value, key, integer=key in ("max_iterations", "max_tokens"))
        else:
            value = settings.get(key)
        if cap is not None:
            value = cap if value is None else min(value, cap)
        if value is not None:
            settings[key] = value
    if "environment" in extension:
        allowed = config.allowed_environments()
        if extension["environment"] not in allowed:
            raise APIError(
                400,
                f"environment {extension['environment']!r} is not served here; allowed: {allowed}",
                param="rlm.environment",
            )
        if extension["environment"] != settings.get("environment"):
            settings["environment"] = extension["environment"]
            settings["environment_kwargs"] = {}
    return settings


# -- runs -------------------------------------------------------------------------------


def event_payload(event: ev.Event) -> dict[str, Any]:
    """An event as sent to clients: ids, kind and previews (never whole results)."""
    data = event.to_dict()
    if isinstance(event, ev.RunFinished):
        data.pop("result", None)
        result = event.result
        if result is not None:
            usage = result.usage_summary
            data["usage"] = {
                "calls": usage.total_calls,
                "input_tokens": usage.total_input_tokens,
                "output_tokens": usage.total_output_tokens,
                "cost": usage.total_cost,
            }
    elif isinstance(event, ev.IterationFinished):
        data.pop("record", None)
    elif isinstance(event, ev.CellFinished):
        result = event.result
        data["result"] = (
            None
            if result is None
            else {
                "stdout": ev.preview(result.stdout or ""),
                "stderr": ev.preview(result.stderr or ""),
                "error": result.error,
                "final_answer": result.final_answer,
            }
        )
    return data


class RunState:
    """One run: its events so far, its outcome, and the waiters following it."""

    def __init__(self, run_id: str, model_id: str):
        self.id = run_id
        self.model_id = model_id
        self.created = int(time.time())
        self.status = "queued"
        self.events: list[dict[str, Any]] = []
        self.result: Any = None  # RLMChatCompletion
        self.error: APIError | None = None
        self.task: asyncio.Task[None] | None = None
        self.changed = asyncio.Event()
        self.done = asyncio.Event()

    def publish(self, payload: dict[str, Any]) -> None:
        self.events.append(payload)
        self.changed.set()
        self.changed = asyncio.Event()  # followers re-arm on the fresh event

    async def follow(self) -> Any:
        """Every event from the first, then live ones, until the run is over."""
        index = 0
        while True:
            while index < len(self.events):
                yield self.events[index]
                index += 1
            if self.done.is_set():
                return
            waiter = self.changed
            done = asyncio.ensure_future(self.done.wait())
            changed = asyncio.ensure_future(waiter.wait())
            try:
                await asyncio.wait({done, changed}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                done.cancel()
                changed.cancel()

    def cancel(self) -> bool:
        if self.task is not None and not self.task.done():
            self.task.cancel()
            return True
        return False

    def describe(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "rlm.run",
            "created": self.created,
            "model": self.model_id,
            "status": self.status,
            "events": len(self.events),
            "result": completion_body(self) if self.result is not None else None,
            "error": self.error.body()["error"] if self.error is not None else None,
        }


def usage_body(result: Any) -> dict[str, Any]:
    usage = result.usage_summary
    return {
        "prompt_tokens": usage.total_input_tokens,
        "completion_tokens": usage.total_output_tokens,
        "total_tokens": usage.total_input_tokens + usage.total_output_tokens,
    }


def rlm_extension(state: RunState) -> dict[str, Any]:
    result = state.result
    usage = result.usage_summary
    return {
        "run_id": state.id,
        "cost": usage.total_cost,
        "calls": usage.total_calls,
        "execution_time": result.execution_time,
        "usage_summary": usage.to_dict(),
    }


def completion_body(state: RunState) -> dict[str, Any]:
    result = state.result
    return {
        "id": state.id,
        "object": "chat.completion",
        "created": state.created,
        "model": state.model_id,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": result.response},
                "finish_reason": "stop",
                "logprobs": None,
            }
        ],
        "usage": usage_body(result),
        "rlm": rlm_extension(state),
    }


class Server:
    """The app's state: configuration, the run table and the admission queue."""

    def __init__(self, config: ServeConfig):
        from rlm.core.rlm import RLM

        self.config = config
        self.base = RLM(**config.rlm)  # checks the settings now, at startup
        self.runs: OrderedDict[str, RunState] = OrderedDict()
        self.slots = asyncio.Semaphore(config.max_concurrent)
        self.admitted = 0  # running + waiting
        self.durations: list[float] = []
        self._lock = asyncio.Lock()

    def _rlm(self, settings: dict[str, Any]) -> Any:
        from rlm.core.rlm import RLM

        if settings == self.config.rlm:
            return self.base
        rlm = RLM(**settings)
        if (settings["backend"], settings.get("backend_kwargs")) == (
            self.config.rlm["backend"],
            self.config.rlm.get("backend_kwargs"),
        ):
            # Same model: share the served RLM's clients (an in-process model loads once).
            self.base._clients()
            rlm._client_cache = self.base._client_cache
        return rlm

    def retry_after(self) -> int:
        recent = self.durations[-50:]
        average = sum(recent) / len(recent) if recent else 1.0
        waiting = max(0, self.admitted - self.config.max_concurrent)
        return max(1, min(60, math.ceil(average * (waiting + 1) / self.config.max_concurrent)))

    def admit(self) -> None:
        if self.admitted >= self.config.max_concurrent + self.config.max_queue:
            raise APIError(
                429,
                f"the server is busy: {self.config.max_concurrent} runs in progress and "
                f"{self.config.max_queue} waiting; retry later",
                "requests",
                "rate_limit_exceeded",
                headers={"Retry-After": str(self.retry_after())},
            )
        self.admitted += 1

    def start(
        self,
        context: Any,
        question: str | None,
        settings: dict[str, Any],
        response_format: Any = None,
    ) -> RunState:
        """Admit (or 429) and start a run in the background; returns its state.
        ``response_format`` is a JSON Schema (from the request's ``response_format``)."""
        rlm = self._rlm(settings)  # a bad setting fails here, before admission
        self.admit()
        state = RunState("run-" + secrets.token_hex(12), self.config.model_id)
        self.runs[state.id] = state
        self._forget_old()
        state.task = asyncio.ensure_future(
            self._execute(state, rlm, context, question, response_format)
        )
        return state

    def _forget_old(self) -> None:
        finished = [k for k, s in self.runs.items() if s.done.is_set()]
        for key in finished[: max(0, len(finished) - KEEP_FINISHED_RUNS)]:
            del self.runs[key]

    async def _execute(
        self, state: RunState, rlm: Any, context: Any, question: Any, response_format: Any = None
    ) -> None:
        started = time.perf_counter()
        try:
            async with self.slots:
                state.status = "running"
                stream = rlm.astream(context, root_prompt=question, response_format=response_format)
                try:
                    async for event in stream:
                        state.publish(event_payload(event))
                        if isinstance(event, ev.RunFinished) and event.parent_run_id is None:
                            state.result = event.result
                finally:
                    await stream.aclose()  # cancels the run (cells, children) if unfinished
            state.status = "completed" if state.result is not None else "failed"
        except asyncio.CancelledError:
            state.status = "cancelled"
            state.error = APIError(499, "the run was cancelled", code="cancelled")
        except BaseException as exc:
            state.status = "failed"
            state.error = error_for(exc)
        finally:
            self.admitted -= 1
            self.durations.append(time.perf_counter() - started)
            del self.durations[:-100]
            state.done.set()
            state.changed.set()


# -- the endpoints --------------------------------------------------------------------------


def _server(request: Request) -> Server:
    return request.app.state.server


def _check_auth(request: Request) -> None:
    key = _server(request).config.api_key
    if key is None:
        return
    given = request.headers.get("authorization", "")
    scheme, _, token = given.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip(), key):
        raise APIError(
            401,
            "Incorrect or missing API key: send 'Authorization: Bearer <key>'",
            "invalid_request_error",
            "invalid_api_key",
        )


async def _json_body(request: Request) -> dict[str, Any]:
    try:
        body = json.loads(await request.body() or b"null")
    except ValueError:
        raise APIError(400, "the request body is not JSON") from None
    if not isinstance(body, dict):
        raise APIError(400, "the request body must be a JSON object")
    return body


def _endpoint(fn: Any) -> Any:
    async def wrapped(request: Request) -> Response:
        try:
            _check_auth(request)
            return await fn(request)
        except APIError as exc:
            return exc.response()

    return wrapped


async def list_models(request: Request) -> Response:
    server = _server(request)
    return JSONResponse(
        {
            "object": "list",
            "data": [
                {
                    "id": server.config.model_id,
                    "object": "model",
                    "created": 0,
                    "owned_by": "rlm",
                    "rlm": {
                        "backend": str(server.config.rlm.get("backend")),
                        "root_model": server.base.root_model,
                        "environments": server.config.allowed_environments(),
                    },
                }
            ],
        }
    )


def _check_model(server: Server, body: dict[str, Any]) -> None:
    model = body.get("model")
    if model is not None and model != server.config.model_id:
        raise APIError(
            404,
            f"The model {model!r} does not exist; this server serves {server.config.model_id!r}",
            code="model_not_found",
            param="model",
        )


def _start_from_body(server: Server, body: dict[str, Any]) -> RunState:
    extension = body.get("rlm")
    settings = run_settings(server.config, extension)
    explicit = extension.get("context") if isinstance(extension, dict) else None
    if "messages" in body or explicit is None:
        context, question = prompt_from_messages(body.get("messages"), explicit)
    else:
        context, question = explicit, body.get("question")
    try:  # OpenAI's response_format: text, json_object or json_schema
        schema = from_openai_response_format(body.get("response_format"))
    except ConfigurationError as exc:
        raise APIError(400, str(exc), param="response_format") from None
    return server.start(context, question, settings, response_format=schema)


async def _until_disconnect(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def chat_completions(request: Request) -> Response:
    server = _server(request)
    body = await _json_body(request)
    _check_model(server, body)
    state = _start_from_body(server, body)
    if body.get("stream"):
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        return StreamingResponse(
            _chunks(state, include_usage, request),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-RLM-Run-Id": state.id},
        )
    # Wait for the run, or for the client to go away (which cancels its run).
    finished = asyncio.ensure_future(state.done.wait())
    gone = asyncio.ensure_future(_until_disconnect(request))
    try:
        await asyncio.wait({finished, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        finished.cancel()
        gone.cancel()
    if not state.done.is_set():
        state.cancel()
        return Response(status_code=499)
    if state.error is not None:
        return state.error.response()
    return JSONResponse(completion_body(state))


def _sse(data: Any) -> bytes:
    return f"data: {json.dumps(data, default=str, ensure_ascii=False)}\n\n".encode()


def _chunk(state: RunState, delta: dict[str, Any], finish: str | None = None, **extra: Any):
    return {
        "id": state.id,
        "object": "chat.completion.chunk",
        "created": state.created,
        "model": state.model_id,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
        **extra,
    }


async def _chunks(state: RunState, include_usage: bool, request: Request) -> Any:
    """The standard chunk sequence; events ride in ``rlm_event``. A client that goes away
    cancels the run, also while nothing is being sent (a cell that runs for long)."""
    watcher = asyncio.ensure_future(_until_disconnect(request))
    watcher.add_done_callback(lambda t: t.cancelled() or state.cancel())
    try:
        yield _sse(_chunk(state, {"role": "assistant", "content": ""}))
        async for event in state.follow():
            yield _sse(_chunk(state, {}, rlm_event=event))
        if state.error is not None:
            yield _sse(state.error.body())
        else:
            result = state.result
            yield _sse(_chunk(state, {"content": result.response}))
            yield _sse(_chunk(state, {}, "stop", rlm=rlm_extension(state)))
            if include_usage:
                yield _sse(
                    {
                        "id": state.id,
                        "object": "chat.completion.chunk",
                        "created": state.created,
                        "model": state.model_id,
                        "choices": [],
                        "usage": usage_body(result),
                    }
                )
        yield b"data: [DONE]\n\n"
    finally:
        watcher.cancel()
        if not state.done.is_set():
            state.cancel()


async def create_run(request: Request) -> Response:
    server = _server(request)
    body = await _json_body(request)
    _check_model(server, body)
    state = _start_from_body(server, body)
    return JSONResponse(state.describe(), status_code=202)


def _run_state(request: Request) -> RunState:
    state = _server(request).runs.get(request.path_params["run_id"])
    if state is None:
        raise APIError(404, "no such run", code="run_not_found", param="run_id")
    return state


async def get_run(request: Request) -> Response:
    return JSONResponse(_run_state(request).describe())


async def run_events(request: Request) -> Response:
    state = _run_state(request)

    async def stream() -> Any:
        async for event in state.follow():
            yield _sse(event)
        yield _sse({"type": "run_status", "status": state.status})
        yield b"data: [DONE]\n\n"

    return StreamingResponse(stream(), media_type="text/event-stream")


async def delete_run(request: Request) -> Response:
    state = _run_state(request)
    if state.cancel():
        await state.done.wait()  # the run's stream is closed: its cells are being stopped
    return JSONResponse(state.describe())


def create_app(config: ServeConfig) -> Starlette:
    """The ASGI app. Build it inside a running event loop or let uvicorn do it (the
    admission semaphore belongs to the serving loop)."""

    routes = [
        Route("/v1/models", _endpoint(list_models), methods=["GET"]),
        Route("/v1/chat/completions", _endpoint(chat_completions), methods=["POST"]),
        Route("/v1/rlm/runs", _endpoint(create_run), methods=["POST"]),
        Route("/v1/rlm/runs/{run_id}", _endpoint(get_run), methods=["GET"]),
        Route("/v1/rlm/runs/{run_id}", _endpoint(delete_run), methods=["DELETE"]),
        Route("/v1/rlm/runs/{run_id}/events", _endpoint(run_events), methods=["GET"]),
    ]
    app = Starlette(routes=routes)
    app.state.server = Server(config)
    return app
