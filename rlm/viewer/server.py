"""The trajectory viewer's HTTP server (standard library only).

``rlm view LOG_OR_DIR`` serves one self-contained page (HTML, CSS and JS
shipped in ``rlm/viewer/static``; nothing from the network) and a small JSON
API the page reads piece by piece, so a large log never travels whole:

``GET /api/runs``
    every run of every log under the path (a file may hold several runs);
``GET /api/run?id=RUN&node=NODE``
    one run: metadata, usage per model, final answer and one line per iteration;
``GET /api/iteration?id=RUN&node=NODE&i=N``
    one iteration in full: response, blocks, output and the sub-call tree;
``GET /api/prompt?id=RUN&node=NODE&i=N``
    the messages the root model was sent in iteration N;
``GET /api/search?id=RUN&node=NODE&q=TEXT``
    where TEXT occurs (responses, code, output, sub-call prompts and answers).

``NODE`` addresses a child run inside the sub-call tree: ``""`` is the run
itself, ``"I.B.C"`` the child run of call C of block B of iteration I (all
0-based), and ``"I.B.C/I2.B2.C2"`` goes one level deeper. Logs are re-read
when their size or modification time changes, so a running job can be
watched by reloading. The server listens on 127.0.0.1 only and answers only
requests addressed to that host name (or ``localhost``).
"""

from __future__ import annotations

import json
import os
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, urlsplit

from rlm.trajectory.html import model_calls, question_of, run_facts, stop_reason
from rlm.trajectory.model import Block, SubCall, Trajectory, find_logs, load_trajectories
from rlm.utils.text import truncate_end, truncate_middle

#: Longest text sent for one field (the logger already bounds strings near this).
MAX_FIELD = 50_000
#: Most search hits returned.
MAX_HITS = 200

_STATIC = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/index.html": ("index.html", "text/html; charset=utf-8"),
    "/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/style.css": ("style.css", "text/css; charset=utf-8"),
}


def _static(name: str) -> bytes:
    return resources.files("rlm.viewer").joinpath("static", name).read_bytes()


def _cut(text: str, limit: int = MAX_FIELD) -> str:
    return truncate_middle(text, limit)


def _usage(usage: Any) -> list[dict[str, Any]]:
    return [
        {
            "model": model,
            "calls": s.total_calls,
            "input_tokens": s.total_input_tokens,
            "output_tokens": s.total_output_tokens,
            "cost": s.total_cost,
        }
        for model, s in usage.model_usage_summaries.items()
    ]


class NotFound(LookupError):
    """A run, node or iteration that does not exist (HTTP 404)."""


