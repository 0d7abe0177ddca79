"""OpenTelemetry spans of a depth-2 run, read back from the SDK's in-memory exporter."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytest.importorskip("opentelemetry.sdk")

from opentelemetry.sdk.trace import TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (  # noqa: E402
    InMemorySpanExporter,
)

from rlm.core.otel import OTelSubscriber  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent / "fixtures"))
from make_stream_baseline import make_rlm  # noqa: E402


def test_spans_for_runs_iterations_calls_and_cells_with_parent_links_across_recursion():
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    rlm = make_rlm(None, [])
    rlm.subscribe(OTelSubscriber(tracer_provider=provider))
    assert rlm.completion("the root context").response == "root:child:sub:inner"
    spans = exporter.get_finished_spans()
    by_id = {s.context.span_id: s for s in spans}

    def parent(span):
        return by_id.get(span.parent.span_id) if span.parent is not None else None

    runs = [s for s in spans if s.name.startswith("invoke_agent rlm")]
    root = next(s for s in runs if s.attributes["rlm.depth"] == 0)
    child = next(s for s in runs if s.attributes["rlm.depth"] == 1)
    assert root.parent is None and len({s.context.trace_id for s in spans}) == 1
    # The child run hangs under the rlm_query span, under the root's first iteration.
    spawn = parent(child)
    assert spawn.attributes["rlm.subcall.kind"] == "rlm"
    assert parent(spawn).name == "iteration 1" and parent(parent(spawn)) is root
    chats = [s for s in spans if s.attributes.get("gen_ai.operation.name") == "chat"]
    assert {s.attributes["gen_ai.request.model"] for s in chats} == {"scripted"}
    assert len(chats) == 4  # hello, a, b (root) and inner (child)
    assert all(s.attributes["gen_ai.usage.output_tokens"] > 0 for s in chats)
    inner = next(s for s in chats if parent(parent(s)) is child)
    assert parent(inner).name == "iteration 1"
    cells = [s for s in spans if s.name == "execute_code"]
    assert len(cells) == 4 and all(parent(s).name.startswith("iteration") for s in cells)
    assert root.attributes["gen_ai.usage.input_tokens"] > 0
    assert root.attributes["rlm.iterations"] == 2
