"""`python -m wildreid.cards model_card.md [--check]`: re-render (or check) a card's results tables."""
import sys

from .render import main

sys.exit(main())
