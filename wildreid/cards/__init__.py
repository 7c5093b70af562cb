"""Model cards: rendering results JSON into a card's tables and `model-index` (`python -m wildreid.cards`),
and new cards for trained models."""
from .new import new_model_card, training_card
from .render import ModelCardError, render_model_card, render_results_table, write_model_card

__all__ = ["ModelCardError", "new_model_card", "render_model_card", "render_results_table", "training_card",
           "write_model_card"]
