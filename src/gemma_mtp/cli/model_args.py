"""Model-loading flags shared by ``run``, ``chat``, ``serve``, ``bench`` and ``train-drafter``: one
spelling of each, one options object (`engine.options.LoadOptions`) built from them.

`add_load_arguments` declares -m, -md, --device, --dtype, -ngl, -ngld, -c, -t, --cuda-graphs (and --mmproj for the
surfaces that take media) with the defaults of `LoadOptions` (no default is repeated here) and
`add_quant_arguments` the quantized-weight flags; `load_options_from_args` turns the parsed flags into the `LoadOptions` that
`gemma_mtp.load` takes.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from gemma_mtp.engine.options import LoadOptions

__all__ = [
    "LOAD_FLAG_FIELDS",
    "add_load_arguments",
    "load_options_from_args",
    "DEVICE_CHOICES",
    "DTYPE_CHOICES",
    "DRAFT_HELP",
    "add_model_argument",
    "add_draft_argument",
    "add_device_arguments",
    "add_gpu_layer_arguments",
    "add_ctx_size_argument",
    "add_threads_argument",
    "add_mmproj_argument",
    "add_quant_arguments",
    "add_head_argument",
    "parse_quant_kernels",
]

DEVICE_CHOICES = ("cpu", "cuda", "auto")
DTYPE_CHOICES = ("auto", "float32", "bfloat16", "float16")
DRAFT_HELP = "drafter (MTP assistant or draft model)"

# argparse groups and parsers both take add_argument
_Group = argparse.ArgumentParser | argparse._ArgumentGroup


def add_model_argument(group: _Group, defaults: Any, *, help: str, repeatable: bool = False) -> None:
    """``-m/--model``; ``repeatable`` (bench): one or more paths, collected in ``models``."""
    if repeatable:
        group.add_argument(
            "-m", "--model", dest="models", nargs="+", action="extend", metavar="PATH", help=help
        )
    else:
        group.add_argument("-m", "--model", default=defaults.model, metavar="PATH", help=help)


def add_draft_argument(
    group: _Group, defaults: Any, *, repeatable: bool = False, help: str = DRAFT_HELP
) -> None:
    """``-md/--model-draft/--spec-draft-model``; ``repeatable`` (bench) collects a list in ``drafts``."""
    if repeatable:
        more = {"dest": "drafts", "action": "extend", "nargs": "+", "default": list(defaults.drafts)}
    else:
        more = {"dest": "model_draft", "default": defaults.model_draft}
    group.add_argument("-md", "--model-draft", "--spec-draft-model", metavar="PATH", help=help, **more)


def add_device_arguments(group: _Group, defaults: Any) -> None:
    """``--device`` and ``--dtype``."""
    group.add_argument(
        "--device", choices=DEVICE_CHOICES, default=defaults.device, help="(default: %(default)s)"
    )
    group.add_argument(
        "--dtype", choices=DTYPE_CHOICES, default=defaults.dtype, help="(default: %(default)s)"
    )


def parse_gpu_layers(text: str) -> int | None:
    """``-ngl`` as llama.cpp takes it: N, ``auto`` (None: as many as fit) or ``all`` (-1)."""
    if text in ("auto", "all"):
        return None if text == "auto" else -1
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of layers, auto or all") from None


def add_gpu_layer_arguments(group: _Group, defaults: Any) -> None:
    """``-ngl/--n-gpu-layers``, ``-ngld/--n-gpu-layers-draft`` and ``--n-cpu-moe``."""
    group.add_argument(
        "-ngl",
        "--n-gpu-layers",
        "--gpu-layers",
        dest="n_gpu_layers",
        type=parse_gpu_layers,
        default=defaults.n_gpu_layers,
        metavar="N",
        help="target layers on the GPU: N, auto or all (default: auto, as many as fit beside the "
        "drafter and the KV for -c; GGUF files)",
    )
    group.add_argument(
        "-ngld",
        "--n-gpu-layers-draft",
        dest="n_gpu_layers_draft",
        type=parse_gpu_layers,
        default=defaults.n_gpu_layers_draft,
        metavar="N",
        help="drafter layers on the GPU: N or all (default: all)",
    )
    group.add_argument(
        "-ncmoe",
        "--n-cpu-moe",
        dest="n_cpu_moe",
        type=int,
        default=defaults.n_cpu_moe,
        metavar="N",
        help="keep the MoE expert weights of the first N target layers on the CPU (default: %(default)s)",
    )


def add_ctx_size_argument(group: _Group, defaults: Any, *, help: str) -> None:
    group.add_argument(
        "-c", "--ctx-size", dest="ctx_size", type=int, default=defaults.ctx_size, metavar="N", help=help
    )


def add_threads_argument(group: _Group, *, help: str = "CPU threads (default: the physical cores)") -> None:
    """``-t/--threads``: CPU threads for torch and our kernels; None: the physical cores."""
    group.add_argument("-t", "--threads", type=int, default=LoadOptions().threads, metavar="N", help=help)


def add_mmproj_argument(group: _Group, defaults: Any) -> None:
    """``--mmproj FILE`` (llama.cpp's name): the media towers' GGUF beside a GGUF target."""
    group.add_argument(
        "--mmproj",
        metavar="FILE",
        default=defaults.mmproj,
        help="the media towers (vision, and audio where converted from E2B/E4B) as llama.cpp's mmproj "
        "GGUF, for a GGUF target (a HF checkpoint has its own)",
    )


def add_head_argument(group: _Group, defaults: Any) -> None:
    """``--head auto|full|pruned``: the output head greedy decoding uses (the same tokens)."""
    from gemma_mtp.engine.options import HEAD_MODES

    group.add_argument(
        "--head",
        choices=HEAD_MODES,
        default=defaults.head,
        help="output head for greedy decoding: pruned computes only the rows that can win (exact: "
        "the same tokens; Q8_0 GGUF heads on the CPU), full every row; auto: full for now "
        "(default: %(default)s)",
    )


# LoadOptions' fields that flags set (max_batch is the server's slot count, not a load flag)
LOAD_FLAG_FIELDS = tuple(f.name for f in dataclasses.fields(LoadOptions) if f.name != "max_batch")


def add_load_arguments(
    parser: argparse.ArgumentParser,
    *,
    model_help: str,
    ctx_help: str = "context size in tokens (default: %(default)s)",
    drafts_repeatable: bool = False,
    models_repeatable: bool = False,
    group_title: str = "models",
    ctx_default: int | None = LoadOptions().ctx_size,
    media: bool = False,
) -> argparse._ArgumentGroup:
    """-m, -md (a list with ``drafts_repeatable``), --device, --dtype, -ngl, -ngld, -c, -t, --head,
    --mmproj (with ``media``) and the quantized-weight flags, with `LoadOptions`' defaults; returns
    the group for the caller's extras."""
    defaults = LoadOptions()
    group = parser.add_argument_group(group_title)
    add_model_argument(group, defaults, help=model_help, repeatable=models_repeatable)
    if drafts_repeatable:
        add_draft_argument(group, _Drafts(), repeatable=True)
    else:
        add_draft_argument(group, defaults)
    add_device_arguments(group, defaults)
    add_gpu_layer_arguments(group, defaults)
    group.add_argument(
        "-c", "--ctx-size", dest="ctx_size", type=int, default=ctx_default, metavar="N", help=ctx_help
    )
    add_threads_argument(group)
    add_head_argument(group, defaults)
    group.add_argument(
        "--cuda-graphs",
        dest="cuda_graphs",
        action="store_true",
        default=defaults.cuda_graphs,
        help="run decode and verify steps as captured CUDA graphs (CUDA only; opt-in; not yet measured)",
    )
    if media:
        add_mmproj_argument(group, defaults)
    add_quant_arguments(parser, defaults)
    return group


class _Drafts:
    drafts: tuple[str, ...] = ()


def load_options_from_args(args: argparse.Namespace, **overrides: Any) -> LoadOptions:
    """The `LoadOptions` the parsed flags say (``overrides`` win; absent flags keep the defaults)."""
    values = {name: getattr(args, name) for name in LOAD_FLAG_FIELDS if hasattr(args, name)}
    if values.get("threads", 0) is None:  # no -t: the physical cores, as llama.cpp picks
        from gemma_mtp.threads import physical_cores

        values["threads"] = physical_cores()
    return LoadOptions(**{**values, **overrides})


def parse_quant_kernels(text: str) -> dict[str, str]:
    """``"Q8_0=int8,Q6_K=float"`` -> ``{"Q8_0": "int8", "Q6_K": "float"}``, checked against the
    loader's own rules (`quant.plan.parse_kernels`); argparse turns the error into a usage error."""
    from gemma_mtp.quant.plan import parse_kernels  # torch-heavy: only when the flag is given

    kernels = {}
    for item in text.split(","):
        if item.strip().lower() == "torch":  # every block type on the portable torch kernel
            from gemma_mtp.quant.torch_blocks import TORCH_BLOCK_TYPES

            kernels.update({q.name: "torch" for q in sorted(TORCH_BLOCK_TYPES, key=int)})
            continue
        name, sep, kind = item.partition("=")
        if not sep or not name.strip() or not kind.strip():
            raise argparse.ArgumentTypeError(f"{item.strip()!r} is not TYPE=KERNEL (e.g. Q8_0=int8)")
        kernels[name.strip().upper()] = kind.strip().lower()
    try:
        parse_kernels(kernels)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("kernels: ")) from None
    return kernels