class LogLibrary:
    """The runs under a path, re-read when a file changes."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = os.fspath(path)
        find_logs(self.path)  # fail now if the path does not exist
        self._lock = threading.Lock()
        self._ids: dict[str, int] = {}
        self._cache: dict[str, tuple[tuple[float, int], list[Trajectory], str | None]] = {}

    def _file_id(self, path: str) -> int:
        with self._lock:
            return self._ids.setdefault(path, len(self._ids))

    def _load(self, path: str) -> tuple[list[Trajectory], str | None]:
        stat = os.stat(path)
        key = (stat.st_mtime, stat.st_size)
        cached = self._cache.get(path)
        if cached is not None and cached[0] == key:
            return cached[1], cached[2]
        try:
            runs, error = load_trajectories(path), None
        except (OSError, ValueError) as exc:
            runs, error = [], str(exc)
        self._cache[path] = (key, runs, error)
        return runs, error

    def runs(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for path in find_logs(self.path):
            runs, error = self._load(path)
            file_id = self._file_id(path)
            rel = os.path.relpath(path, self.path) if os.path.isdir(self.path) else path
            if error is not None:
                out.append({"id": None, "file": rel, "error": error})
            for index, t in enumerate(runs):
                out.append(
                    {
                        "id": f"{file_id}.{index}",
                        "file": rel,
                        "run": index,
                        "runs_in_file": len(runs),
                        "root_model": t.root_model,
                        "backend": t.backend,
                        "environment": t.environment_type,
                        "timestamp": t.timestamp,
                        "iterations": len(t.iterations),
                        "errors": len(t.errors),
                        "subcalls": sum(1 for _ in t.subcalls()),
                        "model_calls": model_calls(t),
                        "question": _cut(question_of(t) or "", 200) or None,
                        "stop_reason": stop_reason(t),
                        "time": t.total_time,
                        "final_answer": truncate_end(t.final_answer or "", 200)
                        if t.final_answer is not None
                        else None,
                    }
                )
        return out

    def get(self, run_id: str, node: str = "") -> tuple[Trajectory, list[dict[str, Any]]]:
        """The trajectory of ``run_id`` at ``node``, and the breadcrumbs leading to it."""
        try:
            file_id, index = (int(part) for part in run_id.split("."))
        except ValueError:
            raise NotFound(f"bad run id {run_id!r}") from None
        path = next((p for p, i in list(self._ids.items()) if i == file_id), None)
        if path is None:
            raise NotFound(f"no run {run_id!r}")
        runs, _ = self._load(path)
        if not 0 <= index < len(runs):
            raise NotFound(f"no run {run_id!r}")
        t = runs[index]
        crumbs = [{"node": "", "label": t.name}]
        walked: list[str] = []
        for step in [s for s in node.split("/") if s]:
            try:
                i, b, c = (int(x) for x in step.split("."))
                call = t.iterations[i].blocks[b].calls[c]
            except (ValueError, IndexError):
                raise NotFound(f"no sub-call {step!r} in this run") from None
            if call.child is None:
                raise NotFound(f"sub-call {step!r} has no child run")
            walked.append(step)
            t = call.child
            crumbs.append(
                {"node": "/".join(walked), "label": f"child run (depth {call.depth}) at {step}"}
            )
        return t, crumbs

    # -- JSON documents -------------------------------------------------------------

    def run_document(self, run_id: str, node: str) -> dict[str, Any]:
        t, crumbs = self.get(run_id, node)
        return {
            "id": run_id,
            "node": node,
            "breadcrumbs": crumbs,
            "name": t.name,
            "metadata": t.metadata,
            "root_model": t.root_model,
            "depth": t.depth,
            "final_answer": t.final_answer,
            "time": t.total_time,
            "code_time": t.code_time,
            "usage": _usage(t.usage),
            "usage_complete": t.usage_complete,
            "errors": len(t.errors),
            "subcalls": sum(1 for _ in t.subcalls()),
            "facts": {**run_facts(t), "question": _cut(question_of(t) or "") or None},
            "warnings": t.warnings,
            "iterations": [
                {
                    "i": it.index,
                    "number": it.number,
                    "time": it.iteration_time,
                    "blocks": len(it.blocks),
                    "subcalls": len(it.calls),
                    "errors": sum(block.failed for block in it.blocks),
                    "final_answer": it.final_answer,
                    "preview": truncate_end(" ".join(it.response.split()), 160),
                }
                for it in t.iterations
            ],
        }

    def _call(self, call: SubCall, address: str) -> dict[str, Any]:
        usage = call.usage
        child = None
        if call.child is not None:
            child = {
                "iterations": len(call.child.iterations),
                "final_answer": call.child.final_answer,
                "calls": [
                    self._call(sub, f"{address}/{b.iteration_index}.{b.index}.{k}")
                    for b in call.child.blocks
                    for k, sub in enumerate(b.calls)
                ],
            }
        return {
            "address": address,
            "model": call.model,
            "depth": call.depth,
            "prompt": _cut(call.prompt_text),
            "response": _cut(call.response),
            "input_tokens": usage.total_input_tokens,
            "output_tokens": usage.total_output_tokens,
            "cost": usage.total_cost,
            "time": call.execution_time,
            "error": call.error,
            "child": child,
        }

    def _block(self, block: Block, node: str) -> dict[str, Any]:
        prefix = f"{node}/" if node else ""
        return {
            "index": block.index,
            "code": _cut(block.code),
            "stdout": _cut(block.stdout),
            "stderr": _cut(block.stderr),
            "error": block.error,
            "failed": block.failed,
            "output_cut": block.output_cut,
            "time": block.execution_time,
            "final_answer": block.final_answer,
            "locals": {
                k: truncate_end(v if isinstance(v, str) else json.dumps(v, default=repr), 200)
                for k, v in list(block.locals.items())[:100]
            },
            "calls": [
                self._call(call, f"{prefix}{block.iteration_index}.{block.index}.{k}")
                for k, call in enumerate(block.calls)
            ],
        }

    def iteration_document(self, run_id: str, node: str, i: int) -> dict[str, Any]:
        t, _ = self.get(run_id, node)
        if not 0 <= i < len(t.iterations):
            raise NotFound(f"no iteration {i}")
        it = t.iterations[i]
        return {
            "i": it.index,
            "number": it.number,
            "timestamp": it.timestamp,
            "time": it.iteration_time,
            "response": _cut(it.response),
            "final_answer": it.final_answer,
            "prompt_messages": len(it.prompt) if isinstance(it.prompt, list) else 1,
            "blocks": [self._block(block, node) for block in it.blocks],
        }

    def prompt_document(self, run_id: str, node: str, i: int) -> dict[str, Any]:
        t, _ = self.get(run_id, node)
        if not 0 <= i < len(t.iterations):
            raise NotFound(f"no iteration {i}")
        prompt = t.iterations[i].prompt
        messages = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
        return {
            "messages": [
                {
                    "role": str(m.get("role", "?")) if isinstance(m, dict) else "?",
                    "content": _cut(
                        str(m["content"])
                        if isinstance(m, dict) and isinstance(m.get("content"), str)
                        else json.dumps(m, default=repr)
                    ),
                }
                for m in messages
            ]
        }

    def search(self, run_id: str, node: str, query: str) -> dict[str, Any]:
        t, _ = self.get(run_id, node)
        needle = query.lower()
        hits: list[dict[str, Any]] = []
        total = 0

        def look(text: str, it: int, block: int | None, where: str) -> None:
            nonlocal total
            if not needle:
                return
            at = text.lower().find(needle)
            if at < 0:
                return
            total += 1
            if len(hits) < MAX_HITS:
                start = max(0, at - 60)
                snippet = text[start : at + len(needle) + 60]
                hits.append(
                    {
                        "i": it,
                        "number": t.iterations[it].number,
                        "block": block,
                        "where": where,
                        "snippet": " ".join(snippet.split()),
                    }
                )

        for it in t.iterations:
            look(it.response, it.index, None, "response")
            if it.final_answer:
                look(it.final_answer, it.index, None, "final answer")
            for block in it.blocks:
                look(block.code, it.index, block.index, "code")
                look(block.stdout, it.index, block.index, "stdout")
                look(block.stderr, it.index, block.index, "stderr")
                for call in block.calls:
                    for sub in call.walk():
                        look(
                            sub.prompt_text, it.index, block.index, f"sub-call prompt ({sub.model})"
                        )
                        look(sub.response, it.index, block.index, f"sub-call answer ({sub.model})")
        return {"query": query, "total": total, "hits": hits}


class _Handler(BaseHTTPRequestHandler):
    server: ViewerServer

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.verbose:
            super().log_message(format, *args)

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header(
            "Content-Security-Policy",
            "default-src 'self'; style-src 'self'; script-src 'self'; img-src 'self' data:",
        )
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, document: Any) -> None:
        body = json.dumps(document, ensure_ascii=False, default=repr).encode("utf-8")
        self._send(status, body, "application/json; charset=utf-8")

    def _host_ok(self) -> bool:
        host = (self.headers.get("Host") or "").rsplit(":", 1)[0].strip("[]")
        return host in ("127.0.0.1", "localhost")

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        if not self._host_ok():
            self._json(HTTPStatus.FORBIDDEN, {"error": "this viewer answers only 127.0.0.1"})
            return
        url = urlsplit(self.path)
        if url.path in _STATIC:
            name, content_type = _STATIC[url.path]
            self._send(HTTPStatus.OK, _static(name), content_type)
            return
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        library = self.server.library
        run_id, node = query.get("id", ""), query.get("node", "")
        try:
            if url.path == "/api/runs":
                document: Any = {"root": library.path, "runs": library.runs()}
            elif url.path == "/api/run":
                document = library.run_document(run_id, node)
            elif url.path == "/api/iteration":
                document = library.iteration_document(run_id, node, int(query.get("i", "-1")))
            elif url.path == "/api/prompt":
                document = library.prompt_document(run_id, node, int(query.get("i", "-1")))
            elif url.path == "/api/search":
                document = library.search(run_id, node, query.get("q", ""))
            else:
                raise NotFound(f"no such page: {url.path}")
        except NotFound as exc:
            self._json(HTTPStatus.NOT_FOUND, {"error": str(exc)})
            return
        except (ValueError, OSError) as exc:
            self._json(HTTPStatus.BAD_REQUEST, {"error": str(exc)})
            return
        self._json(HTTPStatus.OK, document)


class ViewerServer(ThreadingHTTPServer):
    """``ThreadingHTTPServer`` on 127.0.0.1 serving the viewer for ``path``."""

    daemon_threads = True

    def __init__(self, path: str | os.PathLike[str], port: int = 0, verbose: bool = False):
        self.library = LogLibrary(path)
        self.verbose = verbose
        super().__init__(("127.0.0.1", port), _Handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/"


def serve(
    path: str | os.PathLike[str],
    port: int = 0,
    open_browser: bool = True,
    ready: Any = None,
) -> None:
    """Serve the viewer until Ctrl-C. ``ready(url)`` is called once it listens."""
    server = ViewerServer(path, port)
    try:
        if ready is not None:
            ready(server.url)
        if open_browser:
            import webbrowser

            threading.Thread(target=webbrowser.open, args=(server.url,), daemon=True).start()
        server.serve_forever()
    finally:
        server.server_close()
