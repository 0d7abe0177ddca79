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


# ---------------------------------------------------------------------------
# rlms' option names (issue 9, item 5): each reaches the service as our equivalent
# ---------------------------------------------------------------------------


def _created(service: str, **options):
    """Build ``service`` with ``options``; the create arguments its fake SDK received."""
    sdk = FAKES[service]()
    env = get_environment(service, {"sdk": sdk, **options})
    try:
        assert env.execute_code("print(6 * 7)").stdout == "42\n"
        return env, sdk.FAKE.sandboxes[0].create_args
    finally:
        env.cleanup()


@pytest.mark.parametrize("service", ["modal", "e2b"])
def test_rlms_timeout_is_the_sandbox_lifetime(service):
    _, args = _created(service, timeout=321)
    assert args["timeout"] == 321
    _, args = _created(service)
    assert args["timeout"] == 3600  # ours when neither is given
    with pytest.raises(ConfigurationError, match="timeout=5.*lifetime=6"):
        get_environment(service, {"sdk": FAKES[service](), "timeout": 5, "lifetime": 6})


def test_modal_takes_an_image_object_as_rlms_does():
    built = object()  # a modal.Image the caller built
    _, args = _created("modal", image=built)
    assert args["image"] is built
    _, args = _created("modal", image="python:3.12-slim")
    assert args["image"] == ("registry", "python:3.12-slim")


def test_daytona_takes_rlms_options():
    env, args = _created(
        "daytona",
        api_key="dtn-test",
        target="eu",
        name="my-box",
        image="python:3.12-slim",
        cpu=2,
        memory=4,
        disk=8,
        auto_stop_interval=0,
        timeout=45,
    )
    assert vars(args["config"]) == {"api_key": "dtn-test", "target": "eu"}
    assert args["kind"] == "image" and args["image"] == "python:3.12-slim"
    assert vars(args["resources"]) == {"cpu": 2, "memory": 4, "disk": 8}
    assert (args["name"], args["auto_stop_interval"]) == ("my-box", 0)
    assert args["network_block_all"] is True and args["ephemeral"] is True
    assert env.cell_timeout == 45  # rlms' per-execution timeout
    assert "api_key" not in env.isolation  # credentials are never reported


def test_daytona_api_key_replaces_the_variable(monkeypatch):
    for name in ("DAYTONA_API_KEY", "DAYTONA_JWT_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ConfigurationError, match="DAYTONA_API_KEY"):
        get_environment("daytona", {})
    # With api_key= the credential check passes; the next thing needed is the SDK itself.
    if importlib.util.find_spec("daytona") is None:
        with pytest.raises(ConfigurationError, match=r'pip install "rlm\[daytona\]"'):
            get_environment("daytona", {"api_key": "dtn-test"})


def test_daytona_default_is_a_snapshot_sandbox():
    _, args = _created("daytona")
    assert args["kind"] == "snapshot" and "resources" not in args and "name" not in args
    assert args["config"] is None


def test_prime_takes_rlms_options():
    _, args = _created("prime", name="my-box", docker_image="python:3.12-slim", timeout_minutes=15)
    assert (args["name"], args["docker_image"], args["timeout_minutes"]) == (
        "my-box",
        "python:3.12-slim",
        15,
    )
    assert args["network_allowlist"] == []  # no egress unless asked for
    _, args = _created("prime", network_access=True)
    assert "network_allowlist" not in args and args["name"].startswith("rlm-")


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
