"""Importance matrices as llama.cpp's `llama-imatrix` computes them, for targets and for MTP drafters.

Per weight matrix, over every row x of its input that a chunk of text produces: the sum of x_j^2 per
input column (`in_sum2`, one row per expert for expert stacks) and the number of rows (`counts`).
Text is split as llama-imatrix splits it: `len(tokens) // chunk_size` chunks of `chunk_size`
tokens, each starting with BOS (its first token replaced), statistics over every token of a chunk.

Which matrices: llama-imatrix records `blk.*` products (and `output.weight` with --process-output;
Gemma's head is tied to `token_embd.weight`, which it never records). A drafter's own matrices
outside the blocks are recorded too: its projections (`nextn.pre_projection`,
`nextn.post_projection`) and its centroid matrix (`masked_embd_centroids`), in any layout's names:
they run at every draft step, and llama-quantize looks an imatrix entry up for each of them.
Entries carry the GGUF tensor names of the file being calibrated.

A drafter is calibrated with its target in the loop: the target runs the chunk once, then for every
position p the speculative MTP drafter (`speculative.mtp.MTPDrafter`, the very code decoding uses)
drafts `n_draft` greedy tokens from the target's hidden state at p - 1 and its KV of positions < p,
with the pending token at p, exactly as a speculative round starting at p would; only the drafter's
products are accumulated. The cache rolls back from the end of the chunk one position at a time (its
sliding ring holds the whole chunk, so nothing is evicted).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch import nn

from ..cache import KVCache
from ..config import AssistantConfig, TextConfig
from ..errors import GemmaMTPError
from ..gguf.names import DRAFTER_HEADS, name_map
from ..models.assistant import AssistantModel
from ..models.gemma import GemmaModel
from ..models.moe import Experts
from ..observe import observing
from ..quant.modules import QuantLinear
from ..sampling import SamplingParams
from ..speculative.base import DraftRequest, SpecOptions
from ..speculative.mtp import MTPDrafter
from .options import IMATRIX_DEFAULTS, ImatrixOptions

__all__ = [
    "Accumulator",
    "Product",
    "product_names",
    "split_chunks",
    "target_chunk",
    "target_states",
    "drafter_chunk",
    "compute_imatrix",
]

GREEDY = SamplingParams(temperature=0)
_DRAFTER_MATRICES = ("pre_projection.weight", "post_projection.weight", "masked_embedding.centroids.weight")
# a drafter's matrices outside its blocks, in every layout's names
DRAFTER_MATRICES = frozenset(heads[k] for heads in DRAFTER_HEADS.values() for k in _DRAFTER_MATRICES)
OUTPUT_HEAD = "output.weight"  # a separate output head (Gemma's is tied: never recorded)


@dataclass(frozen=True)
class Product:
    """One observed product: the GGUF tensors whose input it is (q/k/v fused: three) and how many
    matrices each has (experts: one per expert)."""

    holder: object  # kept so that its id stays this object's
    names: tuple[str, ...]
    n_mat: int = 1


def _recorded(name: str, *, drafter: bool, process_output: bool) -> bool:
    if name.startswith("blk."):
        return True
    if drafter and name in DRAFTER_MATRICES:
        return True
    return process_output and name == OUTPUT_HEAD


def product_names(
    model: nn.Module,
    config: TextConfig | AssistantConfig,
    *,
    layout: str | None = None,
    process_output: bool = False,
) -> dict[int, Product]:
    """id(module or expert stack) -> the GGUF tensors it multiplies by, for every recorded matrix."""
    drafter = isinstance(config, AssistantConfig)
    by_path: dict[str, str] = {}
    out: dict[int, Product] = {}
    for ours, theirs in name_map(config, layout if drafter else None).items():
        if not _recorded(theirs, drafter=drafter, process_output=process_output):
            continue
        path, _, leaf = ours.rpartition(".")
        try:
            module = model.get_submodule(path)
        except AttributeError:  # a tensor this model does not have (k/v of a KV-shared layer)
            continue
        if leaf == "weight" and isinstance(module, (nn.Linear, QuantLinear)):
            out[id(module)] = Product(module, (theirs,))
            by_path[path] = theirs
        elif isinstance(module, Experts) and leaf in ("gate_up_proj", "down_proj"):
            stack = getattr(module, leaf)
            out[id(stack)] = Product(stack, (theirs,), stack.shape[0])
    # fused q/k/v and gate/up: one product whose input is each part's
    for path, module in model.named_modules():
        prefix = f"{path}." if path else ""
        for attr, parts in (
            ("fused_qkv", ("q_proj", "k_proj", "v_proj")),
            ("fused_gate_up", ("gate_proj", "up_proj")),
        ):
            fused = getattr(module, attr, None)
            if fused is None:
                continue
            names = tuple(
                by_path[prefix + p]
                for p in parts
                if getattr(module, p, None) is not None and prefix + p in by_path
            )
            if names:
                out[id(fused)] = Product(fused, names)
    return out


@dataclass
class Accumulator:
    """The observer: sums of x^2 per input column (float64) and row counts per recorded tensor."""

    products: dict[int, Product]
    sums: dict[str, torch.Tensor] = field(default_factory=dict)  # [n_mat, K] float64
    counts: dict[str, torch.Tensor] = field(default_factory=dict)  # [n_mat] int64

    def __call__(self, holder: object, x: torch.Tensor, expert: int | None) -> None:
        product = self.products.get(id(holder))
        if product is None:
            return
        flat = x.detach().reshape(-1, x.shape[-1]).to(device="cpu", dtype=torch.float64)
        square = (flat * flat).sum(dim=0)
        for name in product.names:
            if name not in self.sums:
                self.sums[name] = torch.zeros(product.n_mat, flat.shape[1], dtype=torch.float64)
                self.counts[name] = torch.zeros(product.n_mat, dtype=torch.long)
            row = 0 if expert is None else expert
            self.sums[name][row] += square
            self.counts[name][row] += flat.shape[0]

    def check_finite(self) -> None:
        for name, s in self.sums.items():
            if not bool(torch.isfinite(s).all()):
                raise GemmaMTPError(
                    f"non-finite activations reached {name}; the model or its inputs are broken"
                )

    def entries(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """name -> (in_sum2 float32 [n_mat, K], counts float32 [n_mat]), sorted by name as llama.cpp."""
        return {name: (self.sums[name].float(), self.counts[name].float()) for name in sorted(self.sums)}


def split_chunks(
    tokens: list[int], chunk_size: int, bos_id: int | None, max_chunks: int | None
) -> list[list[int]]:
    """llama-imatrix's chunks: whole `chunk_size` slices from the start, each beginning with BOS."""
    n = len(tokens) // chunk_size
    if max_chunks is not None:
        n = min(n, max_chunks)
    chunks = []
    for i in range(n):
        chunk = tokens[i * chunk_size : (i + 1) * chunk_size]
        if bos_id is not None:
            chunk[0] = bos_id
        chunks.append(chunk)
    return chunks


