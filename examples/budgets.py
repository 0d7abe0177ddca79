"""Budgets: stop a run at a cost, a token count, a time or a number of errors.

    python examples/budgets.py

``max_budget`` is USD for the whole run tree, ``max_tokens`` is a *total* token budget
(input plus output of every call, not a per-answer limit as in LLM SDKs),
``max_timeout`` is seconds, ``max_errors`` consecutive failed iterations. Passing one
raises its exception (all are ``LimitExceededError``s, exported from ``rlm``); the
exception carries the best answer so far (``partial_answer``). Offline on the scripted
model, priced here at $2 / $8 per million tokens.
"""

from __future__ import annotations

from rlm import RLM, BudgetExceededError, TokenLimitExceededError

# A model that never finishes: it keeps exploring.
EXPLORE = ["```repl\nprint(len(context))\n```"] * 50
PRICED = {"responses": EXPLORE, "input_price": 2.0, "output_price": 8.0}


def main() -> None:
    context = "lorem ipsum " * 2000

    rlm = RLM(backend="scripted", backend_kwargs=dict(PRICED), max_budget=0.02)
    try:
        rlm.completion(context)
    except BudgetExceededError as exc:
        print(f"budget: stopped after spending ${exc.spent:.4f} of ${exc.budget:.2f}")

    rlm = RLM(backend="scripted", backend_kwargs=dict(PRICED), max_tokens=5_000)
    try:
        rlm.completion(context)
    except TokenLimitExceededError as exc:
        print(f"tokens: stopped at {exc.tokens_used:,} of {exc.token_limit:,} tokens")


if __name__ == "__main__":
    main()
