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

A native call can be stopped. Every loaded model gets a llama.cpp abort
callback that reads one byte of memory (it is the C library's ``strlen``, so
no Python runs inside the compute graph and the GIL is never taken there):
setting that byte makes the running ``llama_decode`` return within one graph
node. That is how a call ends

* when a call's own ``timeout`` passes (:class:`GenerationAbortedError`);
* on Ctrl-C in the thread that called it (``KeyboardInterrupt`` after the
  native call has returned);
* on :meth:`LlamaCppClient.cancel` or :func:`abort_running`, e.g. for a call
  that a run abandoned at its ``max_timeout``;
* and at interpreter exit: an ``atexit`` hook stops every running call, waits
  for it to return and only then frees the weights. Without it a call still
  running in a daemon thread when the process exits crashes in
  ``libggml-cpu.so`` (exit -11).
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import ctypes.util
import json
import logging
import os
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlm.clients.base_lm import BaseLM, Generation, Messages, with_stop
from rlm.utils.exceptions import ConfigurationError, ContextOverflowError, RLMError

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


class ContextWindowExceededError(ContextOverflowError, ValueError):
    """The prompt does not fit in the model's context window (``n_ctx``, also ``window``)."""

    def __init__(self, prompt_tokens: int | None, n_ctx: int, model: str):
        self.prompt_tokens = prompt_tokens
        self.n_ctx = self.window = n_ctx
        counted = f"{prompt_tokens:,} tokens" if prompt_tokens is not None else "more tokens"
        super().__init__(
            f"The prompt has {counted} but the local model {model!r} was loaded with a "
            f"context window of n_ctx={n_ctx:,} tokens; shorten the prompt or raise n_ctx "
            "in backend_kwargs."
        )


class GenerationAbortedError(RLMError, RuntimeError):
    """A llama.cpp call was stopped before it finished: its ``timeout`` passed, it was
    cancelled (:meth:`LlamaCppClient.cancel`, :func:`abort_running`) or the process is
    exiting."""


#: How long the exit hook waits for a stopped call to return (it takes one graph node).
EXIT_JOIN_TIMEOUT = 30.0


def _import_llama_cpp() -> Any:
    try:
        import llama_cpp
    except ImportError as exc:
        raise ConfigurationError(
            f"backend='llama_cpp' needs the llama-cpp-python package ({exc}); {_INSTALL_HINT}"
        ) from exc
    return llama_cpp


def _native_abort_callback(llama_cpp: Any) -> Any:
    """``strlen`` as a ``ggml_abort_callback``: true exactly when the flag's first byte is
    set. A C function, so checking it costs nothing and never takes the GIL."""
    libc = ctypes.CDLL(ctypes.util.find_library("c") or None)
    return ctypes.cast(libc.strlen, llama_cpp.ggml_abort_callback)


@dataclass
class _LoadedModel:
    llama: Any
    lock: threading.Lock = field(default_factory=threading.Lock)
    #: Two bytes read by the native abort callback: b"\1\0" stops the running call.
    flag: Any = field(default_factory=lambda: ctypes.create_string_buffer(2))
    callback: Any = None  # kept referenced for as long as the context lives
    #: The client whose call holds ``lock`` now, and why it was stopped (None: not stopped).
    owner: Any = None
    reason: str | None = None

    def install_abort(self, llama_cpp: Any) -> bool:
        ctx = getattr(getattr(self.llama, "_ctx", None), "ctx", None)
        if ctx is None or not hasattr(llama_cpp, "llama_set_abort_callback"):
            return False
        self.callback = _native_abort_callback(llama_cpp)
        llama_cpp.llama_set_abort_callback(
            ctx, self.callback, ctypes.cast(self.flag, ctypes.c_void_p)
        )
        return True

    def abort(self, reason: str) -> None:
        """Stop the running native call, if any; it returns within one graph node."""
        if self.reason is None:
            self.reason = reason
            _quiet_native_log(True)  # llama.cpp logs the stopped decode as an error
        self.flag[0] = b"\x01"

    def rearm(self) -> None:
        self.flag[0] = b"\x00"
        if self.reason is not None:
            self.reason = None
            _quiet_native_log(False)


_LOG_LEVELS: list[int] = []


def _quiet_native_log(quiet: bool) -> None:
    """Hide llama.cpp's own log lines while a stopped call unwinds, then restore them."""
    log = logging.getLogger("llama-cpp-python")
    if quiet:
        _LOG_LEVELS.append(log.level)
        log.setLevel(logging.CRITICAL + 1)
    elif _LOG_LEVELS:
        log.setLevel(_LOG_LEVELS.pop())


