"""The cloud sandbox adapters (modal, e2b, daytona, prime): lifecycle, errors, live runs.

The shared behaviour suite runs on them in tests/test_environments.py through local
stand-ins of their SDKs (tests/sandbox_fakes.py). Here: the sandbox is always
terminated (cleanup, a failed start, an interrupted start, an interrupted run), a
missing SDK or missing credentials give one clear ConfigurationError, and a live
smoke test runs against each real service when its credentials are set.
"""

from __future__ import annotations

import importlib.util
import os

import pytest

from rlm import RLM
from rlm.environments import get_environment
from rlm.utils.exceptions import CancellationError, ConfigurationError
from tests.sandbox_fakes import FAKES

CLOUD = list(FAKES)
CREDENTIALS = {
    "modal": ["MODAL_TOKEN_ID", "MODAL_TOKEN_SECRET"],
    "e2b": ["E2B_API_KEY"],
    "daytona": ["DAYTONA_API_KEY"],
    "prime": ["PRIME_API_KEY"],
}
SDK_MODULES = {"modal": "modal", "e2b": "e2b", "daytona": "daytona", "prime": "prime_sandboxes"}


@pytest.fixture(params=CLOUD)
def service(request):
    return request.param


def test_sandbox_is_terminated_on_cleanup(service):
    sdk = FAKES[service]()
    env = get_environment(service, {"sdk": sdk, "context_payload": "ctx"})
    assert env.execute_code("print(context)").stdout == "ctx\n"
    assert len(sdk.FAKE.sandboxes) == 1 and not sdk.FAKE.sandboxes[0].terminated
    env.cleanup()
    assert sdk.FAKE.all_terminated()


def test_sandbox_is_terminated_when_start_fails(service):
    sdk = FAKES[service]()
    sdk.FAKE.fail_after_create = RuntimeError("the service refused to start the process")
    with pytest.raises(RuntimeError, match="refused"):
        get_environment(service, {"sdk": sdk})
    assert len(sdk.FAKE.sandboxes) == 1
    assert sdk.FAKE.all_terminated()


def test_sandbox_is_terminated_when_start_is_interrupted(service):
    sdk = FAKES[service]()
    sdk.FAKE.fail_after_create = KeyboardInterrupt()
    with pytest.raises(KeyboardInterrupt):
        get_environment(service, {"sdk": sdk})
    assert sdk.FAKE.all_terminated()


def test_sandbox_is_terminated_when_a_run_is_interrupted(service):
    sdk = FAKES[service]()
    answers = iter(["```repl\nx = 1\n```"])

    def root(messages):
        answer = next(answers, None)
        if answer is None:
            raise KeyboardInterrupt  # Ctrl-C while the model is being asked
        return answer

    rlm = RLM(
        backend="scripted",
        backend_kwargs={"responses": root},
        environment=service,
        environment_kwargs={"sdk": sdk},
    )
    with pytest.raises(CancellationError):  # the run's report of the Ctrl-C
        rlm.completion("ctx")
    assert len(sdk.FAKE.sandboxes) == 1
    assert sdk.FAKE.all_terminated()


def test_worker_restart_replaces_the_sandbox(service):
    sdk = FAKES[service]()
    env = get_environment(service, {"sdk": sdk, "context_payload": "ctx"})
    try:
        assert env.execute_code("import os\nos._exit(1)").error.startswith("WorkerDied")
        assert env.execute_code("print(context)").stdout == "ctx\n"
    finally:
        env.cleanup()
    assert len(sdk.FAKE.sandboxes) == 2
    assert sdk.FAKE.all_terminated()


def test_missing_credentials_name_the_variable(service, monkeypatch, tmp_path):
    for name in (*CREDENTIALS[service], "DAYTONA_JWT_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.modal.toml or ~/.prime/config.json
    with pytest.raises(ConfigurationError, match=CREDENTIALS[service][0]):
        get_environment(service, {})


def test_missing_sdk_names_the_extra(service, monkeypatch):
    if importlib.util.find_spec(SDK_MODULES[service]) is not None:
        pytest.skip(f"the {SDK_MODULES[service]} SDK is installed here")
    for name in CREDENTIALS[service]:
        monkeypatch.setenv(name, "dummy")
    with pytest.raises(ConfigurationError, match=rf'pip install "rlm\[{service}\]"') as info:
        get_environment(service, {})
    assert "\n" not in str(info.value)


def test_unknown_option_is_refused_at_construction(service):
    with pytest.raises(ConfigurationError, match="bogus"):
        RLM(
            backend="scripted",
            backend_kwargs={"responses": ["x"]},
            environment=service,
            environment_kwargs={"bogus": 1},
        )


@pytest.mark.parametrize("live", CLOUD)
def test_live_service(live, scripted_handler):
    """Against the real service; runs only where its credentials are set."""
    missing = [name for name in CREDENTIALS[live] if not os.environ.get(name)]
    if missing:
        pytest.skip(f"live {live}: {', '.join(missing)} not set")
    if importlib.util.find_spec(SDK_MODULES[live]) is None:
        pytest.skip(f'live {live}: pip install "rlm[{live}]"')
    handler = scripted_handler(sub_responses=lambda m: "pong")
    env = get_environment(
        live, {"lm_handler_address": handler.address, "context_payload": {"n": 41}}
    )
    try:
        result = env.execute_code("print(context['n'] + 1, llm_query('ping'))")
        assert result.stdout == "42 pong\n", result.stderr
        result = env.execute_code("while True: pass", timeout=1)
        assert result.error.startswith("TimeoutError")
        assert (
            env.execute_code("answer['content'] = 'ok'; answer['ready'] = True").final_answer
            == "ok"
        )
    finally:
        env.cleanup()
