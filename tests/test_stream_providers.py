"""Root tokens streamed from the providers: the official openai client against a loopback
server sending real SSE chunks, and llama.cpp with the real local model."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from rlm import RLM
from rlm.clients import get_client

PIECES = ["```repl\n", 'answer["content"] = ', '"streamed"\n', 'answer["ready"] = True\n', "```"]


class SSEStub(BaseHTTPRequestHandler):
    """POST /v1/chat/completions: JSON, or with "stream": true, SSE chunks then [DONE]."""

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.requests.append(body)
        base = {"id": "c1", "created": 0, "model": body["model"]}
        if not body.get("stream"):
            data = json.dumps(
                {
                    **base,
                    "object": "chat.completion",
                    "choices": [
                        {
                            "index": 0,
                            "finish_reason": "stop",
                            "message": {"role": "assistant", "content": "".join(PIECES)},
                        }
                    ],
                    "usage": {"prompt_tokens": 9, "completion_tokens": 5, "total_tokens": 14},
                }
            ).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        chunk = {**base, "object": "chat.completion.chunk"}
        for piece in PIECES:
            delta = {"index": 0, "delta": {"content": piece}, "finish_reason": None}
            self.wfile.write(f"data: {json.dumps({**chunk, 'choices': [delta]})}\n\n".encode())
            self.wfile.flush()
        usage = {"prompt_tokens": 9, "completion_tokens": 5, "total_tokens": 14}
        last = {**chunk, "choices": [], "usage": usage}
        self.wfile.write(f"data: {json.dumps(last)}\n\ndata: [DONE]\n\n".encode())
        self.wfile.flush()

    def log_message(self, *args):
        pass


@pytest.fixture
def sse_url():
    server = ThreadingHTTPServer(("127.0.0.1", 0), SSEStub)
    server.requests = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1", server.requests
    server.shutdown()
    server.server_close()


def test_the_openai_client_streams_sse_chunks_with_usage(sse_url):
    url, requests = sse_url
    client = get_client("openai", {"model_name": "stub-model", "base_url": url, "api_key": "k"})
    pieces: list[str] = []
    generation = client.generate_stream("hi", pieces.append)
    assert pieces == PIECES and generation.text == "".join(PIECES)
    assert (generation.input_tokens, generation.output_tokens) == (9, 5)
    assert requests[-1]["stream"] is True
    assert requests[-1]["stream_options"] == {"include_usage": True}
    assert client.get_usage_summary().total_input_tokens == 9


def test_root_tokens_of_a_run_come_from_the_sse_stream_and_completion_does_not_stream(sse_url):
    url, requests = sse_url
    kwargs = {"model_name": "stub-model", "base_url": url, "api_key": "k"}
    events = list(RLM(backend="openai", backend_kwargs=kwargs).stream("ctx"))
    tokens = [e.text for e in events if e.type == "root_token"]
    assert tokens == PIECES
    assert events[-1].result.response == "streamed"
    assert events[-1].usage.total_input_tokens == 9
    requests.clear()
    assert RLM(backend="openai", backend_kwargs=kwargs).completion("ctx").response == "streamed"
    assert all("stream" not in r for r in requests)  # no consumer: the request is unchanged


@pytest.mark.real_model
def test_llama_cpp_streams_root_tokens_of_the_real_model():
    try:
        from tests.llama_server import real_model_or_skip
    except ImportError:  # run from tests/
        from llama_server import real_model_or_skip
    path = real_model_or_skip()
    client = get_client(
        "llama_cpp",
        {"model_path": str(path), "sampling_args": {"max_tokens": 12, "temperature": 0}},
    )
    pieces: list[str] = []
    generation = client.generate_stream("Say hello.", pieces.append)
    assert len(pieces) >= 2 and "".join(pieces) == generation.text
    assert generation.output_tokens == len(pieces) and generation.input_tokens > 0
