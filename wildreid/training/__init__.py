"""Multi-species metric learning: the run's config and `train.py` flags, P x K sampling, augmentation,
BatchNorm handling, neck/head initialisation, the Accelerate trainer with exact resume, and Hub push."""
from .arguments import config_from_args
from .config import TrainingConfig
from .trainer import NonFiniteLossError, Trainer, train

__all__ = ["NonFiniteLossError", "Trainer", "TrainingConfig", "config_from_args", "train"]
