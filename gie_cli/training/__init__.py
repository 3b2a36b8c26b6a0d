"""Training: the shared loop (`gie train`), run folders, data, and the trainer interface and registry.

Trainers live beside their method (``gie_cli/methods/<name>/train.py``) and are listed in :mod:`gie_cli.catalog`.
"""

from gie_cli.training.base import Trainer
from gie_cli.training.registry import create_trainer, list_trainers, register_trainer

__all__ = ["Trainer", "create_trainer", "list_trainers", "register_trainer"]
