"""What a GGUF holds (`inspect`), how two differ (`diff`) and whether a target and a drafter belong
together (`pair`): plain data for the CLI to format (JSON-ready dicts and dataclasses)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGUFValueType, LlamaFileType

from ..config import FULL, SLIDING, AssistantConfig, TextConfig
from ..errors import GemmaMTPError, ModelFormatError
from ..gguf.keys import LAYOUT_BY_ARCH, K
from ..gguf.metadata import config_from_gguf
from ..gguf.reader import Field, GGUFFile, open_gguf, tensor_shape
from .sanitize import find_leaks

__all__ = ["inspect_gguf", "diff_gguf", "pair_gguf", "Check", "PairReport", "describe_value"]

MAX_SHOWN = 80  # characters of a metadata value shown in a diff


def _file_type_name(value: Any) -> str | None:
    if value is None:
        return None
    try:
        return LlamaFileType(int(value)).name.removeprefix("MOSTLY_").removeprefix("ALL_")
    except ValueError:
        return f"unknown ({value})"


def _kind_values(text: TextConfig, attr: str) -> dict[str, int]:
    out = {}
    for kind in (SLIDING, FULL):
        values = {getattr(s, attr) for s in text.layers if s.kind == kind}
        if values:
            out[kind] = values.pop() if len(values) == 1 else sorted(values)
    return out


def hyperparameters(config: TextConfig | AssistantConfig) -> dict[str, Any]:
    text = config.text if isinstance(config, AssistantConfig) else config
    out: dict[str, Any] = {
        "family": text.family,
        "vocab_size": text.vocab_size,
        "hidden_size": text.hidden_size,
        "intermediate_size": text.intermediate_size,
        "num_layers": text.num_layers,
        "layers": {kind: sum(s.kind == kind for s in text.layers) for kind in (SLIDING, FULL)},
        "num_heads": text.num_heads,
        "kv_heads": _kind_values(text, "kv_heads"),
        "head_dim": _kind_values(text, "head_dim"),
        "sliding_window": text.sliding_window,
        "kv_shared_layers": sum(not s.owns_kv for s in text.layers) if not config.is_assistant else None,
        "max_position_embeddings": text.max_position_embeddings,
        "final_logit_softcapping": text.final_logit_softcapping,
    }
    if text.num_experts:
        out.update(num_experts=text.num_experts, top_k_experts=text.top_k_experts)
    if text.ple_dim:
        out["per_layer_input_dim"] = text.ple_dim
    if isinstance(config, AssistantConfig):
        out.update(
            backbone_hidden_size=config.backbone_hidden_size,
            use_ordered_embeddings=config.use_ordered_embeddings,
            num_centroids=config.num_centroids,
            centroid_top_k=config.centroid_top_k,
        )
    return {k: v for k, v in out.items() if v is not None}


def _tensor_summary(gf: GGUFFile) -> dict[str, Any]:
    by_type: dict[str, dict[str, int]] = {}
    rows = []
    for t in gf.tensors.values():
        n = int(np.prod(t.shape, dtype=np.int64))
        entry = by_type.setdefault(t.tensor_type.name, {"count": 0, "parameters": 0, "bytes": 0})
        entry["count"] += 1
        entry["parameters"] += n
        entry["bytes"] += t.n_bytes
        rows.append(
            {"name": t.name, "type": t.tensor_type.name, "shape": list(tensor_shape(t)), "bytes": t.n_bytes}
        )
    params = sum(e["parameters"] for e in by_type.values())
    size = sum(e["bytes"] for e in by_type.values())
    return {
        "count": len(rows),
        "parameters": params,
        "bytes": size,
        "bits_per_weight": round(size * 8 / params, 3) if params else None,
        "by_type": dict(sorted(by_type.items(), key=lambda kv: -kv[1]["bytes"])),
        "list": rows,
    }


def inspect_gguf(path: str | Path) -> dict[str, Any]:
    """Everything `gemma-mtp inspect` shows, as one JSON-ready dict."""
    gf = open_gguf(path)
    layout = LAYOUT_BY_ARCH[gf.arch].name if gf.arch in LAYOUT_BY_ARCH else None
    info: dict[str, Any] = {
        "file": str(gf.path),
        "size_bytes": gf.path.stat().st_size,
        "architecture": gf.arch,
        "kind": "drafter" if layout else "target",
        "layout": layout,
        "file_type": _file_type_name(gf.value(K.FILE_TYPE)),
        "quantization_version": gf.value(K.QUANTIZATION_VERSION),
        "metadata_keys": len(gf.fields),
        "tokenizer": _tokenizer(gf),
    }
    try:
        config, _, notices = config_from_gguf(gf)
        info["hyperparameters"], info["notices"] = hyperparameters(config), notices
    except GemmaMTPError as exc:
        info["kind"] = "unsupported"
        info["hyperparameters"], info["notices"] = None, [str(exc)]
    info["tensors"] = _tensor_summary(gf)
    info["leaks"] = [asdict(leak) for leak in find_leaks(gf)]
    return info


def _tokenizer(gf: GGUFFile) -> dict[str, Any] | None:
    tokens = gf.value(K.TOKENS)
    if tokens is None:
        return None
    return {
        "model": gf.value("tokenizer.ggml.model"),
        "tokens": len(tokens),
        "chat_template": gf.value("tokenizer.chat_template") is not None,
    }


# ------------------------------------------------------------------------------------- diff


def describe_value(f: Field) -> str:
    """A metadata value on one line: arrays by type and length (and a short preview)."""
    if f.type == GGUFValueType.ARRAY:
        sub = f.sub_type.name.lower() if f.sub_type is not None else "?"
        preview = ", ".join(repr(v) for v in f.value[:4])
        more = ", ..." if len(f.value) > 4 else ""
        return f"[{len(f.value)} x {sub}: {preview}{more}]"
    text = repr(f.value)
    return text if len(text) <= MAX_SHOWN else text[: MAX_SHOWN - 3] + "..."


def diff_gguf(a: str | Path, b: str | Path) -> dict[str, Any]:
    """Metadata keys only in A, only in B, and present in both with different values (or types);
    and the same for tensors (by name: type and shape)."""
    fa, fb = open_gguf(a), open_gguf(b)
    only_a = [{"key": k, "a": describe_value(f)} for k, f in fa.fields.items() if k not in fb.fields]
    only_b = [{"key": k, "b": describe_value(f)} for k, f in fb.fields.items() if k not in fa.fields]
    different = [
        {"key": k, "a": describe_value(f), "b": describe_value(fb.fields[k])}
        for k, f in fa.fields.items()
        if k in fb.fields and f != fb.fields[k]
    ]

    def tensor(t) -> str:
        return f"{t.tensor_type.name} {list(tensor_shape(t))}"

    ta, tb = fa.tensors, fb.tensors
    return {
        "a": str(fa.path),
        "b": str(fb.path),
        "metadata": {"only_in_a": only_a, "only_in_b": only_b, "different": different},
        "tensors": {
            "only_in_a": [{"name": n, "a": tensor(t)} for n, t in ta.items() if n not in tb],
            "only_in_b": [{"name": n, "b": tensor(t)} for n, t in tb.items() if n not in ta],
            "different": [
                {"name": n, "a": tensor(t), "b": tensor(tb[n])}
                for n, t in ta.items()
                if n in tb and (t.tensor_type, t.shape) != (tb[n].tensor_type, tb[n].shape)
            ],
        },
        "identical_metadata": not (only_a or only_b or different),
    }


# ------------------------------------------------------------------------------------- pair


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool | None  # None: could not be checked (reason in detail)
    detail: str


@dataclass(frozen=True)
class PairReport:
    target: str
    draft: str
    compatible: bool
    verdict: str
    checks: list[Check]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _check(name: str, ok: bool, good: str, bad: str) -> Check:
    return Check(name, ok, good if ok else bad)


def _tokenizer_check(target: GGUFFile, draft: GGUFFile) -> Check:
    t_tokens, d_tokens = target.value(K.TOKENS), draft.value(K.TOKENS)
    if t_tokens is None or d_tokens is None:
        which = "drafter" if d_tokens is None else "target"
        return Check("tokenizer", None, f"not compared: the {which} file carries no tokenizer")
    if t_tokens == d_tokens:
        return Check("tokenizer", True, f"identical token tables ({len(t_tokens)} tokens)")
    first = next((i for i, (x, y) in enumerate(zip(t_tokens, d_tokens, strict=False)) if x != y), None)
    where = f"first difference at token {first}" if first is not None else "different lengths"
    return Check(
        "tokenizer", False, f"token tables differ ({len(t_tokens)} vs {len(d_tokens)} tokens, {where})"
    )


def _attention_checks(target: TextConfig, draft: AssistantConfig) -> list[Check]:
    """Per attention type, the drafter's head dim and KV heads against the target layer whose KV
    it reads (the last KV-owning layer of that type)."""
    checks = []
    for kind in (SLIDING, FULL):
        layers = [s for s in draft.text.layers if s.kind == kind]
        if not layers:
            continue
        owner = target.last_kv_owner(kind)
        if owner is None:
            checks.append(Check(f"head dim ({kind})", False, f"the target has no {kind} layer with KV"))
            continue
        src = target.layers[owner]
        for attr, label in (("head_dim", "head dim"), ("kv_heads", "KV heads")):
            want, got = getattr(src, attr), {getattr(s, attr) for s in layers}
            checks.append(
                _check(
                    f"{label} ({kind})",
                    got == {want},
                    f"{want} (the drafter reads target layer {owner})",
                    f"drafter {sorted(got)}, target layer {owner} has {want}",
                )
            )
    return checks


def pair_gguf(target_path: str | Path, draft_path: str | Path) -> PairReport:
    """Each compatibility check and a verdict; the verdict also applies the engine's own rule
    (`speculative.mtp.check_pair`), so `pair` never approves what `run` would refuse."""
    tf, df = open_gguf(target_path), open_gguf(draft_path)
    target, _, _ = config_from_gguf(tf)
    draft, layout, _ = config_from_gguf(df)
    checks = [
        _check(
            "target architecture",
            tf.arch == "gemma4" and not target.is_assistant,
            f"{tf.arch} (family {target.family})",
            f"{tf.arch}: MTP drafters pair with gemma4 targets",
        ),
        _check(
            "drafter architecture",
            draft.is_assistant,
            f"{df.arch} ({layout} layout)",
            f"{df.arch} is not an MTP assistant",
        ),
    ]
    if not isinstance(draft, AssistantConfig) or target.is_assistant:
        return _report(tf, df, checks, "the draft file is not an MTP drafter for this target")
    required = df.arch_value("requires_target_arch")
    if required is not None:
        checks.append(
            _check("required target", required == tf.arch, required, f"{required}, target is {tf.arch}")
        )
    checks += [
        _check(
            "family",
            draft.family == target.family,
            target.family,
            f"drafter {draft.family}, target {target.family}",
        ),
        _check(
            "vocabulary size",
            draft.vocab_size == target.vocab_size,
            str(target.vocab_size),
            f"drafter {draft.vocab_size}, target {target.vocab_size}",
        ),
        _tokenizer_check(tf, df),
        _check(
            "backbone width",
            draft.backbone_hidden_size == target.hidden_size,
            str(target.hidden_size),
            f"drafter expects {draft.backbone_hidden_size}, target has {target.hidden_size}",
        ),
        *_attention_checks(target, draft),
        _check(
            "sliding window",
            draft.text.sliding_window == target.sliding_window,
            str(target.sliding_window),
            f"drafter {draft.text.sliding_window}, target {target.sliding_window}",
        ),
    ]
    from ..speculative.mtp import check_pair  # the engine's rule; imported late: gguf sits below it

    engine_error = None
    try:
        check_pair(target, draft)
    except ModelFormatError as exc:
        engine_error = str(exc)
    return _report(tf, df, checks, engine_error)


def _report(tf: GGUFFile, df: GGUFFile, checks: list[Check], error: str | None) -> PairReport:
    failed = [c for c in checks if c.ok is False]
    compatible = not failed and error is None
    if compatible:
        verdict = "compatible: the drafter can draft for this target"
    else:
        reasons = [f"{c.name}: {c.detail}" for c in failed] or [error]
        verdict = "not compatible: " + "; ".join(reasons)
    return PairReport(str(tf.path), str(df.path), compatible, verdict, checks)
