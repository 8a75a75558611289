"""What `train-drafter` builds and how it trains: one kw-only dataclass, the single source of defaults
(the CLI reads them from here), and the assistant `config.json` derived from it and the target."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from ..config import FULL, SLIDING, AssistantConfig, TextConfig, config_from_dict
from ..errors import UsageError

__all__ = ["TrainOptions", "assistant_config_dict", "make_assistant_config"]

TOKEN_LOSSES = ("auto", "full", "clusters")
TOKENS_PER_CENTROID = 128  # the released assistants' cluster size (262,144 / 2,048)


@dataclass(frozen=True, kw_only=True)
class TrainOptions:
    # the assistant
    layers: int = 2  # the last one attends to the target's full-attention KV, the others to sliding
    width: int = 128  # also the width of its tied head: vocab x width dominates the file size
    heads: int = 4  # query heads; they share the target's KV heads
    intermediate: int = 0  # MLP width; 0 = 4 x width
    centroids: int = -1  # centroid-head clusters; -1 = vocab / 128 when that is >= 64, else dense head
    centroid_top_k: int = 32
    # the data (all of it comes from the target)
    sequences: int = 512  # training sequences of seq_len tokens: corpus prompt + the target's continuation
    seq_len: int = 128
    prompt_min: int = 4  # prompt lengths are drawn from [prompt_min, prompt_max] (clipped to the document)
    prompt_max: int = 64
    sample_max: int = 32  # up to this many continuation tokens are sampled (temperature 1) before greedy
    heldout: float = 0.05  # share of corpus documents kept for the held-out acceptance
    heldout_sequences: int = 64  # greedy sequences from those documents, for the acceptance shown
    top_k: int = 8  # target next-token probabilities kept per position
    gen_batch: int = 64  # rows per batched greedy generation
    cache_features: bool = True  # keep the features in the work directory (for --resume)
    # the optimisation
    steps: int = 1000
    batch_size: int = 8  # sequences per step
    draft_steps: int = 3  # the loss unrolls this many draft steps, as the runtime drafts them
    step_decay: float = 0.8  # weight of draft step s is step_decay ** (s - 1)
    cluster_weight: float = 1.0  # weight of the centroid (cluster) loss beside the token loss
    token_loss: str = (
        "auto"  # "full": dense head; "clusters": candidates only; auto: clusters with a centroid head
    )
    lr: float = 2e-3
    warmup: int = 50
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    seed: int = 0
    device: str = "cpu"
    eval_every: int = 100
    checkpoint_every: int = 100
    max_minutes: float = 0.0  # stop (and export) after this long; 0 = no limit
    patience: int = 0  # early stop after this many evaluations without a better held-out length; 0 = off
    autocast: str = "auto"  # "bf16": bfloat16 autocast (the CUDA default); "off": float32; auto: per device

    def __post_init__(self) -> None:
        for name in (
            "layers",
            "width",
            "heads",
            "sequences",
            "seq_len",
            "steps",
            "batch_size",
            "draft_steps",
        ):
            if getattr(self, name) < 1:
                raise UsageError(f"--{name.replace('_', '-')} must be at least 1 (got {getattr(self, name)})")
        if self.seq_len <= self.draft_steps + 1:
            raise UsageError(f"--seq-len {self.seq_len} must exceed --draft-steps + 1")
        if not 1 <= self.prompt_min <= self.prompt_max:
            raise UsageError("prompt lengths must satisfy 1 <= prompt_min <= prompt_max")
        if self.autocast not in ("auto", "bf16", "off"):
            raise UsageError(f"--autocast {self.autocast!r} is not one of auto, bf16, off")
        if self.token_loss not in TOKEN_LOSSES:
            raise UsageError(f"--token-loss {self.token_loss!r} is not one of {', '.join(TOKEN_LOSSES)}")
        if self.device not in ("cpu", "cuda"):
            raise UsageError(f"--device {self.device!r} is not one of cpu, cuda")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainOptions:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def num_centroids(self, vocab: int) -> int:
        if self.centroids >= 0:
            return self.centroids
        n = vocab // TOKENS_PER_CENTROID
        return n if n >= 64 else 0


def assistant_config_dict(target: TextConfig, options: TrainOptions) -> dict[str, Any]:
    """A `gemma4_assistant` config.json for `target`: attention shapes from the target's KV-owning
    layers, RoPE as the target applies it to those keys, backbone = the target width."""
    kinds = [SLIDING] * (options.layers - 1) + [FULL]
    if target.last_kv_owner(SLIDING) is None:
        kinds = [FULL] * options.layers
    owners = {kind: target.layers[target.last_kv_owner(kind)] for kind in set(kinds)}
    full, first = owners[FULL], owners[kinds[0]]
    vocab = target.vocab_size
    n_centroids = options.num_centroids(vocab)
    if n_centroids and vocab % n_centroids:
        raise UsageError(f"--centroids {n_centroids} must divide the vocabulary ({vocab} tokens)")
    if n_centroids and options.centroid_top_k > n_centroids:
        raise UsageError(f"the centroid top-k {options.centroid_top_k} exceeds --centroids {n_centroids}")
    if options.heads % max(spec.kv_heads for spec in owners.values()):
        raise UsageError(f"--heads {options.heads} must be a multiple of the target's KV heads")
    # A Gemma 3 target rotates full-layer keys with plain RoPE: proportional with factor 1 is the same.
    rope_full = target.rope[FULL]
    rope = {
        SLIDING: {"rope_type": "default", "rope_theta": target.rope[SLIDING].theta},
        FULL: {
            "rope_type": "proportional",
            "partial_rotary_factor": rope_full.partial_rotary_factor,
            "rope_theta": rope_full.theta,
            "factor": rope_full.factor,
        },
    }
    text = {
        "model_type": "gemma4_text",
        "vocab_size": vocab,
        "hidden_size": options.width,
        "intermediate_size": options.intermediate or 4 * options.width,
        "num_hidden_layers": options.layers,
        "layer_types": kinds,
        "num_attention_heads": options.heads,
        "num_key_value_heads": first.kv_heads,
        "head_dim": first.head_dim,
        "global_head_dim": full.head_dim,
        "per_layer_config": {
            str(i): {"head_dim": owners[k].head_dim, "num_key_value_heads": owners[k].kv_heads}
            for i, k in enumerate(kinds)
        },
        "sliding_window": target.sliding_window,
        "rms_norm_eps": target.rms_norm_eps,
        "rope_parameters": rope,
        "max_position_embeddings": target.max_position_embeddings,
        "hidden_size_per_layer_input": 0,
        "vocab_size_per_layer_input": 0,
        "eos_token_id": list(target.eos_token_ids),
        "bos_token_id": target.bos_token_id,
        "pad_token_id": target.pad_token_id,
    }
    return {
        "model_type": "gemma4_assistant",
        "architectures": ["Gemma4AssistantForCausalLM"],
        "text_config": text,
        "backbone_hidden_size": target.hidden_size,
        "use_ordered_embeddings": n_centroids > 0,
        "num_centroids": n_centroids or 2048,
        "centroid_intermediate_top_k": options.centroid_top_k,
        "trained_for": target.family,
    }


def make_assistant_config(target: TextConfig, options: TrainOptions) -> AssistantConfig:
    config = config_from_dict(assistant_config_dict(target, options), source="train-drafter")
    assert isinstance(config, AssistantConfig)
    return config
