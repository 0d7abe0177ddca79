"""Secrets are redacted by value wherever they would be logged; log files are 0600 (issue 10)."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

from rlm import RLM
from rlm.logger import RLMLogger
from rlm.utils.rlm_utils import (
    REDACTED,
    collect_secrets,
    filter_sensitive_keys,
    is_sensitive_key,
    redact,
    redact_text,
    register_secrets,
)


def test_names_are_matched_as_words():
    for name in (
        "api_key",
        "x-api-key",
        "apiKey",
        "virtual_key",
        "Authorization",
        "auth_token",
        "password",
        "client_secret",
        "Cookie",
        "key",
    ):
        assert is_sensitive_key(name), name
    for name in (
        "max_tokens",
        "max_completion_tokens",
        "prompt_cache_key",
        "model_name",
        "base_url",
        "timeout",
        "tokenizer_model",
        "monkey",
    ):
        assert not is_sensitive_key(name), name
    assert filter_sensitive_keys({"api_key": "k", "max_tokens": 5}) == {"max_tokens": 5}


def test_collect_secrets_finds_every_kind_the_issue_lists():
    backend_kwargs = {
        "model_name": "m",
        "api_key": "sk-key-000111",
        "base_url": "https://alice:url-pass-222@gw.example/v1?sig=query-sig-333",
        "default_headers": {"X-Custom-Auth": "header-val-444", "Cookie": "sess=cookie-555"},
        "default_query": {"signed": "dq-value-666"},
        "virtual_key": "pk-virtual-777",
        "max_tokens": 256,
    }
    environment_kwargs = {
        "setup_code": (
            "import os\n"
            "SERVICE_TOKEN = 'setup-tok-888'\n"
            "os.environ['DB_PASSWORD'] = 'setup-pw-999'\n"
            "client = make(api_key='setup-kw-000')\n"
            "n = 'not-a-secret-value'\n"
        ),
    }
    found = collect_secrets(backend_kwargs, [environment_kwargs])
    for value in (
        "sk-key-000111",
        "url-pass-222",
        "query-sig-333",
        "header-val-444",
        "sess=cookie-555",
        "dq-value-666",
        "pk-virtual-777",
        "setup-tok-888",
        "setup-pw-999",
        "setup-kw-000",
    ):
        assert value in found, value
    assert "not-a-secret-value" not in found and "m" not in found


def test_redact_by_value_keeps_settings():
    config = {
        "model_name": "visible",
        "max_tokens": 512,
        "api_key": "sk-redact-abcdef",
        "base_url": "https://bob:pw-redact-1@gw.example/v1?token=qs-redact-2",
        "extra": ["mentions sk-redact-abcdef inside a list", {"deep": "pw-redact-1 here"}],
        "default_headers": {"X-Auth": "1"},  # short: redacted where it stands
    }
    secrets = collect_secrets(config)
    out = redact(config, secrets)
    assert out["model_name"] == "visible" and out["max_tokens"] == 512
    assert out["api_key"] == REDACTED
    assert out["base_url"] == f"https://{REDACTED}@gw.example/v1?token={REDACTED}"
    assert out["extra"] == [f"mentions {REDACTED} inside a list", {"deep": f"{REDACTED} here"}]
    assert out["default_headers"] == {"X-Auth": REDACTED}
    text = json.dumps(out)
    for value in secrets:
        assert value not in text or len(value) < 6
    assert config["api_key"] == "sk-redact-abcdef"  # the input is not modified


def test_registered_secrets_are_redacted_in_any_text():
    register_secrets("registered-secret-4242")
    assert redact_text("x registered-secret-4242 y") == f"x {REDACTED} y"
    assert redact({"stdout": "registered-secret-4242"}) == {"stdout": REDACTED}


def test_a_secret_printed_by_model_code_never_reaches_the_log(tmp_path):
    secret = "sk-printed-by-model-31337"
    code = "```repl\nprint('leak:', SERVICE_API_KEY)\nanswer['content'] = 'done'\nanswer['ready'] = True\n```"
    logger = RLMLogger(log_dir=tmp_path)
    rlm = RLM(
        backend="scripted",
        backend_kwargs={"responses": [code]},
        environment_kwargs={"setup_code": f"SERVICE_API_KEY = {secret!r}"},
        logger=logger,
    )
    result = rlm.completion("go")
    assert result.response == "done"
    text = Path(logger.log_file_path).read_text(encoding="utf-8")
    assert secret not in text
    assert f"leak: {REDACTED}" in text
    assert secret not in json.dumps(result.metadata, default=repr)
    mode = stat.S_IMODE(os.stat(logger.log_file_path).st_mode)
    assert mode == 0o600, oct(mode)


def test_log_file_is_created_0600_even_with_a_permissive_umask(tmp_path):
    old = os.umask(0)
    try:
        logger = RLMLogger(log_dir=tmp_path, file_name="perm")
        from rlm.core.types import RLMMetadata

        logger.log_metadata(
            RLMMetadata(
                root_model="m",
                max_depth=1,
                max_iterations=1,
                backend="scripted",
                backend_kwargs={"max_tokens": 9, "api_key": "sk-meta-123456"},
                environment_type="local",
                environment_kwargs={},
                other_backends=None,
            )
        )
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(logger.log_file_path).st_mode) == 0o600
    meta = json.loads(Path(logger.log_file_path).read_text().splitlines()[0])
    assert meta["backend_kwargs"] == {"max_tokens": 9, "api_key": REDACTED}
