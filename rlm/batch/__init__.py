"""Batch runs over datasets: ``rlm batch IN.jsonl -o OUT.jsonl`` and ``RLM.batch()``.

See :mod:`rlm.batch.runner` (output format, resume) and :mod:`rlm.batch.items`
(the item format). ``engine="ray"`` needs ``pip install "rlm[ray]"``.
"""

from rlm.batch.items import ITEM_KEYS, OVERRIDES, BatchItem, read_items
from rlm.batch.runner import DEFAULT_CONCURRENCY, ENGINES, BatchSummary, abatch, batch

__all__ = [
    "DEFAULT_CONCURRENCY",
    "ENGINES",
    "ITEM_KEYS",
    "OVERRIDES",
    "BatchItem",
    "BatchSummary",
    "abatch",
    "batch",
    "read_items",
]