class _MergeKernels(argparse.Action):
    """A repeated ``--quant-kernels`` adds to the earlier ones (a later TYPE wins)."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:  # noqa: ANN001
        setattr(namespace, self.dest, {**(getattr(namespace, self.dest) or {}), **values})


def add_quant_arguments(parser: argparse.ArgumentParser, defaults: Any) -> None:
    """``--quantized/--no-quantized`` and ``--quant-kernels``: `gemma_mtp.load`'s `quantized` and
    `kernels` (GGUF files only), for the target and the drafter alike."""
    from gemma_mtp.quant.policy import KINDS  # data only, no torch

    group = parser.add_argument_group("quantized GGUF weights")
    group.add_argument(
        "--quantized",
        dest="quantized",
        action=argparse.BooleanOptionalAction,
        default=defaults.quantized,
        help="keep quantized GGUF weights quantized in memory (CPU only); --no-quantized dequantizes "
        "them to --dtype (default: quantized on the CPU with --dtype auto or bfloat16)",
    )
    group.add_argument(
        "--quant-kernels",
        dest="quant_kernels",
        type=parse_quant_kernels,
        action=_MergeKernels,
        default=defaults.quant_kernels,
        metavar="TYPE=KERNEL,...",
        help=f"kernel per GGUF type, e.g. Q8_0=int8,Q6_K=float, or torch for every type (the portable "
        f"kernel a GPU uses); kernels: {', '.join(KINDS)}",
    )
