"""DockerREPL's rlms-compatible surface, against a real Docker engine and a real LMHandler.

The shared behaviour of every environment is in tests/test_environments.py and the
break-out attempts in tests/test_containment.py; this file covers what only the docker
environment offers: rlms' constructor options and attributes (``subcall_fn``,
``proxy_server``, ``container_id``, ``temp_dir``, ``image``), code-string custom tools,
and the image default. Docker cases skip when no engine or image is here, unless
``RLM_REQUIRE_DOCKER=1``.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading

import pytest

from rlm.core.types import RLMChatCompletion, UsageSummary
from rlm.environments.docker_repl import (
    IMAGE_ENV_VAR,
    DockerImageError,
    DockerREPL,
    DockerTransport,
    docker_client,
    seccomp_profile,
)
from rlm.environments.repl_core import code_tool_source
from rlm.utils.exceptions import ConfigurationError
from tests.test_environments import DOCKER_IMAGE


def child(text: str, model: str | None = None) -> RLMChatCompletion:
    return RLMChatCompletion(
        root_model=model or "child",
        prompt="p",
        response=text,
        usage_summary=UsageSummary({}),
        execution_time=0.0,
    )


def container_exists(container_id: str) -> bool:
    """Asked of the engine through the SDK (the docker command may be hidden)."""
    found = docker_client().api.containers(all=True, filters={"id": container_id})
    return any(c["Id"] == container_id for c in found)


# -- code-string tools: which strings are code (no engine needed) ---------------------


def test_code_tool_source_recognises_definitions_of_the_tool_name():
    assert code_tool_source("sq", "def sq(x):\n    return x * x") == "def sq(x):\n    return x * x"
    assert code_tool_source("Box", "class Box:\n    pass") is not None
    assert code_tool_source("inc", "lambda x: x + 1") == "inc = (\nlambda x: x + 1\n)"
    assert code_tool_source("k", "import math\nk = math.pi") is not None
    assert code_tool_source("f", "    def f():\n        return 1\n") == "def f():\n    return 1"


def test_code_tool_source_keeps_other_strings_as_data():
    assert code_tool_source("t", "one line of text") is None
    assert code_tool_source("t", "Dear model,\nplease summarise.") is None  # does not parse
    assert code_tool_source("t", "def other():\n    return 1") is None  # binds another name
    assert code_tool_source("t", "x = 1\ny = 2") is None
    assert code_tool_source("t", "lambda calculus notes") is None
    assert code_tool_source("t", 42) is None


class _Api:
    """Only what host_config() calls: the SDK's own create_host_config (no engine)."""

    def __init__(self):
        from docker.api.client import APIClient

        self._real = APIClient(base_url="unix:///nonexistent.sock", version="1.41")

    def create_host_config(self, **kwargs):
        return self._real.create_host_config(**kwargs)


class _Client:
    def __init__(self):
        self.api = _Api()


def test_host_config_keeps_every_hardening_layer_and_mounts_nothing():
    config = DockerTransport(client=_Client(), image="img").host_config()
    assert config["NetworkMode"] == "none"
    assert config["ReadonlyRootfs"] is True
    assert config["CapDrop"] == ["ALL"]
    assert "no-new-privileges" in config["SecurityOpt"]
    assert config["Memory"] == config["MemorySwap"] == 2048 * 1024 * 1024
    assert config["NanoCpus"] == 1_000_000_000
    assert config["PidsLimit"] == 64
    assert set(config["Tmpfs"]) == {"/work", "/tmp"}
    assert config["LogConfig"]["Type"] == "none"
    assert not config.get("Binds") and not config.get("Mounts")
    (profile,) = [o for o in config["SecurityOpt"] if o.startswith("seccomp=")]
    assert json.loads(profile.removeprefix("seccomp=")) == json.loads(seccomp_profile())


def test_seccomp_profile_refuses_io_uring_namespaces_and_tracing():
    profile = json.loads(seccomp_profile())
    assert profile["defaultAction"] == "SCMP_ACT_ERRNO"
    allowed = set(profile["syscalls"][0]["names"])
    assert {"read", "write", "execve", "futex", "mmap"} <= allowed
    for refused in ("io_uring_setup", "io_uring_enter", "unshare", "setns", "ptrace", "mount"):
        assert refused not in allowed
    (clone,) = [r for r in profile["syscalls"] if r["names"] == ["clone"]]
    assert clone["args"][0]["op"] == "SCMP_CMP_MASKED_EQ" and clone["args"][0]["valueTwo"] == 0


def test_cli_only_options_are_refused_with_the_replacement():
    with pytest.raises(ValueError, match="base_url"):
        DockerREPL(docker="podman")
    with pytest.raises(ValueError, match="host_config"):
        DockerREPL(run_args=["--privileged"])


