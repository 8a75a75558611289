"""A fresh assistant initialised from its target, and the trained one written as a HF checkpoint
(safetensors + config.json) and as a GGUF in the llama.cpp mainline drafter layout."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from ..config import AssistantConfig
from ..models.assistant import AssistantModel
from ..models.gemma import GemmaModel
from ..tools.convert import convert_hf_to_gguf
from .clusters import balanced_clusters

__all__ = ["init_assistant", "load_assistant", "save_hf", "save_gguf"]


@torch.no_grad()
def init_assistant(target: GemmaModel, config: AssistantConfig, *, seed: int) -> AssistantModel:
    """Random body; head table = the target's embeddings projected on their top principal directions
    (so hidden . row starts out like the target's own scores); clusters from the target embeddings;
    query norms at the target's attention scale (the assistant's attention scale is 1.0, Gemma 4's,
    while a Gemma 3 target scales its own queries by query_pre_attn_scalar ** -0.5)."""
    torch.manual_seed(seed)
    model = AssistantModel(config)
    width = config.text.hidden_size
    emb = target.embed_tokens.weight.detach().float()
    if width <= min(emb.shape):
        torch.manual_seed(seed)
        centred = emb - emb.mean(dim=0, keepdim=True)
        _, _, basis = torch.pca_lowrank(centred, q=width, center=False, niter=2)
        table = centred @ basis
        model.model.embed_tokens.weight.copy_((table / table.norm(dim=1).mean()).cpu())
    for layer in model.model.layers:
        layer.self_attn.q_norm.weight.fill_(target.config.attention_scale)
    head = model.masked_embedding
    if head is not None:
        ordering = balanced_clusters(emb, head.num_centroids, seed=seed)
        head.token_ordering.copy_(ordering)
        rows = model.model.embed_tokens.weight[ordering].view(head.num_centroids, head.per_centroid, width)
        head.centroids.weight.copy_(rows.mean(dim=1))
    return model


def save_hf(
    model: AssistantModel,
    config_dict: dict[str, Any],
    out_dir: str | Path,
    *,
    dtype: torch.dtype = torch.bfloat16,
) -> Path:
    """Write model.safetensors (floats in `dtype`, token_ordering int64) and config.json."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {
        name: (t.detach().to(dtype) if t.is_floating_point() else t.detach()).contiguous().cpu()
        for name, t in model.state_dict().items()
    }
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    dtype_name = str(dtype).removeprefix("torch.")
    (out / "config.json").write_text(json.dumps({**config_dict, "dtype": dtype_name}, indent=2) + "\n")
    return out


def save_gguf(hf_dir: str | Path, out_path: str | Path, *, out_type: str = "Q8_0") -> Path:
    """The HF checkpoint as a mainline-layout drafter GGUF (the centroid tensors kept: gemma-mtp
    drafts with the cheap head; llama.cpp cannot load such a file, see tools.convert)."""
    return convert_hf_to_gguf(hf_dir, out_path, layout="mainline", out_type=out_type, keep_centroids=True)


def load_assistant(path: str | Path) -> tuple[AssistantModel, dict[str, Any]]:
    """An existing assistant to fine-tune (`train-drafter --init`): a GGUF in any of the three drafter
    layouts or an HF directory, dequantized to float32 with every float tensor trainable; and its
    HF config dict (what `save_hf` writes back)."""
    from ..errors import ModelFormatError
    from ..gguf.formats import GGUF, model_format

    path = Path(path)
    if model_format(path) == GGUF:
        from ..weights.gguf_loader import load_gguf_model

        model, config, _ = load_gguf_model(path, dtype="float32", quantized=False)
    else:
        from ..weights.hf import load_hf_model

        model, config, _ = load_hf_model(path, dtype="float32")
    if not isinstance(config, AssistantConfig):
        raise ModelFormatError(f"--init {path}: not an assistant (drafter); it has no pre/post projection")
    for p in model.parameters():
        p.requires_grad_(p.is_floating_point())
    raw = dict(config.raw)
    raw.setdefault("architectures", ["Gemma4AssistantForCausalLM"])
    raw.pop("dtype", None)
    return model, raw
