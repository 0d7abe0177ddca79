"""The embedded offline model: llama.cpp in this process (``backend="llama_cpp"``).

Needs the ``local`` extra (``pip install "rlm[local]"``) and a GGUF file:
by default the verified Qwen2.5-Coder-1.5B-Instruct from
``python -m rlm fetch-model`` (see :mod:`rlm.local_model`), or any GGUF file
given as ``model_path`` or ``$RLM_LOCAL_MODEL``.

Loading weights takes seconds and a client is built for every
``completion()``, so loaded models are shared process-wide, keyed by
``(path, n_ctx, n_threads)``; calls into one model are serialised with a lock
because a llama.cpp context is not thread-safe. Sharing also keeps the
model's KV cache warm: a prompt that starts like the previous one (the same
system prompt, a growing conversation) only evaluates its new tokens.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlm.clients.base_lm import DEFAULT_TIMEOUT, BaseLM, Generation, Messages
from rlm.utils.exceptions import ConfigurationError, RLMError

_INSTALL_HINT = (
    'install it with: CMAKE_ARGS="-DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF" '
    'pip install --no-cache-dir "rlm[local]"'
)

#: Sampling arguments passed through to ``Llama.create_chat_completion``.
SAMPLING_KEYS = frozenset(
    {
        "max_tokens",
        "temperature",
        "top_p",
        "top_k",
        "min_p",
        "seed",
        "stop",
        "presence_penalty",
        "frequency_penalty",
        "repeat_penalty",
    }
)
#: The smallest context window llama.cpp honours.
MIN_N_CTX = 256
#: OpenAI spellings accepted for the same thing.
_ALIASES = {"max_completion_tokens": "max_tokens"}

_CONTEXT_RE = re.compile(r"Requested tokens \((\d+)\) exceed context window of (\d+)")
_QUANT_RE = re.compile(r"[-._](?:i?q\d[\w]*|f16|f32|bf16)$", re.IGNORECASE)


class ContextWindowExceededError(RLMError, ValueError):
    """The prompt does not fit in the model's context window (``n_ctx``)."""

    def __init__(self, prompt_tokens: int | None, n_ctx: int, model: str):
        self.prompt_tokens = prompt_tokens
        self.n_ctx = n_ctx
        counted = f"{prompt_tokens:,} tokens" if prompt_tokens is not None else "more tokens"
        super().__init__(
            f"The prompt has {counted} but the local model {model!r} was loaded with a "
            f"context window of n_ctx={n_ctx:,} tokens; shorten the prompt or raise n_ctx "
            "in backend_kwargs."
        )


def _import_llama_cpp() -> Any:
    try:
        import llama_cpp
    except ImportError as exc:
        raise ConfigurationError(
            f"backend='llama_cpp' needs the llama-cpp-python package ({exc}); {_INSTALL_HINT}"
        ) from exc
    return llama_cpp


@dataclass
class _LoadedModel:
    llama: Any
    lock: threading.Lock = field(default_factory=threading.Lock)


_MODELS: dict[tuple[str, int, int], _LoadedModel] = {}
_MODELS_LOCK = threading.Lock()


def load_llama(model_path: str | os.PathLike[str], n_ctx: int, n_threads: int) -> _LoadedModel:
    """The shared loaded model for these settings, loading it on first use."""
    key = (str(Path(model_path).resolve()), int(n_ctx), int(n_threads))
    with _MODELS_LOCK:
        loaded = _MODELS.get(key)
        if loaded is not None:
            return loaded
        llama_cpp = _import_llama_cpp()
        try:
            llama = llama_cpp.Llama(
                model_path=key[0],
                n_ctx=key[1],
                n_threads=key[2],
                n_threads_batch=key[2],
                verbose=False,
            )
        except (ValueError, RuntimeError, OSError) as exc:
            raise ConfigurationError(
                f"llama.cpp could not load the model {key[0]} ({exc}); is it a complete GGUF file?"
            ) from exc
        if not _MODELS:
            atexit.unregister(_close_at_exit)  # once, however often models are loaded
            atexit.register(_close_at_exit)
        loaded = _MODELS[key] = _LoadedModel(llama)
        return loaded


def unload_models() -> None:
    """Forget every shared loaded model; its memory is freed once no client holds it."""
    with _MODELS_LOCK:
        _MODELS.clear()


def _close_at_exit() -> None:
    # Free the weights while the interpreter is intact: Llama.__del__ running
    # during interpreter teardown prints "'NoneType' object is not callable".
    with _MODELS_LOCK:
        models = list(_MODELS.values())
        _MODELS.clear()
    for loaded in models:
        close = getattr(loaded.llama, "close", None)
        if close is not None:
            with contextlib.suppress(Exception):
                close()


def model_name_from_path(path: str | os.PathLike[str]) -> str:
    """``.../qwen2.5-coder-1.5b-instruct-q4_k_m.gguf`` -> ``qwen2.5-coder-1.5b-instruct``."""
    stem = Path(path).name
    if stem.lower().endswith(".gguf"):
        stem = stem[: -len(".gguf")]
    return _QUANT_RE.sub("", stem) or stem


