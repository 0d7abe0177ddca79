"""`rlm run` as a user meets it: -m provider/model, --json, -o, RLM_* variables, the config
file, plain errors with documented exit codes, an empty context refused, prerequisites
checked before any download.

Provider errors come from a real loopback HTTP server speaking OpenAI's wire format
(401, 500) and from a port nobody listens on; the CLI runs in a subprocess so that what
the user sees (stderr, the exit status) is exactly what is checked.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from rlm import cli, cli_options
from rlm.clients import parse_model_string, resolve_model
from rlm.utils.exceptions import ConfigurationError

REPO = Path(__file__).resolve().parents[1]


class Stub(BaseHTTPRequestHandler):
    """POST /v1/chat/completions: ``server.status`` with an error body, or FINAL(42)."""

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.requests.append(body)
        status = self.server.status
        if status == 200:
            reply = {
                "id": "stub",
                "object": "chat.completion",
                "created": 0,
                "model": body["model"],
                "choices": [
                    {
                        "index": 0,
                        "finish_reason": "stop",
                        "message": {"role": "assistant", "content": "FINAL(42)"},
                    }
                ],
                "usage": {"prompt_tokens": 11, "completion_tokens": 3, "total_tokens": 14},
            }
        else:
            messages = {401: "Incorrect API key provided: sk-wrong", 500: "The server broke"}
            reply = {"error": {"message": messages.get(status, "no"), "type": "stub"}}
        data = json.dumps(reply).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def stub():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Stub)
    server.status = 200
    server.requests = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server, f"http://127.0.0.1:{server.server_port}/v1"
    server.shutdown()
    server.server_close()
    thread.join()


@pytest.fixture
def context(tmp_path):
    path = tmp_path / "ctx.txt"
    path.write_text("the answer is 42\n")
    return str(path)


def clean_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RLM_", "OPENAI_"))}
    env.update(XDG_CONFIG_HOME=str(tmp_path / "config"), OPENAI_API_KEY="sk-wrong")
    env.update(extra)
    return env


def rlm_cli(args, env, stdin=None):
    return subprocess.run(
        [sys.executable, "-m", "rlm", *args],
        env=env,
        cwd=REPO,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def assert_one_paragraph(stderr: str) -> None:
    assert "Traceback" not in stderr
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("rlm: error: "), stderr


# -- model strings ------------------------------------------------------------------


def test_model_strings_split_like_litellm():
    assert parse_model_string("openai/gpt-4o-mini") == ("openai", "gpt-4o-mini")
    assert parse_model_string("anthropic/claude-sonnet-4-5") == (
        "anthropic",
        "claude-sonnet-4-5",
    )
    assert parse_model_string("openrouter/meta/llama-3") == ("openrouter", "meta/llama-3")
    assert parse_model_string("litellm/groq/llama3") == ("litellm", "groq/llama3")
    assert parse_model_string("google/gemini-2.0-flash") == ("gemini", "gemini-2.0-flash")
    assert parse_model_string("local") == ("llama_cpp", None)
    # With a backend, the string is that backend's model name (its own prefix dropped).
    assert parse_model_string("Qwen/Qwen2.5-7B", backend="vllm") == ("vllm", "Qwen/Qwen2.5-7B")
    assert parse_model_string("vllm/Qwen/Qwen2.5-7B", backend="vllm") == (
        "vllm",
        "Qwen/Qwen2.5-7B",
    )
    assert resolve_model("openai/gpt-4o", backend_kwargs={"timeout": 5}) == (
        "openai",
        {"timeout": 5, "model_name": "gpt-4o"},
    )
    with pytest.raises(ConfigurationError, match="litellm/groq/x"):
        parse_model_string("groq/x")
    with pytest.raises(ConfigurationError, match="provider/model"):
        parse_model_string("gpt-4o")


# -- success paths: --json, -o, -m, environment and config file --------------------


def test_json_output_with_usage_and_log_path(stub, context, tmp_path):
    server, url = stub
    logs = tmp_path / "logs"
    proc = rlm_cli(
        ["run", "-m", "openai/stub-model", "--base-url", url, "-c", context, "--json"]
        + ["--log-dir", str(logs), "what is the answer?"],
        clean_env(tmp_path),
    )
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["answer"] == "42"
    assert data["backend"] == "openai" and data["root_model"] == "stub-model"
    assert (data["model_calls"], data["input_tokens"], data["output_tokens"]) == (1, 11, 3)
    assert "cost" in data and data["error"] is None
    assert Path(data["log_path"]).is_file() and Path(data["log_path"]).parent == logs
    assert server.requests[0]["model"] == "stub-model"


def test_output_file_and_options_from_environment_and_config(stub, context, tmp_path):
    server, url = stub
    config = tmp_path / "config" / "rlm" / "config.toml"
    config.parent.mkdir(parents=True)
    config.write_text(f'model = "openai/from-config"\nbase-url = "{url}"\ntemperature = 0.25\n')
    out = tmp_path / "answer.txt"
    env = clean_env(tmp_path, RLM_TEMPERATURE="0.75")
    proc = rlm_cli(["run", "-q", "-c", context, "-o", str(out), "q"], env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "" and out.read_text() == "42\n"
    body = server.requests[-1]
    # The config file gave the model and the server; the environment beat its temperature.
    assert body["model"] == "from-config" and body["temperature"] == 0.75
    # The command line beats both.
    proc = rlm_cli(["run", "-q", "-c", context, "-m", "openai/cli", "--temperature", "0", "q"], env)
    assert proc.returncode == 0, proc.stderr
    assert (server.requests[-1]["model"], server.requests[-1]["temperature"]) == ("cli", 0)


def test_a_bad_config_file_is_a_usage_error(tmp_path, context):
    bad = tmp_path / "bad.toml"
    bad.write_text("max_iterations = 3\nmodle = 'x'\n")
    proc = rlm_cli(["run", "-c", context, "q"], clean_env(tmp_path, RLM_CONFIG=str(bad)))
    assert proc.returncode == cli_options.EXIT_USAGE
    assert_one_paragraph(proc.stderr)
    assert "unknown key 'modle'" in proc.stderr


# -- provider and configuration failures ------------------------------------------


@pytest.mark.parametrize("status, words", [(401, "refused the credentials"), (500, "HTTP 500")])
def test_provider_http_errors_are_one_paragraph(stub, context, tmp_path, status, words):
    server, url = stub
    server.status = status
    args = ["run", "-m", "openai/stub", "--base-url", url, "-c", context, "q"]
    proc = rlm_cli(args, clean_env(tmp_path))
    assert proc.returncode == cli_options.EXIT_PROVIDER, proc.stderr
    assert_one_paragraph(proc.stderr)
    assert words in proc.stderr
    if status == 401:
        assert "Incorrect API key" in proc.stderr and "API key" in proc.stderr
    # --debug adds the traceback, and the same paragraph ends it.
    debug = rlm_cli(["--debug", *args], clean_env(tmp_path))
    assert debug.returncode == cli_options.EXIT_PROVIDER
    assert "Traceback" in debug.stderr and debug.stderr.strip().splitlines()[-1].startswith(
        "rlm: error: "
    )


def test_a_refused_connection_is_one_paragraph(context, tmp_path):
    url = f"http://127.0.0.1:{free_port()}/v1"
    proc = rlm_cli(
        ["run", "-m", "openai/x", "--base-url", url, "-c", context, "q"], clean_env(tmp_path)
    )
    assert proc.returncode == cli_options.EXIT_PROVIDER, proc.stderr
    assert_one_paragraph(proc.stderr)
    assert "could not be reached" in proc.stderr and "--base-url" in proc.stderr


def test_configuration_errors_exit_3(context, tmp_path):
    proc = rlm_cli(["run", "-m", "nosuch/model", "-c", context, "q"], clean_env(tmp_path))
    assert proc.returncode == cli_options.EXIT_CONFIG
    assert_one_paragraph(proc.stderr)
    proc = rlm_cli(
        ["run", "-m", "local", "-c", context, "q"],
        clean_env(tmp_path, RLM_LOCAL_MODEL=str(tmp_path / "missing.gguf")),
    )
    assert proc.returncode == cli_options.EXIT_CONFIG
    assert_one_paragraph(proc.stderr)
    assert "RLM_LOCAL_MODEL" in proc.stderr and "missing.gguf" in proc.stderr


@pytest.mark.parametrize("stdin", ["", "  \n\n"])
def test_an_empty_context_is_refused(tmp_path, stdin):
    proc = rlm_cli(["run", "q"], clean_env(tmp_path), stdin=stdin)
    assert proc.returncode == cli_options.EXIT_USAGE
    assert_one_paragraph(proc.stderr)
    assert "context is empty" in proc.stderr


def test_an_empty_context_file_is_refused(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    assert cli.main(["run", "-c", str(empty), "q"]) == cli_options.EXIT_USAGE


# -- prerequisites before any download ----------------------------------------------

NO_LLAMA = (
    "import sys; sys.modules['llama_cpp'] = None; from rlm.cli import main; "
    "sys.exit(main(sys.argv[1:]))"
)


def test_missing_llama_cpp_is_reported_before_any_download(tmp_path, context):
    models = tmp_path / "models"
    env = clean_env(tmp_path, RLM_MODEL_DIR=str(models), PIP_INDEX_URL="http://127.0.0.1:9/")
    env.pop("OPENAI_API_KEY")
    proc = subprocess.run(
        [sys.executable, "-c", NO_LLAMA, "run", "-c", context, "q"],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == cli_options.EXIT_CONFIG, proc.stderr
    assert_one_paragraph(proc.stderr)
    assert "llama-cpp-python" in proc.stderr and "Fetching" not in proc.stderr
    assert not models.exists()  # nothing was downloaded, not even a folder made


def test_too_little_disk_space_is_reported_before_any_download(tmp_path, monkeypatch):
    import shutil

    pytest.importorskip("llama_cpp")
    monkeypatch.delenv("RLM_LOCAL_MODEL", raising=False)
    monkeypatch.setenv("RLM_MODEL_DIR", str(tmp_path / "models"))
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage._replace(free=10_000_000))
    with pytest.raises(ConfigurationError, match="GB free"):
        cli_options.check_local_model_prerequisites()
    assert not (tmp_path / "models").exists()


def test_exit_codes_are_documented():
    text = cli.build_parser().format_help()
    for code in cli_options.EXIT_CODES:
        assert str(code) in text


def test_model_path_says_when_rlm_local_model_is_wrong(tmp_path):
    proc = rlm_cli(["model-path"], clean_env(tmp_path, RLM_LOCAL_MODEL=str(tmp_path / "x.gguf")))
    assert proc.returncode == cli_options.EXIT_CONFIG
    assert_one_paragraph(proc.stderr)
    assert "RLM_LOCAL_MODEL" in proc.stderr and "not a file" in proc.stderr


# -- how commands are documented ------------------------------------------------------


def test_each_command_is_documented_by_its_handlers_docstring():
    parser = cli.build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    helps = {action.dest: action.help for action in commands._choices_actions}
    for name, sub in commands.choices.items():
        handler = sub.get_default("handler")
        first, _, rest = inspect.cleandoc(handler.__doc__).partition("\n\n")
        assert helps[name] == " ".join(first.split()), name
        assert sub.description and sub.description.startswith(" ".join(rest.split())[:40]), name
    assert "'rlm.backends'" in commands.choices["backends"].description  # the group, formatted


def test_the_commands_still_parse_when_docstrings_are_stripped(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-OO", "-m", "rlm", "backends", "--help"],
        env=clean_env(tmp_path),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "--json" in proc.stdout
