"""The machinery behind `fastconv train`, `fastconv evaluate` and `fastconv predict` (fastconv.train
holds the command-line interface): engine (training loop, evaluation, prediction), checkpoint
(save/load, RNG states), distributed (torch.distributed setup), report (metrics, confusion matrix,
plot)."""
from .engine import ConfigError, evaluate_checkpoint, predict_files, train

__all__ = ["train", "evaluate_checkpoint", "predict_files", "ConfigError"]
