"""Training MTP assistants (drafters) for a target from the target's own outputs: `train_drafter`."""

from .loop import TrainResult, train_drafter
from .options import TrainOptions, assistant_config_dict

__all__ = ["train_drafter", "TrainResult", "TrainOptions", "assistant_config_dict"]
