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