# -- construction ------------------------------------------------------------------------


def test_no_arguments_uses_the_image_named_by_the_environment(docker, monkeypatch):
    monkeypatch.setenv(IMAGE_ENV_VAR, DOCKER_IMAGE)
    env = DockerREPL()
    try:
        assert env.image == DOCKER_IMAGE
        assert env.execute_code("print(6 * 7)").stdout == "42\n"
    finally:
        env.cleanup()


def test_subcall_fn_must_be_callable(docker):
    with pytest.raises(ConfigurationError, match="subcall_fn"):
        docker(subcall_fn="not a function")


def test_reserved_tool_name_is_refused_and_leaves_no_folder(docker, tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where temp_dir would be made
    with pytest.raises(ValueError, match="reserved"):
        docker(custom_tools={"llm_query": "def llm_query(): pass"})
    assert list(tmp_path.iterdir()) == []


# -- subcall_fn ---------------------------------------------------------------------------


def test_rlm_query_calls_subcall_fn_on_the_host_with_the_model(docker, scripted_handler):
    seen = []

    def sub(prompt, model=None):
        seen.append((prompt, model))
        return child(f"child:{prompt}", model)

    env = docker(lm_handler_address=scripted_handler().address, subcall_fn=sub)
    result = env.execute_code("print(rlm_query('task', model='m1'))")
    assert result.stdout == "child:task\n"
    assert seen == [("task", "m1")]
    assert [c.response for c in result.rlm_calls] == ["child:task"]


def test_a_failing_or_malformed_subcall_becomes_error_text(docker):
    def sub(prompt, model=None):
        if prompt == "boom":
            raise RuntimeError("the child broke")
        if prompt == "odd":
            return 12345  # not a completion
        return child(f"ok:{prompt}")

    env = docker(subcall_fn=sub)
    result = env.execute_code("print(rlm_query('boom'))\nprint(rlm_query('odd'))")
    lines = result.stdout.splitlines()
    assert lines[0].startswith("Error:") and "the child broke" in lines[0]
    assert lines[1].startswith("Error:")
    assert result.stderr == "" and result.error is None
    assert result.rlm_calls == []


def test_batched_rlm_query_keeps_order_and_tracks_only_successes(docker):
    def sub(prompt, model=None):
        if prompt == "bad":
            raise ValueError("refused")
        return child(f"r:{prompt}")

    env = docker(subcall_fn=sub)
    result = env.execute_code("out = rlm_query_batched(['a', 'bad', 'c', 'd'])\nprint(out)")
    assert result.stdout.startswith("['r:a', 'Error:")
    assert result.stdout.rstrip().endswith("'r:c', 'r:d']")
    assert [c.response for c in result.rlm_calls] == ["r:a", "r:c", "r:d"]
    assert env.execute_code("print(rlm_query_batched([]))").stdout == "[]\n"


def test_one_malformed_result_in_a_batch_fails_that_item_only(docker):
    env = docker(subcall_fn=lambda p, m=None: 12345 if p == "odd" else child(f"r:{p}"))
    result = env.execute_code("out = rlm_query_batched(['a', 'odd', 'b'])\nprint(out[0], out[2])")
    assert result.stdout == "r:a r:b\n", result.stderr
    assert env.execute_code("print(out[1].startswith('Error:'))").stdout == "True\n"
    assert [c.response for c in result.rlm_calls] == ["r:a", "r:b"]


def test_batched_rlm_query_runs_at_most_max_concurrent_subcalls_at_once(docker):
    lock = threading.Lock()
    active = [0]
    peak = [0]
    two_running = threading.Event()

    def sub(prompt, model=None):
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
            if active[0] == 2:
                two_running.set()
        two_running.wait(30)  # each call waits until two have overlapped once
        with lock:
            active[0] -= 1
        return child(f"ok:{prompt}")

    env = docker(subcall_fn=sub, max_concurrent_subcalls=2)
    result = env.execute_code("print(len(rlm_query_batched(list('abcdef'))))")
    assert result.stdout == "6\n", result.stderr
    assert peak[0] == 2
    assert len(result.rlm_calls) == 6


def test_the_rlms_own_callback_is_served_by_the_handler(docker, scripted_handler):
    def from_rlm(prompt, model=None):
        raise AssertionError("the RLM's callback goes through the handler")

    from_rlm.rlm_routed_via_handler = True
    env = docker(lm_handler_address=scripted_handler().address, subcall_fn=from_rlm)
    assert env.execute_code("print(rlm_query('x'))").stdout == "sub:x\n"


def test_without_subcall_fn_rlm_query_falls_back_to_the_handler(docker, scripted_handler):
    env = docker(lm_handler_address=scripted_handler().address)
    result = env.execute_code("print(rlm_query_batched(['a', 'b']))")
    assert result.stdout == "['sub:a', 'sub:b']\n"
    assert len(result.rlm_calls) == 2


def test_llm_query_from_container_threads_runs_concurrently(docker, scripted_handler):
    # The model answers only once all five calls are in flight at the same time.
    barrier = threading.Barrier(5, timeout=60)

    def answer(messages):
        barrier.wait()
        return "sub:" + str(messages[-1]["content"])

    env = docker(lm_handler_address=scripted_handler(sub_responses=answer).address)
    code = (
        "import threading\n"
        "res = {}\n"
        "ts = [threading.Thread(target=lambda i=i: res.__setitem__(i, llm_query(f'q{i}')))"
        " for i in range(5)]\n"
        "[t.start() for t in ts]; [t.join() for t in ts]\n"
        "print(sorted(res.items()))"
    )
    result = env.execute_code(code)
    assert result.stdout == str([(i, f"sub:q{i}") for i in range(5)]) + "\n", result.stderr
    assert len(result.rlm_calls) == 5


def test_mixed_sub_calls_are_recorded_in_call_order(docker, scripted_handler):
    env = docker(
        lm_handler_address=scripted_handler().address,
        subcall_fn=lambda p, m=None: child(f"c:{p}"),
    )
    result = env.execute_code("llm_query('1')\nrlm_query_batched(['2', '3'])\nllm_query('4')")
    assert [c.response for c in result.rlm_calls] == ["sub:1", "c:2", "c:3", "sub:4"]
    assert env.execute_code("x = 1").rlm_calls == []


# -- rlms' attributes ------------------------------------------------------------------


def test_proxy_server_follows_the_handler_address_and_opens_no_port(docker):
    env = docker()
    assert env.proxy_server.lm_handler_address is None
    env.update_handler_address(("127.0.0.1", 6000))
    assert env.lm_handler_address == ("127.0.0.1", 6000)
    assert env.proxy_server.lm_handler_address == ("127.0.0.1", 6000)
    assert env.proxy_port is None and env.proxy_server.port is None


def test_container_id_and_temp_dir_live_until_cleanup(docker):
    env = docker()
    env.execute_code("x = 1")
    container_id, temp_dir = env.container_id, env.temp_dir
    assert container_id and len(container_id) == 64
    assert container_exists(container_id)
    assert os.path.isdir(temp_dir)
    env.cleanup()
    env.cleanup()
    assert not container_exists(container_id)
    assert not os.path.exists(temp_dir)
    assert env.container_id is None


def test_two_environments_have_their_own_container_and_state(docker):
    one, two = docker(), docker()
    one.execute_code("shared = 'one'")
    two.execute_code("shared = 'two'")
    assert one.execute_code("print(shared)").stdout == "one\n"
    assert two.execute_code("print(shared)").stdout == "two\n"
    assert one.container_id != two.container_id


# -- code-string custom tools -------------------------------------------------------------


def test_code_string_tools_are_defined_in_the_container(docker):
    env = docker(
        custom_tools={
            "square": "def square(x):\n    return x * x",
            "Pair": {"tool": "class Pair:\n    def __init__(self, a):\n        self.a = a"},
            "inc": "lambda x: x + 1",
            "CFG": {"vals": [1, 2, 3]},
            "NOTE": "Dear model,\nbe brief.",
        }
    )
    result = env.execute_code("print(square(CFG['vals'][2]), Pair(5).a, inc(1))\nprint(repr(NOTE))")
    assert result.stdout.splitlines() == ["9 5 2", repr("Dear model,\nbe brief.")], result.stderr


def test_code_string_tools_come_back_after_a_worker_restart(docker):
    env = docker(custom_tools={"square": "def square(x):\n    return x * x"})
    died = env.execute_code("import os\nos._exit(3)")
    assert died.error and "WorkerDied" in died.error
    assert env.execute_code("print(square(4))").stdout == "16\n"


def test_a_code_tool_that_fails_in_the_container_answers_with_its_error(docker):
    env = docker(custom_tools={"bad": "import not_a_module_here\ndef bad():\n    pass"})
    out = env.execute_code("print(bad())").stdout
    assert out.startswith("Error:") and "not_a_module_here" in out


def test_a_missing_image_says_how_to_build_one(docker):
    from rlm.environments.isolated import WorkerError

    with pytest.raises(DockerImageError, match="scripts/docker_image.sh") as info:
        docker(image="rlm-no-such-image:never-built", pull=False)
    assert "'rlm-no-such-image:never-built'" in str(info.value)
    assert "\n" not in str(info.value)
    # rlms raised RuntimeError for a container that did not start; a wrong image is also a
    # configuration error (ValueError) and a WorkerError.
    assert isinstance(info.value, (RuntimeError)) and isinstance(info.value, ValueError)
    assert isinstance(info.value, WorkerError)
