"""The limits of a run tree, checked in one place with one wording.

Money, tokens and time are counted per subtree: a child run's limits are what
its ancestors have left (see ``lease``), and every check walks up the tree.
The texts are rlms': a refused model call says ``Budget exhausted (spent $x of
$y)`` / ``Timeout exhausted (...)`` (behind ``Error: ``), and a stopped run
raises the limit error with ``Budget exceeded after iteration N: ...``. Both
are built from one description per limit (``describe``).
"""

from __future__ import annotations

from typing import Any

from rlm.core import events as ev
from rlm.core.run import Run
from rlm.utils.exceptions import (
    BudgetExceededError,
    CancellationError,
    ErrorThresholdExceededError,
    TimeoutExceededError,
    TokenLimitExceededError,
)

#: A limit warning is emitted once a run has used this share of a limit.
WARN_SHARE = 0.8


def describe(limit: str, used: float, maximum: float) -> str:
    """The one wording of how much of a limit is used."""
    if limit == "budget":
        return f"spent ${used:.6f} of ${maximum:.6f}"
    if limit == "tokens":
        return f"{int(used):,} of {int(maximum):,} tokens"
    if limit == "timeout":
        return f"{used:.1f}s of {maximum:g}s"
    return f"{int(used)} consecutive errors (limit {int(maximum)})"


def refusal(run: Run) -> str | None:
    """Why a model call must not start now (a limit of this run or an ancestor is spent)."""
    for node in run.chain():
        cfg, handler = node.rlm, node.handler
        if node.cancelled.is_set():
            return "Cancelled (the run was cancelled)"
        remaining = node.remaining()
        if remaining is not None and remaining <= 0:
            limit = (node.deadline or 0.0) - node.start
            return f"Timeout exhausted ({node.elapsed():.1f}s of {limit:.1f}s)"
        if handler is None or (cfg.max_budget is None and cfg.max_tokens is None):
            continue
        usage = handler.get_usage_summary()
        cost = usage.total_cost or 0.0
        if cfg.max_budget is not None and cost >= cfg.max_budget:
            return f"Budget exhausted ({describe('budget', cost, cfg.max_budget)})"
        if cfg.max_tokens is not None and usage.total_tokens >= cfg.max_tokens:
            return (
                f"Token limit exhausted ({describe('tokens', usage.total_tokens, cfg.max_tokens)})"
            )
    return None


def lease(rlm: Any, run: Run) -> tuple[float | None, int | None, float | None]:
    """(budget, tokens, timeout) a child of ``run`` may use: what is left here."""
    usage = run.handler.get_usage_summary() if run.handler is not None else None
    budget = tokens = timeout = None
    if rlm.max_budget is not None:
        spent = (usage.total_cost or 0.0) if usage is not None else 0.0
        budget = max(rlm.max_budget - spent, 1e-12)
    if rlm.max_tokens is not None:
        used = usage.total_tokens if usage is not None else 0
        tokens = max(rlm.max_tokens - used, 1)
    remaining = run.remaining()
    if remaining is not None:
        timeout = max(remaining, 1e-3)
    return budget, tokens, timeout


def stop(run: Run, limit: str, exc: BaseException, used: float | None = None, maximum=None):
    """Emit LimitStopped for ``exc`` and return it (for ``raise``)."""
    run.emit(ev.LimitStopped, limit=limit, message=str(exc), used=used, maximum=maximum)
    return exc


def check_time(run: Run, where: str) -> None:
    """Raise CancellationError or TimeoutExceededError when the run must stop now."""
    rlm = run.rlm
    if run.is_cancelled():
        exc = CancellationError(partial_answer=run.best_partial, message="The run was cancelled")
        raise stop(run, "cancelled", exc)
    remaining = run.remaining()
    if remaining is not None and remaining <= 0:
        elapsed = run.elapsed()
        text = describe("timeout", elapsed, rlm.max_timeout or 0)
        exc = TimeoutExceededError(
            elapsed=elapsed,
            timeout=float(rlm.max_timeout or 0),
            partial_answer=run.best_partial,
            message=f"Timeout exceeded {where}: {text} limit",
        )
        raise stop(run, "timeout", exc, elapsed, rlm.max_timeout)


def _count_errors(run: Run, iteration: Any) -> None:
    # As in rlms, a block that wrote to stderr counts as failing (an exception does too).
    errors = [
        b.result for b in iteration.code_blocks if b.result.error is not None or b.result.stderr
    ]
    if errors:
        run.consecutive_errors += 1
        run.last_error = errors[0].error or errors[0].stderr
    elif iteration.code_blocks:
        run.consecutive_errors = 0


def _warn(run: Run, limit: str, used: float, maximum: float) -> None:
    if limit not in run.warned and maximum and used >= WARN_SHARE * maximum:
        run.warned.add(limit)
        run.emit(
            ev.LimitWarning,
            limit=limit,
            used=used,
            maximum=maximum,
            message=describe(limit, used, maximum),
        )


def check_after_iteration(run: Run, iteration: Any, number: int, handler: Any) -> None:
    """The checks after an iteration: errors, budget, tokens, then time."""
    rlm = run.rlm
    if run.is_cancelled():  # a cancelled cell's error is not the model's error
        check_time(run, f"after iteration {number}")
    _count_errors(run, iteration)
    if rlm.max_errors is not None and run.consecutive_errors >= rlm.max_errors:
        exc = ErrorThresholdExceededError(
            error_count=run.consecutive_errors,
            threshold=rlm.max_errors,
            last_error=run.last_error,
            partial_answer=run.best_partial,
        )
        raise stop(run, "errors", exc, run.consecutive_errors, rlm.max_errors)
    if rlm.max_budget is not None or rlm.max_tokens is not None:
        _check_spending(run, number, handler.get_usage_summary())
    check_time(run, f"after iteration {number}")
    if run.deadline is not None and rlm.max_timeout:
        _warn(run, "timeout", run.elapsed(), rlm.max_timeout)


def _check_spending(run: Run, number: int, usage: Any) -> None:
    """Raise (or warn) when the budget or the token limit is reached (the usage summary
    is taken only when one of them is set)."""
    rlm = run.rlm
    spending = (
        ("budget", rlm.max_budget, usage.total_cost or 0.0, BudgetExceededError, "Budget"),
        ("tokens", rlm.max_tokens, usage.total_tokens, TokenLimitExceededError, "Token limit"),
    )
    for kind, limit, used, error, what in spending:
        if limit is None:
            continue
        if used > limit:
            # Both take (figure, limit, partial_answer, message), in rlms' order.
            exc = error(
                used,
                limit,
                partial_answer=run.best_partial,
                message=(
                    f"{what} exceeded after iteration {number}: {describe(kind, used, limit)}"
                    + (" budget" if kind == "budget" else "")
                ),
            )
            raise stop(run, kind, exc, used, limit)
        _warn(run, kind, used, limit)
