"""Run one task on the public ``rlms`` package, in the interpreter that has it installed.

    /path/to/rlms-venv/bin/python -I rlms_driver.py < task.json

Reads one JSON object on stdin: ``{"context_file": PATH, "question": TEXT, "config":
{RLM(...) keyword arguments}}`` (with ``log_dir`` and ``id``, rlms' own ``RLMLogger``
writes the task's trajectory there, named after the id), or ``{"probe": true}`` to report the installed
version only. Writes one JSON object on stdout: ``ok``, ``response``, ``error``,
``execution_time``, ``root_model``, ``usage_summary`` (rlms' ``to_dict()``) and
``rlms_version``. Anything rlms prints goes to stderr. Standard library and rlms only:
this file never imports the repository's own ``rlm`` (run it with ``-I`` from another
folder, so that ``import rlm`` finds the rlms distribution; it checks that it did).
"""

import json
import sys
import time
import traceback
from importlib import metadata
from pathlib import Path


def _rlms() -> tuple[str, object]:
    """rlms' version and its RLM class; raises when ``import rlm`` is not rlms' package."""
    version = metadata.version("rlms")
    import rlm

    expected = Path(metadata.distribution("rlms").locate_file("rlm/__init__.py")).resolve()
    if Path(rlm.__file__).resolve() != expected:
        raise RuntimeError(f"import rlm found {rlm.__file__}, not the rlms package at {expected}")
    return version, rlm.RLM


def main() -> int:
    out = sys.stdout
    sys.stdout = sys.stderr  # rlms' prints must not mix with the result line
    request = json.loads(sys.stdin.read())
    version, rlm_class = _rlms()
    if request.get("probe"):
        out.write(json.dumps({"rlms_version": version}) + "\n")
        return 0
    context = Path(request["context_file"]).read_text(encoding="utf-8")
    start = time.perf_counter()
    result = {"rlms_version": version, "ok": False, "response": None, "error": None}
    config = dict(request["config"])
    if request.get("log_dir"):
        from rlm.logger import RLMLogger

        config["logger"] = RLMLogger(
            log_dir=request["log_dir"], file_name=request.get("id", "rlms")
        )
    try:
        completion = rlm_class(**config).completion(context, root_prompt=request["question"])
        result.update(
            ok=True,
            response=completion.response,
            root_model=completion.root_model,
            execution_time=completion.execution_time,
            usage_summary=completion.usage_summary.to_dict(),
        )
        if config.get("logger") is not None:
            result["log_file"] = getattr(config["logger"], "log_file_path", None)
    except Exception as exc:
        traceback.print_exc()
        result.update(error=f"{type(exc).__name__}: {exc}")
        partial = getattr(exc, "partial_answer", None)
        if partial:
            result["partial_answer"] = partial
    result.setdefault("execution_time", time.perf_counter() - start)
    out.write(json.dumps(result, default=str) + "\n")
    out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
