"""Bounding text for display, prompts and logs (one mechanism for all three)."""

from __future__ import annotations


def truncate_middle(text: str, limit: int, *, label: str = "characters") -> str:
    """Keep the head and tail of ``text`` so the result is about ``limit`` characters.

    The cut is announced in place, e.g. ``... [12,345 characters cut] ...``, so
    whoever reads it knows something is missing. Cost is O(limit), not O(len(text)).
    """
    if limit <= 0 or len(text) <= limit:
        return text
    head = (limit * 2) // 3
    tail = limit - head
    cut = len(text) - head - tail
    return f"{text[:head]}\n... [{cut:,} {label} cut] ...\n{text[len(text) - tail :]}"


def truncate_end(text: str, limit: int, *, label: str = "characters") -> str:
    """Keep the first ``limit`` characters of ``text`` and say how many were cut."""
    if limit <= 0 or len(text) <= limit:
        return text
    return f"{text[:limit]}... [+{len(text) - limit:,} {label} cut]"
