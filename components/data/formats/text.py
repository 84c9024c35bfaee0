"""The whitespace-separated annotation files (LFW pairs.txt, CelebA's lists) read the same
way: UTF-8 text, blank lines skipped, each line's fields with its 1-based line number."""

from __future__ import annotations

from pathlib import Path

from components.data.errors import DataError


def numbered_fields(path: Path, empty: str = "empty file") -> list[tuple[int, list[str]]]:
    """[(line number, fields)] of the non-blank lines; DataError naming the file when it
    cannot be read or holds none (`empty` says what was expected)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(path, f"cannot be read: {e}") from e
    lines = [(n, line.split()) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
    if not lines:
        raise DataError(path, empty)
    return lines
