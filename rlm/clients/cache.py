"""The clients of an RLM: built at the first completion (as in rlms) and then reused.

:class:`ClientCache` is a base class of :class:`rlm.core.rlm.RLM`. Clients come from
``rlm.core.rlm.get_client`` as that name is at call time, and are rebuilt when it has been
patched since (what users' tests do).
"""

from __future__ import annotations

from typing import Any

from rlm.clients.base_lm import BaseLM
from rlm.clients.pricing import check_budget_prices
from rlm.utils.exceptions import ConfigurationError


class ClientCache:
    """The root client, the ``other_backends`` clients and the root model's name."""

    _client_cache: tuple[Any, BaseLM, list[BaseLM]] | None

    def _clients(self) -> tuple[BaseLM, list[BaseLM]]:
        """The root client and the ``other_backends`` clients, built on first use.

        They are built with this module's ``get_client`` as it is *now*, and rebuilt when
        that name has been patched since (what users' tests do); otherwise they are reused
        across completions. A child RLM uses its parent's clients (pinned).
        """
        factory = self._seam("get_client")
        cache = self._client_cache
        if cache is not None and (cache[0] is None or cache[0] is factory):
            return cache[1], cache[2]
        with self._clients_lock:
            cache = self._client_cache
            if cache is not None and (cache[0] is None or cache[0] is factory):
                return cache[1], cache[2]
            root = factory(self.backend, self.backend_kwargs)
            others = [
                factory(b, kw)
                for b, kw in zip(
                    self.other_backends or [], self.other_backend_kwargs or [], strict=True
                )
            ]
            known = {getattr(c, "model_name", None) for c in (root, *others)}
            unknown = {d: m for d, m in self.depth_models.items() if m not in known}
            if unknown:
                raise ConfigurationError(
                    f"depth_models names models no client serves: {unknown}; "
                    f"known: {sorted(str(k) for k in known)}"
                )
            if self.max_budget is not None and self.depth == 0:
                # A budget must count every call: refuse a model with no known price (a
                # price, or prices={name: "unpriced"} to opt out, lifts it).
                check_budget_prices([root, *others])
            self._client_cache = (factory, root, others)
            return root, others

    @property
    def client(self) -> BaseLM:
        """The root model's client (built on first use)."""
        return self._clients()[0]

    @client.setter
    def client(self, value: BaseLM) -> None:
        others = self._client_cache[2] if self._client_cache is not None else []
        self._client_cache = (None, value, others)

    @property
    def other_clients(self) -> list[BaseLM]:
        """Clients of ``other_backends``, in order (built on first use)."""
        return self._clients()[1]

    @property
    def root_model(self) -> str:
        """The configured ``model_name`` (as rlms reports it), else the client's own default."""
        configured = self.backend_kwargs.get("model_name")
        if isinstance(configured, str) and configured:
            return configured
        cache = self._client_cache
        name = getattr(cache[1], "model_name", None) if cache is not None else None
        # A stand-in client (e.g. a unittest.mock.Mock in a user's tests) has no real name.
        return name if isinstance(name, str) else "unknown"
