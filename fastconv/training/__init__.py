"""The machinery behind `fastconv train`, `fastconv evaluate` and `fastconv predict` (their command-line
front-ends are fastconv.cli.train, .evaluate, .predict): config (option defaults, resolve_config),
engine (training loop, evaluation, prediction), checkpoint (save/load, RNG states), distributed
(torch.distributed setup), report (metrics, confusion matrix, plot)."""
from .config import resolve_config, user_errors
from .engine import ConfigError, evaluate_checkpoint, predict_files, train

__all__ = ["train", "evaluate_checkpoint", "predict_files", "ConfigError", "resolve_config", "user_errors"]
