#!/usr/bin/env python3
"""Run the public ``rlms`` package's own test suites against this ``rlm``.

The suites are downloaded from the package index at run time (the sdists of
rlms 0.1.3 and 0.1.1) and never copied into this repository. Only their
``tests/`` folder is unpacked, into a scratch directory with nothing else on
``sys.path``, so ``import rlm`` resolves to the installed (ours) package.

One helper module the 0.1.3 tests import is not in its sdist
(``tests/mock_lm.py``); the file written here in its place is our own small
scripted client with the constructor those tests call.

Every failing test must be named, with its reason, in docs/compatibility.md;
a failure that is not named there, or a pass rate under the threshold, fails
the run. Prints one summary line per suite and ``N passed, N failed``.

    python scripts/rlms_suites.py                 # both suites
    python scripts/rlms_suites.py --version 0.1.3 -k ipython --show-failures
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COMPAT_DOC = ROOT / "docs" / "compatibility.md"
#: version -> minimum share of non-skipped tests that must pass.
THRESHOLDS = {"0.1.3": 0.97, "0.1.1": 0.90}

MOCK_LM = '''"""A scripted client for the rlms test suites (written for rlm; not the rlms file)."""

from rlm.clients.base_lm import BaseLM
from rlm.core.types import ModelUsageSummary, UsageSummary


class MockLM(BaseLM):
    """Answers from a list of responses (cycled) or from ``response_fn(prompt)``."""

    def __init__(self, responses=None, response_fn=None, model_name="mock-model", **kwargs):
        super().__init__(model_name=model_name, **kwargs)
        self._responses = list(responses or ["mock response"])
        self._response_fn = response_fn
        self._next = 0
        self.calls = []

    def _answer(self, prompt):
        self.calls.append(prompt)
        if self._response_fn is not None:
            return self._response_fn(prompt)
        text = self._responses[self._next % len(self._responses)]
        self._next += 1
        return text

    def completion(self, prompt, model=None):
        return self._answer(prompt)

    async def acompletion(self, prompt, model=None):
        return self._answer(prompt)

    def get_usage_summary(self):
        return UsageSummary({self.model_name: ModelUsageSummary(len(self.calls), 0, 0)})

    def get_last_usage(self):
        return ModelUsageSummary(1, 0, 0)
'''


def fetch_suite(version: str, cache: Path) -> Path:
    """Download rlms==version's sdist (cached) and unpack its tests/ into a fresh folder."""
    cache.mkdir(parents=True, exist_ok=True)
    sdist = cache / f"rlms-{version}.tar.gz"
    if not sdist.exists():
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--quiet",
                "--no-deps",
                "--no-binary",
                ":all:",
                f"rlms=={version}",
                "-d",
                str(cache),
            ],
            check=True,
        )
    work = Path(tempfile.mkdtemp(prefix=f"rlms-{version}-suite-"))
    prefix = f"rlms-{version}/tests/"
    with tarfile.open(sdist) as tar:
        members = [m for m in tar.getmembers() if m.name.startswith(prefix) and m.isfile()]
        for member in members:
            target = work / "tests" / member.name[len(prefix) :]
            target.parent.mkdir(parents=True, exist_ok=True)
            source = tar.extractfile(member)
            assert source is not None
            target.write_bytes(source.read())
    (work / "tests" / "__init__.py").touch()
    if not (work / "tests" / "mock_lm.py").exists():
        (work / "tests" / "mock_lm.py").write_text(MOCK_LM)
    return work


def run_suite(work: Path, extra: list[str]) -> list[tuple[str, str, str]]:
    """Run pytest in ``work``; returns (test id, outcome, message) per test."""
    report = work / "report.xml"
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    command = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "--timeout",
        "300",
        f"--junitxml={report}",
        "tests",
        *extra,
    ]
    subprocess.run(command, cwd=work, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    results = []
    for case in ET.parse(report).getroot().iter("testcase"):
        # classname is tests.test_x or tests.test_x.TestClass
        parts = case.get("classname", "").split(".")
        test_id = "::".join(["/".join(parts[:2]) + ".py", *parts[2:], case.get("name", "")])
        outcome, message = "passed", ""
        for tag in ("failure", "error"):
            node = case.find(tag)
            if node is not None:
                outcome, message = "failed", (node.get("message") or "")[:200]
        if case.find("skipped") is not None:
            outcome = "skipped"
            message = (case.find("skipped").get("message") or "")[:200]  # type: ignore[union-attr]
        results.append((test_id, outcome, message))
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", action="append", choices=sorted(THRESHOLDS))
    parser.add_argument("--cache", default=os.environ.get("RLMS_SUITES_CACHE", "/tmp/rlms-sdists"))
    parser.add_argument("--show-failures", action="store_true", help="print each failure")
    parser.add_argument("--keep", action="store_true", help="keep the unpacked suites")
    parser.add_argument("pytest_args", nargs="*", help="extra pytest arguments (after --)")
    args = parser.parse_args()
    documented = COMPAT_DOC.read_text() if COMPAT_DOC.exists() else ""
    ok = True
    total_passed = total_failed = 0
    for version in args.version or sorted(THRESHOLDS, reverse=True):
        work = fetch_suite(version, Path(args.cache))
        try:
            results = run_suite(work, args.pytest_args)
        finally:
            if not args.keep:
                shutil.rmtree(work, ignore_errors=True)
            else:
                print(f"suite kept in {work}")
        passed = [r for r in results if r[1] == "passed"]
        failed = [r for r in results if r[1] == "failed"]
        skipped = [r for r in results if r[1] == "skipped"]
        ran = len(passed) + len(failed)
        rate = len(passed) / ran if ran else 0.0
        undocumented = [r for r in failed if r[0].split("::", 1)[1] not in documented]
        print(
            f"rlms {version}: {len(passed)} passed, {len(failed)} failed, {len(skipped)} skipped "
            f"({rate:.1%} of {ran} run; threshold {THRESHOLDS[version]:.0%})"
        )
        reasons: dict[str, int] = {}
        for _, _, message in skipped:
            reasons[message] = reasons.get(message, 0) + 1
        for message, count in sorted(reasons.items(), key=lambda kv: -kv[1]):
            print(f"  skipped {count}: {message}")
        for test_id, _, message in failed:
            mark = "" if test_id not in [u[0] for u in undocumented] else "  [not in docs]"
            if args.show_failures or mark:
                print(f"  FAILED {test_id}: {message}{mark}")
        if rate < THRESHOLDS[version] or undocumented or not ran:
            ok = False
        total_passed += len(passed)
        total_failed += len(failed)
    print(f"{total_passed} passed, {total_failed} failed")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
