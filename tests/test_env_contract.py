"""The environment contract, said one way: capability attributes read by env_supports."""

from __future__ import annotations

import importlib

import pytest

from rlm.environments import (
    BaseEnv,
    LocalREPL,
    SupportsCustomTools,
    SupportsPersistence,
    available_environments,
    env_supports,
    supports_persistence,
)

CAPABILITIES = ("cell_timeout", "persistence", "compaction")


class Minimal(BaseEnv):
    def setup(self):
        pass

    def load_context(self, context_payload):
        pass

    def execute_code(self, code):
        raise NotImplementedError


class OldPersistent(Minimal):
    """Written before the attributes: it has the methods and says nothing."""

    def update_handler_address(self, address):
        pass

    def add_context(self, context_payload, context_index=None):
        return 0

    def get_context_count(self):
        return 1

    def add_history(self, message_history, history_index=None):
        return 0

    def get_history_count(self):
        return 0


def test_builtin_environments_declare_their_capabilities():
    env = LocalREPL()
    try:
        for capability in CAPABILITIES:
            assert env_supports(LocalREPL, capability) and env_supports(env, capability)
        assert isinstance(env, SupportsPersistence) and isinstance(env, SupportsCustomTools)
    finally:
        env.cleanup()


def test_an_environment_that_says_nothing_is_read_from_its_methods():
    assert not any(env_supports(Minimal, c) for c in CAPABILITIES)
    assert env_supports(OldPersistent, "persistence")
    assert isinstance(OldPersistent(), SupportsPersistence)
    assert not env_supports(OldPersistent, "cell_timeout")


def test_the_attribute_wins_over_the_methods():
    class Declined(OldPersistent):
        supports_persistence = False

    assert not env_supports(Declined, "persistence")


def test_an_unknown_capability_is_an_error():
    with pytest.raises(ValueError, match="persistence"):
        env_supports(LocalREPL, "persistance")


@pytest.mark.parametrize(
    ("name", "module", "cls"),
    [
        ("local", "rlm.environments.local_repl", "LocalREPL"),
        ("subprocess", "rlm.environments.subprocess_repl", "SubprocessREPL"),
        ("docker", "rlm.environments.docker_repl", "DockerREPL"),
        ("ipython", "rlm.environments.ipython_repl", "IPythonREPL"),
    ],
)
def test_the_registry_agrees_with_the_class(name, module, cls):
    assert name in available_environments()
    try:
        klass = getattr(importlib.import_module(module), cls)
    except ImportError as exc:  # an optional SDK
        pytest.skip(str(exc))
    assert supports_persistence(name) == env_supports(klass, "persistence")


# ---------------------------------------------------------------------------
# rlms' positional order (from the rlms 0.1.3 and 0.1.1 sdists)
# ---------------------------------------------------------------------------

#: Each rlms class's positional parameters, in order (0.1.1's are a prefix of 0.1.3's or
#: the same).
RLMS_POSITIONAL = {
    "LocalREPL": (
        "lm_handler_address", "context_payload", "setup_code", "persistent", "depth",
        "subcall_fn", "custom_tools", "custom_sub_tools", "compaction", "max_concurrent_subcalls",
    ),
    "DockerREPL": (
        "image", "lm_handler_address", "context_payload", "setup_code", "persistent", "depth",
        "subcall_fn", "custom_tools", "custom_sub_tools", "compaction", "max_concurrent_subcalls",
    ),
    "IPythonREPL": (
        "lm_handler_address", "context_payload", "setup_code", "persistent", "depth",
        "subcall_fn", "custom_tools", "custom_sub_tools", "kernel_mode", "cell_timeout",
        "startup_timeout", "subcall_timeout", "max_concurrent_subcalls",
    ),
    "ModalREPL": (
        "app_name", "image", "timeout", "lm_handler_address", "context_payload", "setup_code",
        "persistent", "depth",
    ),
    "E2BREPL": ("timeout", "lm_handler_address", "context_payload", "setup_code", "persistent"),
    "DaytonaREPL": (
        "api_key", "target", "name", "timeout", "cpu", "memory", "disk", "auto_stop_interval",
        "image", "lm_handler_address", "context_payload", "setup_code", "persistent", "depth",
        "custom_tools", "custom_sub_tools",
    ),
    "PrimeREPL": (
        "name", "docker_image", "timeout_minutes", "lm_handler_address", "context_payload",
        "setup_code", "network_access", "persistent", "depth",
    ),
}  # fmt: skip

MODULES = {
    "LocalREPL": "local_repl",
    "DockerREPL": "docker_repl",
    "IPythonREPL": "ipython_repl",
    "ModalREPL": "modal_repl",
    "E2BREPL": "e2b_repl",
    "DaytonaREPL": "daytona_repl",
    "PrimeREPL": "prime_repl",
}


def _class(name):
    return getattr(importlib.import_module(f"rlm.environments.{MODULES[name]}"), name)


