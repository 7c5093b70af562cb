"""`python -m wildreid.cards FILE... [--check] [--root DIR]`: re-render (or check) the results tables of
model cards and pages (README.md, docs/results/*.md)."""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from .render import RENDER_COMMAND, ModelCardError, is_page, write_model_card


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=RENDER_COMMAND,
        description="Regenerate the results tables and model-index of a model card from results JSON.",
    )
    parser.add_argument("cards", type=Path, nargs="+", metavar="card",
                        help="model card (e.g. model_card.md) or page (README.md, docs/...) to render")
    parser.add_argument("--check", action="store_true", help="exit 1 if a file is out of date; write nothing")
    parser.add_argument("--root", type=Path, help="folder a page's results files may lie in (default: the page's own)")
    args = parser.parse_args(argv)
    stale = 0
    for card in args.cards:
        command = None
        if args.root is not None and card.is_file() and is_page(card):
            command = f"{RENDER_COMMAND} --root {args.root.as_posix()} {card.as_posix()}"
        try:
            changed = write_model_card(card, check=args.check, root=args.root, command=command)
        except ModelCardError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        stale += changed
        if args.check:
            print(f"{card}: {'out of date' if changed else 'up to date'}")
        else:
            print(f"{card}: {'regenerated' if changed else 'already up to date'}")
    return int(bool(stale)) if args.check else 0

