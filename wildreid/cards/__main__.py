"""`python -m wildreid.cards model_card.md [--check]`: re-render (or check) results tables (`cli`)."""
import sys

from .cli import main

sys.exit(main())
