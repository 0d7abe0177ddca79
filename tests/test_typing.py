"""Types users can rely on: ``rlm`` ships ``py.typed``, ``mypy`` is clean on ``rlm/`` (with
the configuration in pyproject.toml), and a user's script that uses the public API passes
``mypy --strict`` with the types its ``reveal_type`` lines expect.

mypy's first run takes about a minute; later ones reuse ``.mypy_cache``.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "tests" / "typing" / "user_script.py"

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("mypy") is None,
    reason='mypy is not installed (pip install "rlm[test]")',
)


def mypy(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mypy", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_the_package_is_marked_typed():
    assert (REPO / "rlm" / "py.typed").is_file()
    pyproject = (REPO / "pyproject.toml").read_text()
    assert '"rlm" = ["py.typed"]' in pyproject  # shipped in the wheel too


def test_mypy_is_clean_on_rlm():
    proc = mypy()  # files and options from [tool.mypy]
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]


def _normal(text: str) -> str:
    return text.replace("builtins.", "").strip()


def test_a_user_script_passes_mypy_strict_with_the_expected_types():
    # Errors inside rlm's own modules are the first test's business; this one checks what
    # a strict user sees of the public API.
    proc = mypy("--strict", "--follow-imports=silent", str(SCRIPT.relative_to(REPO)))
    assert proc.returncode == 0, proc.stdout[-4000:]
    revealed = {
        int(m.group(1)): _normal(m.group(2))
        for m in re.finditer(r":(\d+): note: Revealed type is \"(.+)\"", proc.stdout)
    }
    expected = {
        number: _normal(line.split("# R:")[1])
        for number, line in enumerate(SCRIPT.read_text().splitlines(), start=1)
        if "# R:" in line
    }
    assert expected and revealed == expected
