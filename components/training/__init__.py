"""components.training: the project's single training loop, its checkpoints and device choice."""

from .checkpoint import load_checkpoint, save_checkpoint
from .device import pick_device
from .loop import TrainConfig, TrainHooks, TrainResult, train_classifier

__all__ = ["TrainConfig", "TrainHooks", "TrainResult", "load_checkpoint", "pick_device", "save_checkpoint",
           "train_classifier"]
