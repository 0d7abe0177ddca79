"""OpenTelemetry spans for a run tree (``pip install "rlm[otel]"``).

``rlm.subscribe(OTelSubscriber())`` exports one span per run (``invoke_agent``), per
iteration, per model sub-call (``chat``, with GenAI semantic-convention attributes:
``gen_ai.request.model``, ``gen_ai.usage.input_tokens``/``output_tokens``) and per
code cell. A child run's span is a child of the ``rlm_query`` sub-call span that
started it, so one trace covers the whole recursion.
"""

from __future__ import annotations

import threading
from typing import Any

from rlm.utils.exceptions import ConfigurationError

try:
    from opentelemetry import trace
    from opentelemetry.trace import Status, StatusCode
except ImportError as exc:  # pragma: no cover - depends on the extra
    raise ConfigurationError('OpenTelemetry is not installed: pip install "rlm[otel]"') from exc


def _ns(seconds: float) -> int:
    return int(seconds * 1e9)


class OTelSubscriber:
    """An event subscriber that turns a run tree into OpenTelemetry spans."""

    def __init__(self, tracer_provider: Any = None, tracer_name: str = "rlm"):
        self.tracer = trace.get_tracer(tracer_name, tracer_provider=tracer_provider)
        self._spans: dict[tuple[str, ...], Any] = {}
        self._lock = threading.Lock()

    def _start(self, key: tuple[str, ...], name: str, parent: Any, event: Any, **attrs: Any):
        context = trace.set_span_in_context(parent) if parent is not None else None
        span = self.tracer.start_span(
            name, context=context, start_time=_ns(event.timestamp), attributes=attrs
        )
        with self._lock:
            self._spans[key] = span
        return span

    def _end(self, key: tuple[str, ...], event: Any, error: str | None = None, **attrs: Any):
        with self._lock:
            span = self._spans.pop(key, None)
        if span is None:
            return
        for name, value in attrs.items():
            if value is not None:
                span.set_attribute(name, value)
        if error:
            span.set_status(Status(StatusCode.ERROR, error))
        span.end(end_time=_ns(event.timestamp))

    def _get(self, key: tuple[str, ...]) -> Any:
        with self._lock:
            return self._spans.get(key)

    def __call__(self, event: Any) -> None:
        handler = getattr(self, "_on_" + event.type, None)
        if handler is not None:
            handler(event)

    def _on_run_started(self, e: Any) -> None:
        parent = self._get(("child", e.run_id))
        self._start(
            ("run", e.run_id),
            f"invoke_agent rlm depth {e.depth}",
            parent,
            e,
            **{
                "gen_ai.operation.name": "invoke_agent",
                "gen_ai.agent.name": "rlm",
                "gen_ai.request.model": e.model,
                "rlm.run_id": e.run_id,
                "rlm.depth": e.depth,
                "rlm.environment": e.environment,
            },
        )

    def _on_run_finished(self, e: Any) -> None:
        usage = e.usage
        self._end(
            ("run", e.run_id),
            e,
            e.error,
            **{
                "gen_ai.usage.input_tokens": usage.total_input_tokens if usage else None,
                "gen_ai.usage.output_tokens": usage.total_output_tokens if usage else None,
                "rlm.iterations": e.iterations,
                "rlm.cost_usd": usage.total_cost if usage else None,
            },
        )

    def _on_iteration_started(self, e: Any) -> None:
        parent = self._get(("run", e.run_id))
        self._start(
            ("it", e.run_id, str(e.iteration)), f"iteration {e.iteration}", parent, e,
            **{"rlm.iteration": e.iteration},
        )  # fmt: skip

    def _on_iteration_finished(self, e: Any) -> None:
        usage = getattr(e.record, "root_usage", None)
        self._end(
            ("it", e.run_id, str(e.iteration)),
            e,
            **{
                "gen_ai.usage.input_tokens": usage.total_input_tokens if usage else None,
                "gen_ai.usage.output_tokens": usage.total_output_tokens if usage else None,
            },
        )

    def _on_cell_started(self, e: Any) -> None:
        parent = self._get(("it", e.run_id, str(e.iteration)))
        self._start(("cell", e.run_id, str(e.iteration), str(e.cell)), "execute_code", parent, e)

    def _on_cell_finished(self, e: Any) -> None:
        error = getattr(e.result, "error", None)
        self._end(("cell", e.run_id, str(e.iteration), str(e.cell)), e, error)

    def _on_subcall_started(self, e: Any) -> None:
        parent = self._get(("it", e.run_id, str(e.iteration))) or self._get(("run", e.run_id))
        operation = "invoke_agent" if e.child_run_id else "chat"
        span = self._start(
            ("call", e.call_id),
            f"{operation} {e.model}",
            parent,
            e,
            **{
                "gen_ai.operation.name": operation,
                "gen_ai.request.model": e.model,
                "rlm.subcall.kind": e.kind,
            },
        )
        if e.child_run_id:
            with self._lock:
                self._spans[("child", e.child_run_id)] = span

    def _on_subcall_finished(self, e: Any) -> None:
        with self._lock:
            self._spans.pop(("child", e.child_run_id or ""), None)
        self._end(
            ("call", e.call_id),
            e,
            e.error,
            **{
                "gen_ai.response.model": e.model,
                "gen_ai.usage.input_tokens": e.input_tokens,
                "gen_ai.usage.output_tokens": e.output_tokens,
            },
        )
