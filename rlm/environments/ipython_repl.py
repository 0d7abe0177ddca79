"""environment="ipython": cells written in IPython syntax (``%time``, ``%%writefile``, ``!ls``).

Two modes (``environment_kwargs={"mode": ...}``):

* ``"inprocess"`` (default), :class:`IPythonREPL`: like ``local`` (same process,
  **not a security boundary**). IPython's own input transformer turns each cell
  into plain Python (magics become ``get_ipython().run_line_magic(...)``), which
  the shared engine runs: the same names, final-answer forms, output bounds and
  cell time limits as ``local``. ``get_ipython()`` is an ``InteractiveShell``
  whose namespace is the REPL's.
* ``"kernel"``, :class:`IPythonKernelREPL`: the same, inside the ``subprocess``
  environment's worker (scrubbed environment, resource limits, no network, and
  hard cell timeouts: a cell stuck in native code gets the worker killed and
  restarted). Needs IPython importable by the worker's Python (``python=``
  option; default this interpreter).
"""

from __future__ import annotations

from typing import Any

from rlm.core.types import REPLResult
from rlm.environments.local_repl import LocalREPL
from rlm.environments.subprocess_repl import SubprocessREPL
from rlm.environments.worker import IPythonCells
from rlm.utils.exceptions import ConfigurationError

MODES = ("inprocess", "kernel")


def _require_ipython() -> None:
    try:
        import IPython  # noqa: F401
    except ImportError as exc:
        raise ConfigurationError(
            f'environment="ipython" needs IPython ({exc}). Install it with: pip install "rlm[ipython]"'
        ) from exc


class IPythonREPL(LocalREPL):
    """IPython cells in this process (see the module docstring)."""

    def setup(self) -> None:
        _require_ipython()
        super().setup()
        self._ipython = IPythonCells(self._core, ipython_dir=self.temp_dir)

    @property
    def shell(self) -> Any:
        """The ``InteractiveShell`` behind ``get_ipython()``."""
        return self._ipython.shell

    def execute_code(self, code: str, timeout: float | None = None) -> REPLResult:
        if self._closed:
            raise RuntimeError("This IPythonREPL was cleaned up; create a new one")
        return super().execute_code(self._ipython.transform(code), timeout)


class IPythonKernelREPL(SubprocessREPL):
    """IPython cells in a confined worker process (see the module docstring)."""

    _WORKER_INIT = {"ipython": True}

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        probe = self.execute_code("get_ipython")
        if probe.error is not None:
            self.cleanup()
            raise ConfigurationError(
                f'environment="ipython", mode="kernel": {probe.error}. Install IPython for the '
                "worker's Python or pass python= pointing at one that has it."
            )


def check_kwargs(kwargs: dict[str, Any]) -> None:
    mode = kwargs.get("mode", "inprocess")
    if mode not in MODES:
        raise ConfigurationError(f"ipython mode must be one of {MODES}, got {mode!r}")
    rest = {k: v for k, v in kwargs.items() if k != "mode"}
    (IPythonKernelREPL if mode == "kernel" else IPythonREPL).check_kwargs(rest)


def make_ipython(**kwargs: Any) -> LocalREPL | SubprocessREPL:
    """The ``environment="ipython"`` factory: picks the class by ``mode``."""
    check_kwargs(kwargs)
    mode = kwargs.pop("mode", "inprocess")
    return IPythonKernelREPL(**kwargs) if mode == "kernel" else IPythonREPL(**kwargs)
