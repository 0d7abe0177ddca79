"""The shared environment behaviour tests: the same cases on every environment.

Each case runs on every environment, against the real engine (a real child process,
a real Docker engine), driven directly and through ``RLM(backend="scripted")``.
``ipython`` runs in both modes (``ipython-kernel`` is ``mode="kernel"``); modal, e2b,
daytona and prime run through local stand-ins of their SDKs (tests/sandbox_fakes.py:
the real adapter and driver, a local worker process instead of the cloud sandbox).
Docker cases skip with the reason when no engine or image is here, unless
``RLM_REQUIRE_DOCKER=1``; build the image with ``scripts/docker_image.sh``.
"""

from __future__ import annotations

import os
import threading

import pytest

from rlm import RLM
from rlm.core.types import RLMChatCompletion, UsageSummary
from rlm.environments import SupportsPersistence, get_environment

CLOUD = ["modal", "e2b", "daytona", "prime"]
ENVIRONMENTS = ["local", "subprocess", "docker", "ipython", "ipython-kernel", *CLOUD]
ISOLATED = ["subprocess", "docker", "ipython-kernel", *CLOUD]
DOCKER_IMAGE = os.environ.get("RLM_DOCKER_IMAGE", "rlm-python:local")

_docker_reason: list[str | None] = []


def docker_unavailable() -> str | None:
    """Why the docker cases cannot run here, or None."""
    if not _docker_reason:
        from rlm.environments.docker_repl import docker_available, image_available

        why = docker_available()
        if why is None and not image_available(DOCKER_IMAGE):
            why = f"image {DOCKER_IMAGE} is not built (run scripts/docker_image.sh)"
        _docker_reason.append(why)
    return _docker_reason[0]


def require(name: str) -> None:
    """Skip (or fail, with RLM_REQUIRE_DOCKER=1) when environment ``name`` cannot run here."""
    if name == "docker":
        why = docker_unavailable()
        if why is not None:
            if os.environ.get("RLM_REQUIRE_DOCKER") == "1":
                pytest.fail(f"RLM_REQUIRE_DOCKER=1 but docker cannot run: {why}")
            pytest.skip(f"docker: {why}")


def env_kwargs(name: str, **kwargs):
    if name == "docker":
        kwargs.setdefault("image", DOCKER_IMAGE)
    if name == "ipython-kernel":
        kwargs.setdefault("mode", "kernel")
    if name in CLOUD:
        from tests.sandbox_fakes import FAKES

        kwargs.setdefault("sdk", FAKES[name]())
    return kwargs


def real_name(name: str) -> str:
    """The registered environment name behind a test id (``ipython-kernel`` -> ``ipython``)."""
    return "ipython" if name == "ipython-kernel" else name


@pytest.fixture(params=ENVIRONMENTS)
def env_name(request):
    require(request.param)
    return request.param


@pytest.fixture(params=ISOLATED)
def isolated_name(request):
    require(request.param)
    return request.param


@pytest.fixture
def make_env(env_name):
    """Build environment ``env_name`` with kwargs; every one is cleaned up afterwards."""
    built = []

    def make(**kwargs):
        env = get_environment(real_name(env_name), env_kwargs(env_name, **kwargs))
        built.append(env)
        return env

    yield make
    for env in built:
        env.cleanup()


def block(code: str) -> str:
    return f"```repl\n{code}\n```"


def run_rlm(env_name, responses, sub_responses=None, **kwargs) -> RLM:
    backend_kwargs = {"responses": responses}
    if sub_responses is not None:
        backend_kwargs["sub_responses"] = sub_responses
    return RLM(
        backend="scripted",
        backend_kwargs=backend_kwargs,
        environment=real_name(env_name),
        environment_kwargs=env_kwargs(env_name, **kwargs.pop("environment_kwargs", {})),
        **kwargs,
    )


# ---------------------------------------------------------------------------
# Notebook semantics, contexts, persistence
# ---------------------------------------------------------------------------


def test_namespace_persists_across_cells_and_errors(make_env):
    env = make_env(context_payload={"rows": [1, 2, 3], "name": "ctx"})
    assert env.execute_code("total = sum(context['rows'])").error is None
    result = env.execute_code("partial = 7\n1/0")
    assert result.error.startswith("ZeroDivisionError")
    assert "ZeroDivisionError" in result.stderr
    result = env.execute_code("def f():\n    return later + total\nlater = partial")
    result = env.execute_code("print(f(), context['name'])")
    assert result.stdout == "13 ctx\n"
    assert result.error is None
    assert "total" in result.locals and "partial" in result.locals


def test_trailing_expression_and_stderr(make_env):
    env = make_env()
    result = env.execute_code("import sys\nprint('to err', file=sys.stderr)\n6 * 7")
    assert result.stdout == "42\n"
    assert "to err" in result.stderr


