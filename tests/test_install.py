"""What a plain install brings, and the warning when ``rlms`` is installed as well."""

from __future__ import annotations

import importlib
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _dependencies() -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    out = {}
    for spec in project["dependencies"]:
        name = spec.split(">")[0].split("=")[0].split("<")[0].split("[")[0].strip().lower()
        out[name] = spec
    return out


def test_plain_install_brings_what_rlms_brings_plus_prices():
    deps = _dependencies()
    for name in ("openai", "anthropic", "google-genai", "portkey-ai", "python-dotenv", "rich"):
        assert name in deps, name
    assert "genai-prices" in deps


def test_sandboxes_litellm_llama_cpp_and_dev_tools_stay_extras():
    deps = _dependencies()
    for name in ("litellm", "llama-cpp-python", "modal", "e2b", "daytona", "prime-sandboxes"):
        assert name not in deps, name
    assert not {"pytest", "ruff", "playwright", "ipython"} & set(deps)
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    # The old extra names keep working.
    for extra in ("anthropic", "gemini", "portkey", "prices", "providers", "litellm", "local"):
        assert extra in extras, extra


@pytest.mark.parametrize(
    "module",
    ["openai", "anthropic", "google.genai", "portkey_ai", "dotenv", "rich", "genai_prices"],
)
def test_plain_dependencies_import(module):
    importlib.import_module(module)


def _import_rlm(tmp_path: Path, extra_path: Path | None) -> subprocess.CompletedProcess:
    path = [str(ROOT)] + ([str(extra_path)] if extra_path else [])
    code = "import rlm\nimport rlm.clients\nfrom rlm import RLM"
    return subprocess.run(
        [sys.executable, "-W", "always::RuntimeWarning", "-c", code],
        cwd=tmp_path,
        env={"PYTHONPATH": ":".join(path), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_import_warns_once_when_rlms_is_installed_too(tmp_path):
    site = tmp_path / "site"
    info = site / "rlms-0.1.3.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: rlms\nVersion: 0.1.3\n")
    done = _import_rlm(tmp_path, site)
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("pip uninstall rlms") == 1, done.stderr
    assert "0.1.3" in done.stderr


def test_import_is_silent_without_rlms(tmp_path):
    done = _import_rlm(tmp_path, None)
    assert done.returncode == 0, done.stderr
    assert "rlms" not in done.stderr
