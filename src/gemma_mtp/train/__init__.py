"""Training MTP assistants (drafters) for a target from the target's own outputs: `train_drafter`.

The names are imported lazily, so that ``gemma-mtp --help`` (which registers train-drafter's flags
from `train.options`) does not import torch.
"""

from __future__ import annotations

from gemma_mtp.lazy import lazy_getattr

__all__ = ["train_drafter", "TrainResult", "TrainOptions", "assistant_config_dict"]

_LAZY = {
    "train_drafter": "gemma_mtp.train.loop",
    "TrainResult": "gemma_mtp.train.loop",
    "TrainOptions": "gemma_mtp.train.options",
    "assistant_config_dict": "gemma_mtp.train.options",
}


__getattr__ = lazy_getattr("gemma_mtp.train", _LAZY, globals())