def test_exit_is_contained(make_env):
    env = make_env()
    result = env.execute_code("import sys\nkept = 1\nsys.exit(3)")
    assert result.error.startswith("SystemExit")
    assert env.execute_code("print(kept)").stdout == "1\n"


def test_reserved_names_are_restored(make_env):
    env = make_env(context_payload="the context")
    env.execute_code("context = 'overwritten'\nllm_query = None")
    result = env.execute_code("print(context, callable(llm_query))")
    assert result.stdout == "the context True\n"


def test_persistence_methods(make_env, scripted_handler):
    handler = scripted_handler(sub_responses=lambda m: "second:" + m[-1]["content"])
    env = make_env(context_payload="c0", persistent=True)
    assert isinstance(env, SupportsPersistence)
    assert env.get_context_count() == 1
    assert env.add_context("c1") == 1
    assert env.add_history([{"role": "user", "content": "hi"}]) == 0
    assert (env.get_context_count(), env.get_history_count()) == (2, 1)
    env.update_handler_address(handler.address)
    result = env.execute_code(
        "print(context, context_0, context_1, history[0]['content'], llm_query('q'))"
    )
    assert result.stdout == "c0 c0 c1 hi second:q\n"


def test_persistent_rlm_keeps_variables_across_completions(env_name):
    from rlm.environments import supports_persistence

    assert supports_persistence(real_name(env_name))
    rlm = run_rlm(
        env_name,
        [
            block("kept = 41"),
            "FINAL(first)",
            block(
                "answer['content'] = f'{kept + 1} {context_1} {context_0} {len(history_0) > 0}'\n"
                "answer['ready'] = True"
            ),
        ],
        persistent=True,
    )
    with rlm:
        assert rlm.completion("ctx-a").response == "first"
        assert rlm.completion("ctx-b").response == "42 ctx-b ctx-a True"


# ---------------------------------------------------------------------------
# Sub-calls and custom tools
# ---------------------------------------------------------------------------


def test_llm_query_and_batched_with_a_failing_item(make_env, scripted_handler):
    def sub(messages):
        text = messages[-1]["content"]
        if text == "bad":
            raise RuntimeError("model exploded on this prompt")
        return "ok:" + text

    handler = scripted_handler(sub_responses=sub)
    env = make_env(lm_handler_address=handler.address)
    result = env.execute_code("one = llm_query('x')\nout = llm_query_batched(['a', 'bad', 'c'])")
    assert result.error is None
    assert len(result.rlm_calls) == 3
    result = env.execute_code("print(one)\nprint(out[0], out[2])\nprint(out[1])")
    lines = result.stdout.splitlines()
    assert lines[0] == "ok:x"
    assert lines[1] == "ok:a ok:c"
    assert lines[2].startswith("Error:") and "model exploded" in lines[2]


def test_rlm_query_falls_back_to_a_model_call(make_env, scripted_handler):
    handler = scripted_handler(sub_responses=lambda m: "plain:" + m[-1]["content"])
    env = make_env(lm_handler_address=handler.address)
    result = env.execute_code("print(rlm_query('task'))\nprint(rlm_query_batched(['a', 'b']))")
    assert result.stdout == "plain:task\n['plain:a', 'plain:b']\n"
    assert len(result.rlm_calls) == 3


def test_subcall_fn_serves_rlm_query_on_the_host(make_env):
    """rlms' ``subcall_fn`` is taken by every environment: child runs call it on the host."""
    seen: list[tuple] = []

    def subcall_fn(prompt, model=None):
        seen.append((prompt, model))
        return RLMChatCompletion(
            root_model=model or "child",
            prompt=prompt,
            response=f"child:{prompt}",
            usage_summary=UsageSummary({}),
            execution_time=0.0,
        )

    env = make_env(subcall_fn=subcall_fn)
    result = env.execute_code("print(rlm_query('task', 'm'))\nprint(rlm_query_batched(['a', 'b']))")
    assert result.stdout == "child:task\n['child:a', 'child:b']\n"
    assert sorted(seen) == [("a", None), ("b", None), ("task", "m")]
    assert [c.response for c in result.rlm_calls] == ["child:task", "child:a", "child:b"]


def test_helpers_without_a_handler_return_error_strings(make_env):
    env = make_env()
    result = env.execute_code("print(llm_query('x'))")
    assert result.error is None
    assert result.stdout.startswith("Error:")


