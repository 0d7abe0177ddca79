"""`rlm run` prints model text safely: control characters escaped, secrets redacted (issue 10)."""

from __future__ import annotations

import pytest

import rlm.core.rlm as rlm_module
from rlm import cli
from rlm.clients.scripted import ScriptedLM
from rlm.utils.rlm_utils import REDACTED, register_secrets

HOSTILE = "\x1b[2J\x1b]0;owned\x07\x9b31m answer\r\n\tline two \x00"


@pytest.fixture
def scripted_answer(monkeypatch: pytest.MonkeyPatch, tmp_path):
    def install(text: str) -> None:
        def fake_get_client(backend, backend_kwargs):
            return ScriptedLM(responses=[f"FINAL({text})"] * 5, model_name="fake")

        monkeypatch.setattr(rlm_module, "get_client", fake_get_client)

    context = tmp_path / "ctx.txt"
    context.write_text("some context")
    return install, str(context)


def test_rlm_run_escapes_control_characters(scripted_answer, capsys):
    install, context = scripted_answer
    install(HOSTILE)
    code = cli.main(["run", "-q", "--backend", "openai", "--model", "m", "-c", context, "q?"])
    out = capsys.readouterr().out
    assert code == 0
    assert "\x1b" not in out and "\x07" not in out and "\x9b" not in out and "\x00" not in out
    assert "\\x1b[2J" in out and "\\x07" in out and "\\x9b" in out
    assert "answer\n\tline two" in out  # newlines and tabs stay


def test_rlm_run_redacts_registered_secrets(scripted_answer, capsys):
    install, context = scripted_answer
    register_secrets("sk-cli-secret-8675309")
    install("the key is sk-cli-secret-8675309")
    assert cli.main(["run", "-q", "--backend", "openai", "--model", "m", "-c", context, "q"]) == 0
    out = capsys.readouterr().out
    assert "sk-cli-secret-8675309" not in out and f"the key is {REDACTED}" in out
