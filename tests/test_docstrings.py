"""Every public class and function of the public API has a docstring (``help()`` and
``RLM?`` in Jupyter show something), methods included."""

from __future__ import annotations

import importlib
import inspect

import pytest

#: The modules of the public contract (docs/api.md) and what each exports.
MODULES = [
    "rlm",
    "rlm.core.types",
    "rlm.core.lm_handler",
    "rlm.core.comms_utils",
    "rlm.clients",
    "rlm.clients.base_lm",
    "rlm.clients.scripted",
    "rlm.clients.llama_cpp",
    "rlm.environments",
    "rlm.logger",
    "rlm.utils.parsing",
    "rlm.utils.exceptions",
    "rlm.local_model",
    "rlm.trajectory",
    "rlm.cli_options",
]


def _public(module):
    # With __all__: what it exports; without: what the module itself defines.
    exported = getattr(module, "__all__", None)
    names = exported or [n for n in vars(module) if not n.startswith("_")]
    for name in names:
        obj = getattr(module, name, None)
        if inspect.isclass(obj) or inspect.isfunction(obj):
            where = getattr(obj, "__module__", "")
            if where.startswith("rlm") and (exported or where == module.__name__):
                yield name, obj


def _undocumented(module_name: str) -> list[str]:
    module = importlib.import_module(module_name)
    missing = []
    for name, obj in _public(module):
        if not inspect.getdoc(obj) or (inspect.isclass(obj) and obj.__doc__ is None):
            missing.append(name)
        if inspect.isclass(obj):
            for attr, member in vars(obj).items():
                if attr.startswith("_"):
                    continue
                func = member.fget if isinstance(member, property) else member
                if isinstance(func, (staticmethod, classmethod)):
                    func = func.__func__
                if inspect.isfunction(func) and not func.__doc__:
                    missing.append(f"{name}.{attr}")
    return missing


@pytest.mark.parametrize("module_name", MODULES)
def test_public_names_have_docstrings(module_name):
    assert _undocumented(module_name) == []