@pytest.mark.parametrize("name", sorted(RLMS_POSITIONAL))
def test_positional_parameters_come_in_rlms_order(name):
    import inspect

    from rlm.environments.local_repl import ReplHost

    params = list(inspect.signature(_class(name).__init__).parameters.values())[1:]
    positional = [p for p in params if p.kind is p.POSITIONAL_OR_KEYWORD]
    rlms = RLMS_POSITIONAL[name]
    assert tuple(p.name for p in positional[: len(rlms)]) == rlms
    # The RLM's options default as ReplHost's do, wherever they are declared.
    host = inspect.signature(ReplHost.__init__).parameters
    for p in positional:
        if p.name in host:
            assert p.default == host[p.name].default, p.name
    if name != "LocalREPL" and name != "IPythonREPL":  # ours after rlms' are keyword-only
        assert len(positional) == len(rlms), [p.name for p in positional[len(rlms) :]]


def _check_built_positionally(env, handler_address, persistent=True, depth=2):
    """The options given positionally reached the environment."""
    try:
        assert env.lm_handler_address == handler_address
        assert (env.persistent, env.depth) == (persistent, depth)
        result = env.execute_code("print(context, seeded, llm_query('q'))")
        assert result.error is None, result.stderr
        assert result.stdout == "the context yes sub:q\n"
        return result
    finally:
        env.cleanup()


def test_local_and_ipython_repls_built_positionally_in_rlms_order(scripted_handler):
    from rlm.environments.ipython_repl import IPythonREPL

    address = scripted_handler().address
    seen = []
    tools = {"tool": {"tool": lambda: "t", "description": "a tool"}}
    env = LocalREPL(address, "the context", "seeded = 'yes'", True, 2, seen.append, tools)
    assert env.custom_tools == tools and env.subcall_fn == seen.append
    _check_built_positionally(env, address)
    env = LocalREPL(address, "the context", "seeded = 'yes'", True, 2, None, None, None, True, 7)
    assert env.compaction is True and env.max_concurrent_subcalls == 7
    _check_built_positionally(env, address)
    pytest.importorskip("IPython")
    env = IPythonREPL(
        address, "the context", "seeded = 'yes'", True, 2, None, None, None, "in_process", 30
    )
    assert env.kernel_mode == "in_process" and env.cell_timeout == 30
    _check_built_positionally(env, address)


def test_docker_repl_built_positionally_in_rlms_order(docker, scripted_handler):
    from rlm.environments.docker_repl import DockerREPL
    from tests.test_environments import DOCKER_IMAGE

    address = scripted_handler().address
    env = DockerREPL(
        DOCKER_IMAGE, address, "the context", "seeded = 'yes'", True, 2, None, None, None,
        True, 3,
    )  # fmt: skip
    assert env.image == DOCKER_IMAGE
    assert env.compaction is True and env.max_concurrent_subcalls == 3
    _check_built_positionally(env, address)
    with pytest.raises(TypeError):
        DockerREPL(DOCKER_IMAGE, None, None, None, False, 1, None, None, None, False, 4, "docker")


def test_cloud_repls_built_positionally_in_rlms_order(scripted_handler):
    from rlm.environments.daytona_repl import DaytonaREPL
    from rlm.environments.e2b_repl import E2BREPL
    from rlm.environments.modal_repl import ModalREPL
    from rlm.environments.prime_repl import PrimeREPL
    from tests.sandbox_fakes import FAKES

    address = scripted_handler().address
    ctx = ("the context", "seeded = 'yes'")

    sdk = FAKES["modal"]()
    env = ModalREPL("my-app", "python:3.12-slim", 321, address, *ctx, True, 2, sdk=sdk)
    _check_built_positionally(env, address)
    args = sdk.FAKE.sandboxes[0].create_args
    assert (args["timeout"], args["image"]) == (321, ("registry", "python:3.12-slim"))

    sdk = FAKES["e2b"]()
    env = E2BREPL(321, address, *ctx, True, sdk=sdk)
    _check_built_positionally(env, address, depth=1)
    assert sdk.FAKE.sandboxes[0].create_args["timeout"] == 321

    sdk = FAKES["daytona"]()
    tools = {"tool": {"tool": lambda: "t", "description": "a tool"}}
    env = DaytonaREPL(
        "dtn-test", "eu", "my-box", 45, 2, 4, 8, 0, "python:3.12-slim", address, *ctx, True, 2,
        tools, sdk=sdk,
    )  # fmt: skip
    assert env.cell_timeout == 45 and env.custom_tools == tools
    _check_built_positionally(env, address)
    args = sdk.FAKE.sandboxes[0].create_args
    assert vars(args["config"]) == {"api_key": "dtn-test", "target": "eu"}
    assert (args["name"], args["image"], vars(args["resources"])) == (
        "my-box",
        "python:3.12-slim",
        {"cpu": 2, "memory": 4, "disk": 8},
    )

    sdk = FAKES["prime"]()
    env = PrimeREPL("my-box", "python:3.12-slim", 15, address, *ctx, True, True, 2, sdk=sdk)
    _check_built_positionally(env, address)
    args = sdk.FAKE.sandboxes[0].create_args
    assert (args["name"], args["docker_image"], args["timeout_minutes"]) == (
        "my-box",
        "python:3.12-slim",
        15,
    )
    assert "network_allowlist" not in args  # network_access=True, the 7th positional
