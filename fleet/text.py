"""Small wording helpers shared by the command-line output."""

from __future__ import annotations


def counted(count: int, word: str, plural: str | None = None) -> str:
    """`1 node`, `2 nodes`, `0 nodes` (`plural` for irregular words)."""
    return f"{count} {word if count == 1 else (plural or word + 's')}"