def test_custom_tools_run_on_the_host(make_env):
    seen: list[tuple] = []
    host_thread = threading.get_ident()

    def lookup(key, default=None):
        seen.append((key, default, threading.get_ident() != 0 and os.getpid()))
        return {"alpha": 1}.get(key, default)

    def broken():
        raise ValueError("tool broke")

    env = make_env(
        custom_tools={
            "lookup": {"tool": lookup, "description": "find a key"},
            "broken": broken,
            "LIMIT": 10,
            "TABLE": {"tool": {"a": [1, 2]}, "description": "data"},
        }
    )
    result = env.execute_code(
        "print(lookup('alpha'), lookup('zeta', default=5), LIMIT, TABLE['a'])\n"
        "msg = broken()\nprint(msg)"
    )
    assert result.error is None, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "1 5 10 [1, 2]"
    assert lines[1].startswith("Error:") and "tool broke" in lines[1]
    # The callable ran in this (host) process, whatever environment ran the cell.
    assert [(k, d) for k, d, _ in seen] == [("alpha", None), ("zeta", 5)]
    assert all(pid == os.getpid() for _, _, pid in seen)
    assert host_thread  # the test process is alive and well


# ---------------------------------------------------------------------------
# Final answers
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("answer['content'] = 'A'; answer['ready'] = True", "A"),
        ("answer.update({'content': 'B', 'ready': True})", "B"),
        ("answer = {'content': 'C', 'ready': True}", "C"),
        ("answer['content'] = 12; answer['ready'] = True", "12"),
        ("result = 'D'\nFINAL_VAR('result')", "D"),
        ("FINAL_VAR(99)", "99"),
    ],
)
def test_final_answer_forms_in_a_cell(make_env, code, expected):
    env = make_env()
    result = env.execute_code(code)
    assert result.error is None, result.stderr
    assert result.final_answer == expected
    assert env.execute_code("x = 1").final_answer is None  # reset after use


def test_final_answer_not_ready_and_missing_variable(make_env):
    env = make_env()
    assert env.execute_code("answer['content'] = 'draft'").final_answer is None
    result = env.execute_code("print(FINAL_VAR('nope'))")
    assert result.final_answer is None
    assert result.stdout.startswith("Error: FINAL_VAR")


def test_resolve_final_var(make_env):
    env = make_env()
    env.execute_code("summary = 'the summary'")
    assert env.resolve_final_var("summary") == "the summary"
    assert env.resolve_final_var("missing") is None


@pytest.mark.parametrize(
    "responses",
    [
        [block("answer['content'] = 'via dict'\nanswer['ready'] = True")],
        [block("x = 'via final_var'\nFINAL_VAR('x')")],
        [block("x = 'via prose var'") + "\nFINAL_VAR(x)"],
        ["FINAL(via prose)"],
    ],
    ids=["answer-dict", "final-var-call", "final-var-line", "final-line"],
)
def test_final_answer_forms_through_rlm(env_name, responses):
    rlm = run_rlm(env_name, responses)
    expected = {
        "answer": "via dict",
        "x = 'via final_var'": "via final_var",
        "x = 'via prose var'": "via prose var",
    }
    want = next((v for k, v in expected.items() if k in responses[0]), "via prose")
    assert rlm.completion("some context").response == want


def test_rlm_run_with_sub_calls_and_tools(env_name):
    calls: list[str] = []
    rlm = run_rlm(
        env_name,
        [
            block("parts = llm_query_batched([context[:5], context[5:]])\nnote(parts[0])"),
            block(
                "answer['content'] = ' + '.join(parts) + ' / ' + llm_query('sum')\nanswer['ready'] = True"
            ),
        ],
        sub_responses=lambda m: "<" + m[-1]["content"] + ">",
        custom_tools={"note": calls.append},
    )
    completion = rlm.completion("helloworld")
    assert completion.response == "<hello> + <world> / <sum>"
    assert calls == ["<hello>"]


# ---------------------------------------------------------------------------
# Bounds and time limits
# ---------------------------------------------------------------------------


def test_output_is_bounded_and_the_cut_is_announced(make_env):
    env = make_env(max_output_chars=1000)
    result = env.execute_code("print('x' * 5000)")
    assert result.stdout.startswith("x" * 1000)
    assert "output truncated" in result.stdout
    assert len(result.stdout) < 1200


def test_cell_timeout_stops_a_loop_and_the_repl_recovers(make_env):
    env = make_env()
    env.execute_code("kept = 'still here'")
    result = env.execute_code(
        "while True:\n    try:\n        pass\n    except Exception:\n        pass", timeout=0.3
    )
    assert result.error is not None and result.error.startswith("TimeoutError")
    assert env.execute_code("print(kept)").stdout == "still here\n"


def test_cell_timeout_from_cell_timeout_option(make_env):
    env = make_env(cell_timeout=0.3)
    result = env.execute_code("while True: pass")
    assert result.error.startswith("TimeoutError")
    assert env.execute_code("print('ok')").stdout == "ok\n"


