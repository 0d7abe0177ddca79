"""REPL behaviour that code written for rlms 0.1.1 and 0.1.3 relies on (issue 9).

The cases that every environment must share run on ``local``, on the isolated
``subprocess`` worker and on ``modal`` through its local SDK stand-in (the same
worker behind a cloud transport); the ones about this process (working
directory, ``sys.stdout``, ``LocalREPL.locals``) run on ``local`` only.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import warnings

import pytest

from rlm import RLM
from rlm.environments import LocalREPL, format_tools_for_prompt, get_environment
from rlm.logger import RLMLogger
from tests.sandbox_fakes import FAKES

SHARED = ["local", "subprocess", "modal"]


def options(name: str, **kwargs):
    if name == "modal":
        kwargs.setdefault("sdk", FAKES["modal"]())
    return kwargs


@pytest.fixture(params=SHARED)
def name(request):
    return request.param


@pytest.fixture
def make(name):
    built = []

    def build(**kwargs):
        env = get_environment(name, options(name, **kwargs))
        built.append(env)
        return env

    yield build
    for env in built:
        env.cleanup()


def fenced(code: str) -> str:
    return f"```repl\n{code}\n```"


def scripted_rlm(name, responses, sub=None, **kwargs):
    backend_kwargs = {"responses": responses}
    if sub is not None:
        backend_kwargs["sub_responses"] = sub
    return RLM(
        backend="scripted",
        backend_kwargs=backend_kwargs,
        environment=name,
        environment_kwargs=options(name, **kwargs.pop("environment_kwargs", {})),
        **kwargs,
    )


# ---------------------------------------------------------------------------
# Item 2: 0.1.1's final-answer forms
# ---------------------------------------------------------------------------


def test_a_rebound_answer_is_returned_by_a_final_var_line(name):
    # 0.1.1's own system prompt: answer = llm_query(...), then FINAL_VAR(answer).
    rlm = scripted_rlm(
        name,
        [fenced("answer = llm_query('What is the magic number?')"), "FINAL_VAR(answer)"],
        sub=lambda messages: "The magic number is 7",
    )
    assert rlm.completion("find it").response == "The magic number is 7"


def test_final_var_in_code_reads_a_rebound_answer(make):
    env = make()
    env.execute_code("answer = 42")
    result = env.execute_code("echo = FINAL_VAR('answer')")
    assert result.final_answer == "42"


def test_final_called_in_a_block_ends_the_run(name):
    rlm = scripted_rlm(
        name, [fenced("total = 6 * 7\nFINAL(f'the total is {total}')"), "never reached"]
    )
    assert rlm.completion("q").response == "the total is 42"


def test_final_var_wins_over_an_earlier_final_in_the_same_cell(make):
    env = make()
    first = env.execute_code("picked = 'from the variable'\nFINAL('plain')\nFINAL_VAR('picked')")
    assert (first.final_answer, first.final_kind) == ("from the variable", "FINAL_VAR")
    second = env.execute_code("kept = 'var'\nFINAL_VAR('kept')\nFINAL('later plain')")
    assert (second.final_answer, second.final_kind) == ("var", "FINAL_VAR")
    plain = env.execute_code("FINAL(3)")
    assert (plain.final_answer, plain.final_kind) == ("3", "FINAL")


# ---------------------------------------------------------------------------
# Item 7: logged locals keep their types
# ---------------------------------------------------------------------------


def test_logged_locals_are_data(name, tmp_path):
    code = (
        "nums = [1, 2.5, None, True]\n"
        "info = {'city': 'Lyon', 'pair': (1, 2), 3: 'three'}\n"
        "label = 'short'\n"
        "big = 'x' * 100_000\n"
        "many = list(range(50_000))\n"
        "import math\n"
        "def helper():\n    return 1\n"
        "answer['content'] = 'done'\n"
        "answer['ready'] = True"
    )
    logger = RLMLogger(log_dir=tmp_path)
    rlm = scripted_rlm(name, [fenced(code)], logger=logger)
    assert rlm.completion("the context " * 1000).response == "done"
    with open(logger.log_file_path) as f:
        lines = [json.loads(line) for line in f]
    logged = lines[1]["code_blocks"][0]["result"]["locals"]
    assert logged["nums"] == [1, 2.5, None, True]
    assert logged["info"] == {"city": "Lyon", "pair": [1, 2], "3": "three"}
    assert logged["label"] == "short"
    assert logged["answer"] == {"content": "done", "ready": True}
    # Big values are summaries that say how big they are, never copies.
    assert isinstance(logged["big"], str) and "100,000" in logged["big"]
    assert len(logged["big"]) < 1_000
    assert logged["many"] == "<list of 50,000 items>"
    assert isinstance(logged["context"], str) and len(logged["context"]) < 1_000
    assert logged["math"] == "<module 'math'>"
    assert logged["helper"] == "<function 'helper'>"
    # No helper function is logged as a variable.
    assert "llm_query" not in logged and "FINAL_VAR" not in logged


# ---------------------------------------------------------------------------
# Item 9: code-string tools
# ---------------------------------------------------------------------------

CODE_TOOLS = {
    "double": "def double(x):\n    return 2 * x",
    "inc": "lambda x: x + 1",
    "Point": {"tool": "class Point:\n    def __init__(self, x):\n        self.x = x"},
    "template": "Dear {name},\nthanks.",  # several lines, but not code: stays a string
    "motto": "def is not a function here",  # looks like code, does not parse: a string
}


def test_code_string_tools_are_defined_as_code(make):
    env = make(custom_tools=CODE_TOOLS)
    result = env.execute_code(
        "print(double(21), inc(1), Point(5).x)\nprint(template.format(name='Ann'))\nprint(motto)"
    )
    assert result.error is None, result.stderr
    assert result.stdout == "42 2 5\nDear Ann,\nthanks.\ndef is not a function here\n"


def test_a_code_string_tool_that_raises_returns_an_error_string(make):
    env = make(custom_tools={"boom": "def boom():\n    raise ValueError('no way')"})
    env.execute_code("out = boom()")
    out = env.execute_code("print(out)").stdout
    assert out.startswith("Error: tool boom() failed: ValueError: no way")


def test_code_string_tools_are_described_as_functions():
    text = format_tools_for_prompt({"double": CODE_TOOLS["double"], "template": "a\nb {x}"})
    assert "`double()`: a function" in text
    assert "`template`: a str value" in text


def test_a_local_code_tool_that_fails_to_define_fails_at_construction():
    from rlm.utils.exceptions import ConfigurationError

    with pytest.raises(ConfigurationError, match="broken"):
        LocalREPL(custom_tools={"broken": "def broken():\n    pass\nraise RuntimeError('x')"})


# ---------------------------------------------------------------------------
# Item 11: side effects on the host process (local)
# ---------------------------------------------------------------------------


def test_files_land_in_the_repl_directory_and_the_cwd_comes_back(tmp_path):
    host = os.getcwd()
    env = LocalREPL()
    try:
        result = env.execute_code(
            "import os\n"
            "open('notes.txt', 'w').write('hi')\n"
            "inside = os.getcwd()\n"
            f"os.chdir({str(tmp_path)!r})"
        )
        assert result.error is None, result.stderr
        assert os.getcwd() == host
        assert os.path.realpath(env.locals["inside"]) == os.path.realpath(env.temp_dir)
        assert os.path.exists(os.path.join(env.temp_dir, "notes.txt"))
        assert not os.path.exists(os.path.join(host, "notes.txt"))
        # The next cell starts in the REPL's directory again, not where the last one went.
        env.execute_code("here = os.getcwd()")
        assert os.path.realpath(env.locals["here"]) == os.path.realpath(env.temp_dir)
    finally:
        env.cleanup()
    assert not os.path.exists(env.temp_dir)


def test_a_nested_cell_runs_in_its_own_directory_and_hands_back():
    host = os.getcwd()
    outer, inner = LocalREPL(), LocalREPL()
    try:
        # The outer cell calls a tool that runs a cell of another REPL (what a child run does).
        def child():
            inner.execute_code("import os\nseen = os.getcwd()")
            return inner.locals["seen"]

        outer.custom_tools = {}
        outer.globals["child"] = child
        outer.execute_code("import os\nchild_dir = child()\nafter = os.getcwd()")
        real = os.path.realpath
        assert real(outer.locals["child_dir"]) == real(inner.temp_dir)
        assert real(outer.locals["after"]) == real(outer.temp_dir)
        assert os.getcwd() == host
    finally:
        outer.cleanup()
        inner.cleanup()


def test_cells_in_parallel_threads_leave_the_host_directory_alone():
    host = os.getcwd()
    envs = [LocalREPL() for _ in range(4)]
    start = threading.Barrier(len(envs))
    errors = []

    def work(env):
        try:
            start.wait()
            for i in range(20):
                env.execute_code(f"open('f{i}.txt', 'w').write('x')")
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(env,)) for env in envs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        assert not errors
        assert os.getcwd() == host
        assert not any(name.startswith("f") and name.endswith(".txt") for name in os.listdir(host))
    finally:
        for env in envs:
            env.cleanup()


def test_sys_stdout_is_the_callers_again_with_its_encoding():
    before_out, before_err = sys.stdout, sys.stderr
    env = LocalREPL()
    try:
        result = env.execute_code("import sys\nprint(sys.stdout.encoding)")
        assert result.stdout.strip() == str(before_out.encoding)
        assert sys.stdout is before_out and sys.stderr is before_err
    finally:
        env.cleanup()


def test_locals_hold_variables_not_helpers():
    env = LocalREPL(context_payload="ctx", custom_tools={"tool": lambda: 1, "LIMIT": 3})
    try:
        env.execute_code("x = 1\n_private = 2")
        names = set(env.locals)
        assert {"x", "context", "context_0", "answer", "LIMIT"} <= names
        for helper in ("llm_query", "llm_query_batched", "rlm_query", "SHOW_VARS", "FINAL_VAR"):
            assert helper not in names and helper in env.globals
        assert "tool" not in names and "_private" not in names
        # Writes go to the namespace the next cell sees.
        env.locals["seeded"] = 5
        assert env.execute_code("print(seeded + x)").stdout == "6\n"
        assert env.locals.copy()["seeded"] == 5
    finally:
        env.cleanup()
    assert len(env.locals) == 0


def test_error_texts_match_rlms(scripted_handler):
    def sub(messages):
        text = str(messages[-1]["content"])
        if text == "bad":
            raise RuntimeError("model exploded")
        return "ok:" + text

    handler = scripted_handler(sub_responses=sub)

    def failing_child(prompt, model=None):
        raise RuntimeError("child broke")

    env = LocalREPL(lm_handler_address=handler.address, subcall_fn=failing_child)
    bare = LocalREPL()
    try:
        env.execute_code("out = llm_query_batched(['good', 'bad'])\nr = rlm_query('x')")
        good, bad = env.locals["out"]
        assert good == "ok:good"
        assert bad.startswith("Error: llm() call failed - ") and "model exploded" in bad
        assert env.locals["r"] == "Error: RLM query failed - child broke"
        bare.execute_code("a = llm_query('x')\nb = llm_query_batched(['x'])")
        assert bare.locals["a"] == "Error: No LM handler configured"
        assert bare.locals["b"] == ["Error: No LM handler configured"]
    finally:
        env.cleanup()
        bare.cleanup()


# ---------------------------------------------------------------------------
# Item 5 (local) and item 10
# ---------------------------------------------------------------------------


def test_local_warns_once_about_an_unknown_option():
    with pytest.warns(UserWarning, match="'fidelity_unknown_key'"):
        rlm = RLM(
            backend="scripted",
            backend_kwargs={"responses": [fenced("answer.update(content='y', ready=True)")]},
            environment_kwargs={"fidelity_unknown_key": 1},
        )
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a second warning would raise here
        assert rlm.completion("q").response == "y"
        LocalREPL(fidelity_unknown_key=2).cleanup()


def test_environment_constants_module():
    from rlm.environments import constants

    assert "git" in constants.APT_PACKAGES
    assert any(p.startswith("numpy") for p in constants.PIP_PACKAGES)