_MODELS: dict[tuple[str, int, int], _LoadedModel] = {}
_MODELS_LOCK = threading.Lock()
#: Set at interpreter exit: no new native call starts after it.
_EXITING = threading.Event()


def load_llama(model_path: str | os.PathLike[str], n_ctx: int, n_threads: int) -> _LoadedModel:
    """The shared loaded model for these settings, loading it on first use."""
    key = (str(Path(model_path).resolve()), int(n_ctx), int(n_threads))
    with _MODELS_LOCK:
        loaded = _MODELS.get(key)
        if loaded is not None:
            return loaded
        if _EXITING.is_set():
            raise GenerationAbortedError("the process is exiting; no model is loaded now")
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
        loaded = _MODELS[key] = _LoadedModel(llama)
        loaded.install_abort(llama_cpp)
        return loaded


def unload_models() -> None:
    """Forget every shared loaded model; its memory is freed once no client holds it."""
    with _MODELS_LOCK:
        _MODELS.clear()


def abort_running(reason: str = "cancelled") -> int:
    """Stop every llama.cpp call running in this process (each raises
    :class:`GenerationAbortedError` in its caller); returns how many models were busy."""
    with _MODELS_LOCK:
        models = list(_MODELS.values())
    busy = 0
    for loaded in models:
        if loaded.lock.locked():
            busy += 1
            loaded.abort(reason)
    return busy


def _close_at_exit() -> None:
    # Runs before the interpreter tears down, while daemon threads (a root call that a
    # run abandoned at its max_timeout, or after Ctrl-C) may still be inside llama_decode.
    # Freeing the weights under them, or letting exit() run C++ destructors while they
    # compute, crashes in libggml-cpu.so. So: refuse new calls, stop running ones, wait
    # until each has returned (one graph node), and only then free the weights -- while
    # the interpreter is intact, since Llama.__del__ during teardown fails too.
    _EXITING.set()
    with _MODELS_LOCK:
        models = list(_MODELS.values())
        _MODELS.clear()
    for loaded in models:
        loaded.abort("the process is exiting")
        if not loaded.lock.acquire(timeout=EXIT_JOIN_TIMEOUT):
            continue  # a call that will not stop: leave its weights alone rather than crash
        # The lock stays held: a thread that was queued for this model never runs it.
        close = getattr(loaded.llama, "close", None)
        if close is not None:
            with contextlib.suppress(Exception):
                close()