def _forward(target: GemmaModel, chunk: list[int], cache: KVCache) -> torch.Tensor:
    tokens = torch.tensor([chunk], dtype=torch.long)
    positions = torch.arange(len(chunk), dtype=torch.long)[None]
    return target(tokens, positions, cache).hidden


@torch.inference_mode()
def target_chunk(target: GemmaModel, chunk: list[int], accumulate: Accumulator) -> None:
    """The target over one chunk, every product observed."""
    cache = target.make_cache(batch_size=1, max_context=len(chunk), max_draft=0)
    with observing(accumulate):
        _forward(target, chunk, cache)


def target_states(target: GemmaModel, chunk: list[int]) -> tuple[torch.Tensor, KVCache]:
    """What a drafter reads: the target's final hidden states [1, T, D] over the chunk and its KV
    cache (a sliding ring as long as the chunk, so any position can be rolled back to). The cache is
    made outside inference mode, as the engine makes its own, so that it can be rolled back."""
    cache = target.make_cache(batch_size=1, max_context=len(chunk), max_draft=len(chunk))
    with torch.inference_mode():
        return _forward(target, chunk, cache), cache


def drafter_chunk(
    target: GemmaModel,
    assistant: AssistantModel,
    chunk: list[int],
    accumulate: Accumulator,
    *,
    n_draft: int,
    states: tuple[torch.Tensor, KVCache] | None = None,
) -> None:
    """The drafter's greedy rounds at every position 1..T-1 of the chunk, its products observed.
    `states`: the target's (`target_states`), computed here when not given."""
    hidden, cache = states if states is not None else target_states(target, chunk)
    drafter = MTPDrafter(target, assistant, cache)
    spec = SpecOptions(type="mtp", n_max=n_draft)
    with observing(accumulate):
        for p in range(len(chunk) - 1, 0, -1):  # the cache only rolls back
            cache.rollback([p])
            request = DraftRequest(0, chunk[: p + 1], n_draft, GREEDY, spec, None)
            drafter.propose([request], hidden[:, p - 1 : p])


def compute_imatrix(
    target: GemmaModel,
    chunks: list[list[int]],
    products: dict[int, Product],
    *,
    assistant: AssistantModel | None = None,
    options: ImatrixOptions = IMATRIX_DEFAULTS,
) -> Iterator[Accumulator]:
    """Accumulate over `chunks`, yielding the accumulator after each chunk (for progress and the
    periodic writes); the products are the target's, or the assistant's when one is given."""
    accumulate = Accumulator(products)
    for chunk in chunks:
        if assistant is None:
            target_chunk(target, chunk, accumulate)
        else:
            drafter_chunk(target, assistant, chunk, accumulate, n_draft=options.n_draft)
        accumulate.check_finite()
        yield accumulate
