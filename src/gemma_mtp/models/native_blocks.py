"""A decoder layer's attention and feed-forward halves as one native call each (`native/csrc/layer.cpp`).

`install_native_layers(model)` runs at load: every decoder layer whose weights qualify becomes a
`NativeDecoderLayer` (the same module, parameters and state; only its forward differs), so the
plain `DecoderLayer.forward` has no second branch.

Taken for float32 inference on the CPU when the layer's matrices are GGUF blocks read in place and
fused (q/k/v, gate/up): at one token per step the ~20 small ops of a layer cost more in Python and
dispatch than their arithmetic. The native blocks compose the same kernels in the same order as the
modules' own forwards, so each row's result is independent of the other rows, as before. Anything
else (training, other dtypes and kernels, MoE, KV-shared layers, prompt-length forwards for the
attention half) takes the modules' forwards.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .. import observe
from ..config import FULL
from ..ops import ROW_ATTENTION_MAX_T, native_for
from .common import RMSNorm
from .gemma import DecoderLayer

__all__ = [
    "NativeAttention",
    "NativeMLP",
    "NativeDecoderLayer",
    "install_native_layers",
    "native_attention",
    "native_mlp",
    "NO_TENSOR",
]

NO_TENSOR = torch.empty(0)
NO_INDEX = torch.empty(0, dtype=torch.long)
ACTIVATION_CODES = {"gelu_pytorch_tanh": 0, "gelu": 1, "silu": 2}


@dataclass(frozen=True)
class NativeMLP:
    pre: RMSNorm
    post: RMSNorm
    gate_up: list[torch.Tensor]
    gate_up_types: list[int]
    down: torch.Tensor
    down_type: int
    act: int


@dataclass(frozen=True)
class NativeAttention:
    norm: RMSNorm
    post: RMSNorm
    qkv: list[torch.Tensor]
    qkv_types: list[int]
    sizes: list[int]  # q, k, v widths (k = v: v 0; a layer reading another's KV: k and v 0)
    q_norm: RMSNorm
    k_norm: RMSNorm | None
    v_norm: bool
    o: torch.Tensor
    o_type: int


def _blocks(linear: nn.Module | None):
    """(data, type) of a QuantLinear over one GGUF block matrix, else None."""
    weight = getattr(linear, "qweight", None)
    if getattr(weight, "kind", None) != "gguf" or not hasattr(weight, "data"):
        return None
    return weight.kernel_data, weight.kernel_type


def _fused_blocks(fused: nn.Module | None, count: int):
    weight = getattr(fused, "weight", None)
    parts = getattr(weight, "parts", None)
    if getattr(weight, "kind", None) != "gguf" or parts is None or len(parts) != count:
        return None
    return weight.kernel_data, weight.kernel_types


def _norms_ok(*norms: RMSNorm) -> bool:
    return all(n.weight is not None and n.weight.dtype == torch.float32 for n in norms)


def native_mlp(layer: nn.Module, activation: str) -> NativeMLP | None:
    mlp = layer.mlp
    fused, down = _fused_blocks(mlp.fused_gate_up, 2), _blocks(mlp.down_proj)
    pre, post = layer.pre_feedforward_layernorm, layer.post_feedforward_layernorm
    if fused is None or down is None or activation not in ACTIVATION_CODES or not _norms_ok(pre, post):
        return None
    return NativeMLP(pre, post, *fused, *down, ACTIVATION_CODES[activation])


def native_attention(layer: nn.Module) -> NativeAttention | None:
    attn = layer.self_attn
    if not attn.spec.owns_kv:  # q only (KV-shared target layers, assistant layers)
        q, o = _blocks(attn.q_proj), _blocks(attn.o_proj)
        norms = (layer.input_layernorm, layer.post_attention_layernorm, attn.q_norm)
        if q is None or o is None or attn.fused_qkv is not None or not _norms_ok(*norms):
            return None
        sizes = [attn.q_proj.out_features, 0, 0]
        return NativeAttention(*norms[:2], [q[0]], [q[1]], sizes, attn.q_norm, None, False, *o)
    count = 2 if attn.v_proj is None else 3
    fused, o = _fused_blocks(attn.fused_qkv, count), _blocks(attn.o_proj)
    norms = (layer.input_layernorm, layer.post_attention_layernorm, attn.q_norm, attn.k_norm)
    if fused is None or o is None or not _norms_ok(*norms):
        return None
    linears = [attn.q_proj, attn.k_proj] + ([] if attn.v_proj is None else [attn.v_proj])
    sizes = [m.out_features for m in linears] + ([0] if attn.v_proj is None else [])
    return NativeAttention(
        layer.input_layernorm,
        layer.post_attention_layernorm,
        *fused,
        sizes,
        attn.q_norm,
        attn.k_norm,
        attn.v_norm is not None,
        *o,
    )


def ops_for(x: torch.Tensor):
    """The native module when x qualifies (float32 CPU inference), else None; None as well while
    the products are observed (`gemma_mtp.observe`: the modules' path, the same numbers)."""
    return native_for(x) if not x.requires_grad and observe.OBSERVER is None else None


def run_attention(ops, spec: NativeAttention, attn: nn.Module, x, cos, sin, plan, cache, shared):
    """x + post_norm(self_attn(input_norm(x))), T <= ROW_ATTENTION_MAX_T; None (nothing done) when
    the KV this layer reads is not what the row kernel takes (another batch size, dtype or device)."""
    if not attn.spec.owns_kv:  # as Attention.forward: an earlier layer's KV, or the target's of this kind
        kv = shared[attn.spec.kv_source if attn.spec.kv_source >= 0 else attn.spec.kind]
        keys = kv[0]
        if keys.shape[0] != x.shape[0] or ops_for(keys) is None or kv[2].device.type != "cpu":
            return None
    eps = spec.norm.eps
    # the KV goes into the cache in the same call when the cache is float32 on the CPU
    target = cache.write_slots(attn.spec.index, plan) if attn.spec.owns_kv else None
    if target is not None and ops_for(target[0]) is None:
        target = None
    out = ops.attn_in(
        x, spec.norm._scale(), eps, spec.qkv, spec.qkv_types, spec.sizes, attn.spec.head_dim,
        spec.q_norm._scale(), NO_TENSOR if spec.k_norm is None else spec.k_norm._scale(), spec.v_norm,
        NO_TENSOR if cos is None else cos.contiguous(), NO_TENSOR if sin is None else sin.contiguous(),
        *(target or (NO_TENSOR, NO_TENSOR, NO_INDEX, NO_INDEX)),
    )  # fmt: skip
    if target is not None:
        kv = shared[attn.spec.index] = cache.written_kv(attn.spec.index, plan)
    elif attn.spec.owns_kv:
        attend = cache.attend_full if attn.spec.kind == FULL else cache.attend_sliding
        kv = attend(attn.spec.index, plan, out[1].transpose(1, 2), out[2].transpose(1, 2))
        shared[attn.spec.index] = kv
    keys, values, mask = kv
    return ops.attn_out(
        x, out[0], keys, values, mask, attn.scale, attn.logit_cap or 0.0, spec.o, spec.o_type,
        spec.post._scale(), eps,
    )  # fmt: skip


def run_mlp(ops, spec: NativeMLP, x: torch.Tensor) -> torch.Tensor:
    """x + post_norm(mlp(pre_norm(x)))."""
    return ops.mlp_block(
        x, spec.pre._scale(), spec.post._scale(), spec.pre.eps, spec.gate_up, spec.gate_up_types,
        spec.down, spec.down_type, spec.act,
    )  # fmt: skip


def attention_fits(x: torch.Tensor) -> bool:
    return x.shape[1] <= ROW_ATTENTION_MAX_T


class NativeDecoderLayer(DecoderLayer):
    """A `DecoderLayer` whose halves run as native blocks where their weights allow it.

    Made by `install_native_layers` (never constructed directly). Input that does not qualify
    (autograd, another dtype or device, a prompt-length attention half, KV the row kernel cannot
    read) takes the plain `DecoderLayer` path, so the results are the module path's bit for bit.
    """

    native_specs: tuple[NativeAttention | None, NativeMLP | None]

    def forward(self, x, ple, cos, sin, plan, cache, shared):
        ops = ops_for(x)
        if ops is None:
            return super().forward(x, ple, cos, sin, plan, cache, shared)
        attn_spec, mlp_spec = self.native_specs
        out = None
        if attn_spec is not None and attention_fits(x):
            out = run_attention(ops, attn_spec, self.self_attn, x, cos, sin, plan, cache, shared)
        x = out if out is not None else self._attention(x, cos, sin, plan, cache, shared)
        x = run_mlp(ops, mlp_spec, x) if mlp_spec is not None else self._feed_forward(x)
        return self._finish(x, ple)


def install_native_layers(model: nn.Module) -> int:
    """Turn every qualifying decoder layer of ``model`` into a `NativeDecoderLayer`; how many."""
    count = 0
    for layer in model.modules():
        if type(layer) is not DecoderLayer:
            continue
        specs = (native_attention(layer), None if layer.moe else native_mlp(layer, layer.activation))
        if specs == (None, None):
            continue
        layer.__class__ = NativeDecoderLayer
        layer.native_specs = specs
        count += 1
    return count