# Registered at import, not at the first load: a Ctrl-C while the weights are still loading
# must wait for that load (it holds _MODELS_LOCK) before the interpreter goes.
atexit.register(_close_at_exit)


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

    Args:
        model_path: the GGUF file; default ``$RLM_LOCAL_MODEL``, else the model fetched
            by ``python -m rlm fetch-model``.
        model_name: the name reported in usage (default: from the file name).
        n_ctx: the context window in tokens (at least 256).
        n_threads: CPU threads (default: all cores).
        sampling_args: ``temperature`` (default 0), ``max_tokens``, ``top_p``, ``stop``...
        timeout: seconds one call may take; past it the native call is stopped and
            :class:`GenerationAbortedError` is raised. ``None`` (the default): no limit,
            since a local call cannot hang on a network.

    Raises:
        ConfigurationError: llama-cpp-python is missing, the file does not exist, or an
            option is invalid.

    Bound generation with ``sampling_args={"max_tokens": N}`` (unset, it may run to
    ``n_ctx``). A running call stops on Ctrl-C, on :meth:`cancel` and at exit.
    """

    is_local = True
    accepts_stop = True
    # A Ctrl-C must reach the wait for a call, never the call (its native decode runs on,
    # and the weights are freed at exit only once it has stopped).
    inline_root_calls = False

    def __init__(
        self,
        model_path: str | os.PathLike[str] | None = None,
        model_name: str | None = None,
        n_ctx: int = 8192,
        n_threads: int | None = None,
        sampling_args: dict[str, Any] | None = None,
        timeout: float | None = None,
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

        sampling: dict[str, Any] = {"temperature": 0.0}
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

    def _generate(
        self, messages: Messages, model: str | None = None, stop: list[str] | None = None
    ) -> Generation:
        return self._complete(messages, model, stop=stop)

    def _stream(
        self, messages: Messages, model: str | None, on_token: Any, stop: list[str] | None = None
    ) -> Generation:
        """``_generate`` with ``stream=True``: each piece of text goes to ``on_token``."""
        return self._complete(messages, model, on_token, stop)

    def _complete(
        self,
        messages: Messages,
        model: str | None,
        on_token: Any = None,
        stop: list[str] | None = None,
    ) -> Generation:
        loaded = self._model()
        name = model or self.model_name
        plain = _plain_messages(messages)
        with loaded.lock:
            if _EXITING.is_set():
                raise GenerationAbortedError("the process is exiting; no new llama.cpp call")
            loaded.rearm()
            loaded.owner = self
            try:
                response = self._run_native(loaded, plain, on_token, stop)
            except ValueError as exc:
                match = _CONTEXT_RE.search(str(exc))
                if match or "context window" in str(exc):
                    prompt_tokens = int(match.group(1)) if match else None
                    n_ctx = int(match.group(2)) if match else self.n_ctx
                    raise ContextWindowExceededError(prompt_tokens, n_ctx, name) from exc
                raise
            finally:
                loaded.owner = None
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

    def _run_native(
        self,
        loaded: _LoadedModel,
        messages: list[dict[str, str]],
        on_token: Any = None,
        stop: list[str] | None = None,
    ) -> Any:
        """``create_chat_completion`` in a helper thread that this one waits for, so the
        wait can be interrupted: on the call's timeout or on Ctrl-C the native call is
        stopped and joined before this returns or raises. Holds ``loaded.lock``."""
        box: dict[str, Any] = {}
        sampling = with_stop(self.sampling_args, stop)

        def call() -> None:
            try:
                if on_token is None:
                    box["response"] = loaded.llama.create_chat_completion(
                        messages=messages, **sampling
                    )
                else:
                    box["response"] = _streamed(loaded.llama, messages, sampling, on_token)
            except BaseException as exc:  # re-raised in the caller's thread
                box["error"] = exc

        worker = threading.Thread(target=call, name="rlm-llama-cpp", daemon=True)
        deadline = None if self.timeout is None else time.monotonic() + float(self.timeout)
        worker.start()
        try:
            while worker.is_alive():
                wait = 0.5 if deadline is None else max(0.0, min(0.5, deadline - time.monotonic()))
                worker.join(wait)
                if worker.is_alive() and deadline is not None and time.monotonic() >= deadline:
                    loaded.abort(f"it took longer than its timeout of {self.timeout:g}s")
                    worker.join()
        except BaseException:  # KeyboardInterrupt (or any async exception): stop, join
            loaded.abort("interrupted")
            worker.join()
            self._after_abort(loaded)
            raise
        if loaded.reason is not None:
            reason = loaded.reason
            self._after_abort(loaded)
            if "response" not in box:  # it did stop (rather than finish just in time)
                raise GenerationAbortedError(
                    f"The llama.cpp call to {self.model_name!r} was stopped: {reason}"
                ) from box.get("error")
        if "error" in box:
            raise box["error"]
        return box["response"]

    @staticmethod
    def _after_abort(loaded: _LoadedModel) -> None:
        # A stopped decode leaves the KV cache part-written: forget it (the next prompt is
        # evaluated in full) and arm the flag again for the next call.
        with contextlib.suppress(Exception):
            loaded.llama.reset()
        loaded.rearm()

    def cancel(self) -> bool:
        """Stop this client's running call, if one is running (it raises
        :class:`GenerationAbortedError`); returns whether one was. Safe from any thread."""
        loaded = self._loaded
        if loaded is None or loaded.owner is not self:
            return False
        loaded.abort("cancelled")
        return True

    def close(self) -> None:
        """Forget the model; the weights stay loaded for the next client
        (:func:`unload_models` frees them)."""
        self._loaded = None

    def __repr__(self) -> str:
        return (
            f"LlamaCppClient(model_name={self.model_name!r}, model_path={str(self.model_path)!r})"
        )


__all__ = [
    "ContextWindowExceededError",
    "GenerationAbortedError",
    "LlamaCppClient",
    "abort_running",
    "load_llama",
    "model_name_from_path",
    "unload_models",
]


def _streamed(llama: Any, messages: list[dict[str, str]], sampling: dict[str, Any], on_token: Any):
    """A streamed ``create_chat_completion``, each piece of text sent to ``on_token``, as
    the non-streamed response dict. llama.cpp streams no usage: the completion tokens are
    the pieces streamed (one token each) and the prompt tokens what else the context holds."""
    pieces: list[str] = []
    count = 0
    for chunk in llama.create_chat_completion(messages=messages, stream=True, **sampling):
        delta = ((chunk.get("choices") or [{}])[0].get("delta") or {}).get("content")
        if delta:
            count += 1
            pieces.append(delta)
            on_token(delta)
    usage = {"prompt_tokens": max(int(getattr(llama, "n_tokens", 0)) - count, 0)}
    usage["completion_tokens"] = count
    return {"choices": [{"message": {"content": "".join(pieces)}}], "usage": usage}
