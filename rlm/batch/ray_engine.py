"""``engine="ray"``: batch items as Ray tasks, on a cluster or a local one.

The driver (the process running the batch) reads the items, skips those already
in the output, reads each ``context_file`` itself (workers need no shared disk)
and keeps at most ``concurrency`` tasks in flight. Each task builds its own RLM
from the batch's settings and calls the provider directly from its worker;
the record comes back to the driver, which alone writes the output: the same
file, the same records and the same resume rules as the in-process engine.

Connecting: ``ray_address`` (or ``RAY_ADDRESS``) names a running cluster
(``ray start --head`` on one machine, ``ray start --address=HEAD:6379`` on the
others); without one a local cluster is started for the batch and stopped after
it. If Ray is already initialised in this process, that session is used as is.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from rlm.batch.items import BatchItem
from rlm.utils.exceptions import ConfigurationError


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ConfigurationError(
            'engine="ray" needs Ray; install it with: pip install "rlm[ray]"'
        ) from None
    return ray


def _task(config: dict[str, Any], payload: dict[str, Any], log_dir: str | None) -> dict[str, Any]:
    from rlm.batch.runner import run_payload

    return run_payload(config, payload, log_dir)


def run_on_ray(
    base: dict[str, Any],
    items: list[BatchItem],
    base_dir: Path | None,
    finish: Callable[[dict[str, Any]], None],
    concurrency: int,
    address: str | None = None,
    options: dict[str, Any] | None = None,
    log_dir: str | None = None,
) -> None:
    """Run ``items`` as Ray tasks, calling ``finish(record)`` on this thread as each ends.
    ``log_dir`` is a path on the workers' machines (each writes its items' trajectories)."""
    if not items:
        return
    ray = _ray()
    from rlm.batch.runner import _record

    started_here = False
    if not ray.is_initialized():
        init: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
        if address:
            init["address"] = address
        ray.init(**init)
        started_here = True
    try:
        task = ray.remote(_task).options(**{"max_retries": 0, **(options or {})})
        config_ref = ray.put(base)
        pending: dict[Any, str] = {}
        queue = iter(items)

        def submit() -> None:
            for item in queue:
                try:
                    payload = item.to_payload(base_dir)
                except OSError as exc:
                    finish(_record(item.id, error=f"cannot read context_file: {exc}"))
                    continue
                pending[task.remote(config_ref, payload, log_dir)] = item.id
                return

        for _ in range(concurrency):
            submit()
        try:
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                for ref in done:
                    item_id = pending.pop(ref)
                    try:
                        record = ray.get(ref)
                    except Exception as exc:  # the worker died, or Ray failed the task
                        record = _record(item_id, error=f"{type(exc).__name__}: {exc}")
                    finish(record)
                    submit()
        except BaseException:
            for ref in pending:
                ray.cancel(ref, force=True)
            raise
    finally:
        if started_here:
            ray.shutdown()
