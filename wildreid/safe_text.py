"""Text from users' files (identity names, image ids, paths) written where it could act instead of being read.

- Spreadsheets run a cell that starts with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return as a formula
  (``=HYPERLINK("http://…", "id")`` sends a click to any address): `spreadsheet_cell` applies the OWASP rule,
  a leading ``'`` that spreadsheets show as text; `write_csv` writes every text cell that way.
- Terminals obey escape sequences in printed text (an identity named ``\\x1b]0;…`` retitles the window, others
  rewrite earlier lines): `printable` shows each control character as its escape instead.
"""
from __future__ import annotations

import csv
import os
import unicodedata
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_cell(value: Any) -> Any:
    """`value` as a CSV cell a spreadsheet shows as text: text starting like a formula gets a leading `'`;
    numbers, booleans and None pass unchanged (a score of -0.2 is a number, not a formula)."""
    if isinstance(value, str) and value.startswith(FORMULA_START):
        return "'" + value
    return value


def write_csv(path: str | os.PathLike, columns: Sequence[str], rows: Iterable[Mapping[str, Any]]) -> Path:
    """Write `rows` (dicts keyed by `columns`; missing keys are empty) as CSV with every cell neutralised by
    `spreadsheet_cell`: the one CSV writer for files a user may open in a spreadsheet."""
    path = Path(path)
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns))
        writer.writeheader()
        for row in rows:
            writer.writerow({key: spreadsheet_cell(value) for key, value in row.items()})
    return path


def printable(text: Any, keep_newlines: bool = False) -> str:
    """`text` safe to print to a terminal: control characters (ESC, BEL, newlines inside a name, C1 codes)
    are shown as Python escapes (``\\x1b``) rather than sent to the terminal; `keep_newlines` for messages
    that span lines on purpose."""
    return "".join(repr(char)[1:-1] if unicodedata.category(char) == "Cc" and not (keep_newlines and char == "\n")
                   else char for char in str(text))
