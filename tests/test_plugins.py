"""Third-party backends and environments through entry points (groups ``rlm.backends`` and
``rlm.environments``): a test package is installed into a temporary virtual environment
(made with ``--system-site-packages`` so that it sees this rlm), and that environment's
Python finds, lists and uses its plugins."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import venv
import zipfile
from pathlib import Path

import pytest

from rlm.utils.registry import Registry

PLUGIN = textwrap.dedent(
    '''
    """A test plugin: a scripted backend and a LocalREPL that counts its cells."""
    from rlm.clients.base_lm import BaseLM, Generation
    from rlm.environments.local_repl import LocalREPL


    class EchoLM(BaseLM):
        def __init__(self, model_name="echo", answer="plugged", **kwargs):
            super().__init__(model_name=model_name, **kwargs)
            self.answer = answer

        def _generate(self, messages, model=None):
            text = "```repl\\nanswer['content'] = %r\\nanswer['ready'] = True\\n```" % self.answer
            return Generation(text=text, model=model or self.model_name,
                              input_tokens=3, output_tokens=5)


    class CountingREPL(LocalREPL):
        cells = 0

        def execute_code(self, code, *args, **kwargs):
            type(self).cells += 1
            return super().execute_code(code, *args, **kwargs)


    def make_broken(kwargs):
        raise RuntimeError("never built")
    '''
)

ENTRY_POINTS = textwrap.dedent(
    """
    [rlm.backends]
    echo = rlm_test_plugin:EchoLM

    [rlm.environments]
    counting = rlm_test_plugin:CountingREPL
    broken = rlm_test_plugin_missing:Nothing
    """
)


def build_wheel(folder: Path) -> Path:
    """The test package as a wheel (written directly: no build backend needed offline)."""
    dist = "rlm_test_plugin-1.2.3.dist-info"
    files = {
        "rlm_test_plugin/__init__.py": PLUGIN,
        f"{dist}/METADATA": "Metadata-Version: 2.1\nName: rlm-test-plugin\nVersion: 1.2.3\n",
        f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\n"
        "Tag: py3-none-any\n",
        f"{dist}/entry_points.txt": ENTRY_POINTS,
    }
    record = [f"{name},," for name in files] + [f"{dist}/RECORD,,"]
    files[f"{dist}/RECORD"] = "\n".join(record) + "\n"
    wheel = folder / "rlm_test_plugin-1.2.3-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for name, text in files.items():
            archive.writestr(name, text)
    return wheel


USE = textwrap.dedent(
    """
    import json, sys
    from rlm import RLM
    import rlm_test_plugin

    rlm = RLM(backend="echo", backend_kwargs={"answer": "from the plugin"},
              environment="counting", max_iterations=2)
    result = rlm.completion("some context", root_prompt="q")
    print(json.dumps({"response": result.response,
                      "cells": rlm_test_plugin.CountingREPL.cells}))
    """
)


@pytest.fixture(scope="module")
def plugin_python(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("plugin")
    wheel = build_wheel(root)
    env_dir = root / "venv"
    venv.EnvBuilder(system_site_packages=True, with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps"]
        + ["--no-index", "--disable-pip-version-check", "-q", str(wheel)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return python


def run(python: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(python), *args], capture_output=True, text=True, timeout=120, cwd="/"
    )


def test_the_plugins_are_listed(plugin_python):
    backends = run(plugin_python, "-m", "rlm", "backends", "--json")
    assert backends.returncode == 0, backends.stderr
    by_name = {e["name"]: e for e in json.loads(backends.stdout)}
    assert by_name["echo"]["source"] == "plugin"
    assert by_name["echo"]["detail"] == "rlm-test-plugin 1.2.3: rlm_test_plugin:EchoLM"
    assert by_name["openai"]["source"] == "built-in"
    envs = run(plugin_python, "-m", "rlm", "environments")
    assert envs.returncode == 0, envs.stderr
    assert any(line.split()[:2] == ["counting", "plugin"] for line in envs.stdout.splitlines())
    assert any(line.split()[:2] == ["local", "built-in"] for line in envs.stdout.splitlines())


def test_a_run_uses_the_plugin_backend_and_environment(plugin_python):
    proc = run(plugin_python, "-c", USE)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout) == {"response": "from the plugin", "cells": 1}


def test_a_plugin_that_cannot_load_is_a_configuration_error(plugin_python):
    code = (
        "from rlm import RLM\n"
        "try:\n    RLM(backend='echo', environment='broken')\n"
        "except ValueError as exc:\n    print(type(exc).__name__, exc)\n"
    )
    proc = run(plugin_python, "-c", code)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("ConfigurationError")
    assert "'broken'" in proc.stdout and "rlm_test_plugin_missing" in proc.stdout


def test_the_plugins_are_not_seen_outside_that_environment():
    from rlm.clients import available_backends

    assert "echo" not in available_backends()


def test_a_builtin_name_wins_over_a_plugin_of_the_same_name():
    registry: Registry[object] = Registry("backend", "rlm.no-such-group")
    registry.register("openai", lambda kwargs: "built-in")
    registry.seal_builtins()
    registry.register("mine", lambda kwargs: "registered")
    sources = {e.name: e.source for e in registry.entries()}
    assert sources == {"openai": "built-in", "mine": "registered"}
    assert registry.build("openai", {}) == "built-in"