def test_rlm_max_timeout_reaches_the_cell(env_name):
    from rlm.utils.exceptions import TimeoutExceededError

    rlm = run_rlm(env_name, [block("while True: pass")] * 3, max_timeout=1.0)
    with pytest.raises(TimeoutExceededError):
        rlm.completion("c")


# ---------------------------------------------------------------------------
# Isolated environments only
# ---------------------------------------------------------------------------


@pytest.fixture
def make_isolated(isolated_name):
    built = []

    def make(**kwargs):
        env = get_environment(real_name(isolated_name), env_kwargs(isolated_name, **kwargs))
        built.append(env)
        return env

    yield make
    for env in built:
        env.cleanup()


def test_cell_blocked_in_native_code_kills_and_restarts_the_worker(make_isolated):
    env = make_isolated(context_payload="ctx survives")
    env.execute_code("lost = 1")
    result = env.execute_code("sum(range(10**13))", timeout=0.3)
    assert result.error.startswith("TimeoutError")
    assert "restarted" in result.stderr
    result = env.execute_code("print(context)\nprint('lost' in globals())")
    assert result.stdout == "ctx survives\nFalse\n"


def test_worker_exit_is_reported_and_the_worker_restarts(make_isolated):
    env = make_isolated(context_payload="ctx")
    result = env.execute_code("import os\nos._exit(7)")
    assert result.error.startswith("WorkerDied")
    assert "restarted" in result.stderr
    assert env.execute_code("print(context)").stdout == "ctx\n"


def test_interrupt_stops_the_running_cell(make_isolated):
    env = make_isolated()
    box = {}
    thread = threading.Thread(target=lambda: box.update(r=env.execute_code("while True: pass")))
    thread.start()
    # Ask until the cell is running: the first interrupt may land before it starts.
    while thread.is_alive():
        env.interrupt()
        thread.join(0.2)
    assert box["r"].error.startswith("Interrupted")
    assert env.execute_code("print(1)").stdout == "1\n"


def test_context_is_sent_once_as_data(make_isolated):
    payload = {"text": "x" * 1_000_000, "items": [1, "two", None]}
    env = make_isolated(context_payload=payload)
    result = env.execute_code("print(len(context['text']), context['items'])")
    assert result.stdout == "1000000 [1, 'two', None]\n"


def test_contexts_are_streamed_in_chunks_and_arrive_intact(make_isolated):
    import hashlib

    # Several chunks each, non-ASCII, a lone surrogate, tuples.
    text = ("héllo wörld \u4e16\u754c \U0001f600 " * 150_000) + "\ud800 end"
    items = [("row", i, "é" * (i % 50)) for i in range(40_000)] + [None]
    env = make_isolated(context_payload=text)
    env.add_context(items, 1)
    env.add_context({str(i): "x" * 700 for i in range(3_000)}, 2)
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
    result = env.execute_code(
        "import hashlib\n"
        "print(hashlib.sha256(context.encode('utf-8', 'surrogatepass')).hexdigest())\n"
        "print(len(context_1), context_1[7], context_1[-1])\n"
        "print(len(context_2), len(context_2['2999']))"
    )
    assert result.error is None, result.stderr
    assert result.stdout == (f"{digest}\n40001 ['row', 7, 'ééééééé'] None\n3000 700\n")


def test_a_context_over_the_worker_cap_is_refused_before_sending(make_isolated, monkeypatch):
    from rlm.comms import frames

    env = make_isolated(context_payload="small")
    monkeypatch.setattr(frames, "MAX_FRAME_BYTES", 1_000)  # the host's view of the cap
    with pytest.raises(frames.FrameTooLargeError, match="2,000 bytes exceeds"):
        env.add_context("x" * 2_000, 1)
    assert env.execute_code("print(context)").stdout == "small\n"  # nothing was sent


def test_cleanup_is_idempotent_and_refuses_further_cells(make_isolated):
    env = make_isolated()
    env.cleanup()
    env.cleanup()
    with pytest.raises(RuntimeError):
        env.execute_code("1")


def test_unknown_environment_kwargs_fail_at_construction(isolated_name):
    from rlm.utils.exceptions import ConfigurationError

    with pytest.raises(ConfigurationError, match="bogus"):
        RLM(
            backend="scripted",
            backend_kwargs={"responses": ["x"]},
            environment=real_name(isolated_name),
            environment_kwargs=env_kwargs(isolated_name, bogus=1),
        )


def test_isolation_report(make_isolated):
    env = make_isolated()
    layers = env.isolation
    assert layers["scrubbed_env"] is True
    assert layers["sandbox"] in ("bwrap", "unshare", "none", "docker", *CLOUD)
