"""Where the checked-in ModelOpt exports and their references live."""
from __future__ import annotations

from pathlib import Path

DATA = Path(__file__).resolve().parent.parent / "data"
REFERENCES = DATA / "references"


def fixture_dirs(prefix: str = "") -> list[Path]:
    """Every checked-in ModelOpt export under tests/data (directories with a config.json)."""
    if not DATA.is_dir():
        return []
    return sorted(
        p for p in DATA.iterdir() if p.is_dir() and (p / "config.json").is_file() and p.name.startswith(prefix)
    )