def _plain_messages(messages: Messages) -> list[dict[str, str]]:
    """Role and text content only: the chat template renders nothing else."""
    plain = []
    for message in messages:
        content = message.get("content", "")
        if content is None:
            content = ""
        elif isinstance(content, list):
            # OpenAI content parts: keep the text parts.
            texts = [p.get("text", "") for p in content if isinstance(p, dict)]
            content = "\n".join(t for t in texts if t) if any(texts) else json.dumps(content)
        elif not isinstance(content, str):
            content = json.dumps(content, ensure_ascii=False, default=repr)
        plain.append({"role": str(message.get("role", "user")), "content": content})
    return plain


class LlamaCppClient(BaseLM):
    """A GGUF model run in-process by llama.cpp; every call is free (``is_local``).

    ``timeout`` is accepted for symmetry with the other clients but not
    enforced: a llama.cpp call cannot be interrupted. Bound generation with
    ``sampling_args={"max_tokens": N}`` instead (unset, it may run to ``n_ctx``).
    """

    is_local = True

    def __init__(
        self,
        model_path: str | os.PathLike[str] | None = None,
        model_name: str | None = None,
        n_ctx: int = 8192,
        n_threads: int | None = None,
        sampling_args: dict[str, Any] | None = None,
        timeout: float | None = DEFAULT_TIMEOUT,
        **kwargs: Any,
    ):
        from rlm.local_model import find_model

        _import_llama_cpp()  # fail now, in plain words, if the extra is missing
        if model_path is None:
            found = find_model()
            if found is None:
                explicit = os.environ.get("RLM_LOCAL_MODEL")
                if explicit:
                    raise ConfigurationError(
                        f"RLM_LOCAL_MODEL is set to {explicit!r}, which is not a file"
                    )
                raise ConfigurationError(
                    "No local model found for backend='llama_cpp'. Download it once with: "
                    "python -m rlm fetch-model   (or pass backend_kwargs={'model_path': ...})"
                )
            model_path = found
        path = Path(model_path).expanduser()
        if not path.is_file():
            raise ConfigurationError(f"The local model file {str(path)!r} does not exist")

        sampling = {"temperature": 0.0}
        for key, value in (sampling_args or {}).items():
            key = _ALIASES.get(key, key)
            if key not in SAMPLING_KEYS:
                raise ConfigurationError(
                    f"backend='llama_cpp' does not support the sampling argument {key!r}; "
                    f"supported: {', '.join(sorted(SAMPLING_KEYS))}"
                )
            sampling[key] = value
        if isinstance(sampling.get("stop"), str):
            sampling["stop"] = [sampling["stop"]]

        super().__init__(
            model_name=model_name or model_name_from_path(path),
            timeout=timeout,
            sampling_args=sampling,
            **kwargs,
        )
        self.model_path = path
        self.n_ctx = int(n_ctx)
        self.context_window = self.n_ctx
        self.n_threads = int(n_threads or os.cpu_count() or 1)
        if self.n_ctx < MIN_N_CTX:
            # llama.cpp silently raises smaller windows to 256 while the Python
            # side keeps the small value, which breaks generation.
            raise ConfigurationError(f"n_ctx must be at least {MIN_N_CTX} (got {self.n_ctx})")
        if self.n_threads <= 0:
            raise ConfigurationError(f"n_threads must be positive (got {self.n_threads})")
        self._loaded: _LoadedModel | None = None

    def _model(self) -> _LoadedModel:
        if self._loaded is None:
            self._loaded = load_llama(self.model_path, self.n_ctx, self.n_threads)
        return self._loaded

    def _generate(self, messages: Messages, model: str | None = None) -> Generation:
        loaded = self._model()
        name = model or self.model_name
        with loaded.lock:
            try:
                response = loaded.llama.create_chat_completion(
                    messages=_plain_messages(messages), **self.sampling_args
                )
            except ValueError as exc:
                match = _CONTEXT_RE.search(str(exc))
                if match or "context window" in str(exc):
                    prompt_tokens = int(match.group(1)) if match else None
                    n_ctx = int(match.group(2)) if match else self.n_ctx
                    raise ContextWindowExceededError(prompt_tokens, n_ctx, name) from exc
                raise
        choices = response.get("choices") or [{}]
        text = (choices[0].get("message") or {}).get("content") or ""
        usage = response.get("usage") or {}
        return Generation(
            text=text,
            model=name,
            input_tokens=int(usage.get("prompt_tokens") or 0),
            output_tokens=int(usage.get("completion_tokens") or 0),
            cost=None,
        )

    def close(self) -> None:
        # The weights stay loaded for the next client; unload_models() frees them.
        self._loaded = None

    def __repr__(self) -> str:
        return (
            f"LlamaCppClient(model_name={self.model_name!r}, model_path={str(self.model_path)!r})"
        )


__all__ = [
    "ContextWindowExceededError",
    "LlamaCppClient",
    "load_llama",
    "model_name_from_path",
    "unload_models",
]
