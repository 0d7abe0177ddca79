"""The embedded local model: no key, no network (after one download).

    python -m rlm fetch-model        # once: about 1.1 GB, verified by sha256
    python examples/local_model.py

``backend="llama_cpp"`` runs a GGUF model in this process with llama.cpp (the
``rlm[local]`` extra). ``model_path`` defaults to ``$RLM_LOCAL_MODEL`` or the fetched
model. Calls are free (``is_local``) and can be stopped: a ``timeout`` per call,
``max_timeout`` for the run, Ctrl-C, all end the native call cleanly. The client is
also usable on its own, as here first.
"""

from __future__ import annotations

from rlm import RLM
from rlm.clients.llama_cpp import LlamaCppClient
from rlm.local_model import find_model


def main() -> None:
    path = find_model()
    if path is None:
        raise SystemExit("fetch the model first: python -m rlm fetch-model")

    # The client alone: one chat call, with its usage.
    client = LlamaCppClient(model_path=path, n_ctx=4096, sampling_args={"max_tokens": 8})
    generation = client.generate("Reply with the single word: ready")
    print(f"client: {generation.text.strip()!r} ({generation.output_tokens} tokens)")

    # An RLM run on it: the context goes into the REPL; the model writes code to read it.
    rlm = RLM(
        backend="llama_cpp",
        backend_kwargs={
            "model_path": str(path),
            "n_ctx": 4096,
            "sampling_args": {"temperature": 0, "max_tokens": 256},
        },
        max_iterations=4,
        max_timeout=240,
    )
    inventory = "\n".join(f"item {i}: {'lamp' if i == 37 else 'chair'}" for i in range(60))
    result = rlm.completion(inventory, root_prompt="Which item number is the lamp?")
    print("answer:", result.response)
    print("model calls:", result.usage_summary.total_calls)


if __name__ == "__main__":
    main()
