"""Print the size figures of issue 11 item 6: core lines, long classes, long functions.

Usage: python scripts/size_report.py [--top N]
Limits: rlm/core <= 1,500 lines; no class in rlm/ over 400 lines; no function over 80.
The duplicate pairs are counted with `duplicates --repo rlm` (a separate tool).
"""

from __future__ import annotations

import argparse
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT / "rlm"
CORE_LIMIT, CLASS_LIMIT, FUNC_LIMIT = 1500, 400, 80


def _spans(tree: ast.AST, kinds: tuple[type, ...]) -> list[tuple[str, int]]:
    out = []
    for node in ast.walk(tree):
        if isinstance(node, kinds):
            start = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
            out.append((node.name, node.end_lineno - start + 1, node.lineno))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--top", type=int, default=5)
    top = parser.parse_args().top
    core = sum(len(p.read_text().splitlines()) for p in sorted((PKG / "core").rglob("*.py")))
    classes, funcs = [], []
    for path in sorted(PKG.rglob("*.py")):
        tree = ast.parse(path.read_text())
        rel = path.relative_to(ROOT)
        classes += [(n, length, f"{rel}:{ln}") for n, length, ln in _spans(tree, (ast.ClassDef,))]
        kinds = (ast.FunctionDef, ast.AsyncFunctionDef)
        funcs += [(n, length, f"{rel}:{ln}") for n, length, ln in _spans(tree, kinds)]
    print(f"rlm/core lines: {core} (limit {CORE_LIMIT})")
    for title, items, limit in (
        ("classes", classes, CLASS_LIMIT),
        ("functions", funcs, FUNC_LIMIT),
    ):
        items.sort(key=lambda item: -item[1])
        over = sum(1 for item in items if item[1] > limit)
        print(f"largest {title} (limit {limit}, over: {over}):")
        for name, length, where in items[:top]:
            print(f"  {length:5d}  {name}  {where}")


if __name__ == "__main__":
    main()
