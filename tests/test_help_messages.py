"""Messages that point users the right way (issue 14): a sampling argument given as a
client option names ``sampling_args``; private SDK options are not listed."""

from __future__ import annotations

import pytest

from rlm.clients import get_client
from rlm.utils.exceptions import ConfigurationError


@pytest.mark.parametrize("backend", ["openai", "vllm", "anthropic"])
def test_temperature_in_backend_kwargs_points_to_sampling_args(backend):
    kwargs = {"model_name": "m", "api_key": "k", "base_url": "http://127.0.0.1:9/v1"}
    if backend == "anthropic":
        kwargs.pop("base_url")
    with pytest.raises(ConfigurationError) as caught:
        get_client(backend, {**kwargs, "temperature": 0.5})
    message = str(caught.value)
    assert "sampling_args" in message and "'temperature': 0.5" in message
    assert "_strict_response_validation" not in message


def test_an_unknown_option_lists_only_public_sdk_options():
    with pytest.raises(ConfigurationError) as caught:
        get_client("openai", {"model_name": "m", "api_key": "k", "no_such_option": 1})
    message = str(caught.value)
    assert "no_such_option" in message and "organization" in message
    assert "_enforce_credentials" not in message
