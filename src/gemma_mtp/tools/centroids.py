"""Putting a drafter's centroid head back from its Hugging Face checkpoint (`convert --centroids-from`).

llama.cpp's converter drops the E2B/E4B assistants' centroid head (`masked_embedding.*`), and so
does our mainline output by default; such a file drafts with the full vocabulary head. The head is
two tensors of the checkpoint (centroids [num_centroids, width], token_ordering [vocab]) and two
numbers of its config.json; nothing else of the file changes.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
from safetensors import safe_open

from ..config import AssistantConfig, load_config
from ..errors import ModelFormatError
from ..weights.hf import safetensors_files

__all__ = ["CentroidHead", "hf_centroid_head"]

CENTROIDS = "masked_embedding.centroids.weight"
ORDERING = "masked_embedding.token_ordering"


class CentroidHead:
    """The head's tensors (float32 centroids, int64 ordering) and its sizes."""

    def __init__(self, source: Path, centroids: np.ndarray, ordering: np.ndarray, top_k: int) -> None:
        self.source = source
        self.centroids = centroids
        self.ordering = ordering
        self.top_k = top_k

    def check_fits(self, config: AssistantConfig, where: str) -> None:
        """Refuse a head made for another drafter (other vocabulary or width)."""
        n, width = self.centroids.shape
        text = config.text
        if width != text.hidden_size or self.ordering.shape != (text.vocab_size,) or text.vocab_size % n:
            raise ModelFormatError(
                f"{self.source}: its centroid head ({n} x {width}, ordering of {self.ordering.shape[0]}) "
                f"does not fit {where} (width {text.hidden_size}, vocabulary {text.vocab_size}); pass the "
                "checkpoint this drafter was converted from"
            )

    def applied(self, config: AssistantConfig) -> AssistantConfig:
        return replace(
            config,
            use_ordered_embeddings=True,
            num_centroids=self.centroids.shape[0],
            centroid_top_k=self.top_k,
        )


def hf_centroid_head(src_dir: str | Path) -> CentroidHead:
    """The centroid head of the HF assistant checkpoint in `src_dir`."""
    src = Path(src_dir)
    config = load_config(src)
    if not isinstance(config, AssistantConfig) or not config.use_ordered_embeddings:
        raise ModelFormatError(
            f"{src}: not an assistant checkpoint with a centroid head (use_ordered_embeddings); "
            "--centroids-from needs the E2B/E4B-style assistant the drafter was converted from"
        )
    found: dict[str, np.ndarray] = {}
    for f in safetensors_files(src):
        with safe_open(str(f), framework="pt") as handle:
            for name in handle.keys():
                if name.endswith((CENTROIDS, ORDERING)):
                    found[CENTROIDS if name.endswith(CENTROIDS) else ORDERING] = handle.get_tensor(name)
    missing = [name for name in (CENTROIDS, ORDERING) if name not in found]
    if missing:
        raise ModelFormatError(f"{src}: missing tensor {missing[0]}; the checkpoint is incomplete")
    centroids = found[CENTROIDS].float().numpy()
    ordering = found[ORDERING].numpy().astype(np.int64)
    return CentroidHead(src, centroids, ordering, config.centroid_top_k)
