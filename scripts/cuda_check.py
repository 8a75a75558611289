"""CUDA correctness check (not part of `make test`: CI has no GPU, and no run of it on a GPU is
recorded yet).

1. On a machine with transformers 5.23 (the dev extra), build the tiny checkpoints and GGUF:
       python scripts/cuda_check.py --build .gpu
2. On a CUDA machine (transformers not needed), compare CUDA with the CPU results:
       python scripts/cuda_check.py --check .gpu
   Without CUDA it prints "SKIPPED: ..." and exits 0. `--device cpu` runs every comparison CPU
   against CPU instead (a dry run of the same code: tests/test_cuda_check.py runs it).

Sections, one PASS/FAIL line each with its numbers (and a line per failed case); exit 1 on a failure:
  logits     every variant's float32 logits (prefill, cached decode) on the device vs the CPU, the
             `-ngl 2` split, bfloat16 argmax agreement with float32
  quantized  a GGUF whose matrices are Q8_0, Q4_K, Q5_K, Q6_K, IQ4_XS, Q5_0 and IQ2_XXS blocks, kept
             as blocks on the device: decoded weights bit-exact with gguf-py; logits of the
             torch-ops path and of the fused Triton kernels vs the CPU float32 dequantized model
             (same weights) and vs the CPU native kernels (int8 activations); the types without a
             Triton kernel announce their fallback
  lossless   greedy mtp, ngram and draft (n_max 1..4, batch 1 and 3) on the device equal plain greedy;
             greedy mtp with --cuda-graphs (engine/graph_decoder.py: captured CUDA graphs; with
             --device cpu the same static path run eagerly) equals it too, as the decoder and
             through `gemma_mtp.load(..., cuda_graphs=True)`'s Engine; the static step's logits
             (forward + head captured) vs the plain forward's, and the on-device greedy acceptance
             vs speculative/acceptance.py's on them. A forward that cannot be captured fails by name.
  memory     bytes on the device after loading that GGUF and its KV cache vs weights/placement.py's plan
"""

from __future__ import annotations

import argparse
import gc
import itertools
import os
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

TARGETS = ("e2b", "moe", "dense31b", "unified", "gemma3")
BLOCKS_GGUF = "blocks.gguf"
# 256-wide rows take these in turn; narrower rows (of a multiple of 32) Q8_0
BLOCK_TYPES = ("Q8_0", "Q4_K", "Q5_K", "Q6_K", "IQ4_XS", "Q5_0", "IQ2_XXS")
IQ_SCALE = {"IQ4_XS": 8e-5, "IQ2_XXS": 1e-3}  # fp16 block scales giving weights of std ~1/16
CTX, MAX_DRAFT = 64, 16


# ----------------------------------------------------------------------------------- build


def build(root: Path) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    import hf_reference as ref

    for name in TARGETS:
        ref.TARGET_BUILDERS[name](root / name)
    with ref.reference_patches():
        from transformers import AutoModelForCausalLM

        target = ref.Reference(root / "e2b", AutoModelForCausalLM.from_pretrained(root / "e2b"))
    ref.build_assistant(root / "e2b_assistant", target, use_ordered_embeddings=True)
    build_blocks_gguf(root, ref)
    print(f"built {', '.join(TARGETS)}, e2b_assistant and {BLOCKS_GGUF} under {root}")


def build_blocks_gguf(root: Path, ref) -> Path:
    """A tiny Gemma 4 target (hidden 256) whose matrices are blocks of `BLOCK_TYPES`, encoded from
    its random float weights (our encoders; random blocks of a trained scale for the IQ types)."""
    from gguf import GGMLQuantizationType as Q

    from gemma_mtp.gguf.codecs import can_encode, encode
    from gemma_mtp.gguf.reader import open_gguf, tensor_shape, tensor_values
    from gemma_mtp.gguf.writer import Entry, write_gguf
    from gemma_mtp.tools.convert import convert_hf_to_gguf

    text = ref.gemma4_text_kwargs(layer_types=[ref.S, ref.F], hidden_size=256, intermediate_size=512)
    hf = ref._gemma4(root / "blocks_hf", 0, text, False).path
    gf = open_gguf(convert_hf_to_gguf(hf, root / "blocks.f32.gguf", out_type="F32"))
    wide = itertools.cycle(Q[t] for t in BLOCK_TYPES)
    rng = np.random.default_rng(0)
    tensors = []
    for name, t in gf.tensors.items():
        shape = tensor_shape(t)
        if len(shape) != 2 or shape[1] % 32:
            tensors.append((name, np.asarray(t.data), t.tensor_type))
            continue
        qtype = next(wide) if shape[1] % 256 == 0 else Q.Q8_0
        values = np.asarray(tensor_values(t), dtype=np.float32).reshape(shape)
        if can_encode(qtype, shape[1]):
            blocks = encode(values, qtype)
        else:
            blocks = _random_blocks(qtype, shape, rng)
        tensors.append((name, blocks, qtype))
    entries = [
        Entry(k, f.value, f.type, f.sub_type) for k, f in gf.fields.items() if k != "general.architecture"
    ]
    return write_gguf(root / BLOCKS_GGUF, gf.arch, entries, tensors)


def _random_blocks(qtype, shape, rng) -> np.ndarray:
    from gguf import GGML_QUANT_SIZES

    block, size = GGML_QUANT_SIZES[qtype]
    blocks = rng.integers(0, 256, (shape[0], shape[1] // block, size), dtype=np.uint8)
    d = (rng.uniform(0.5, 1.5, blocks.shape[:2]) * IQ_SCALE[qtype.name]).astype(np.float16)
    blocks[..., 0:2] = d.view(np.uint8).reshape(*blocks.shape[:2], 2)
    return blocks.reshape(shape[0], -1)


# ----------------------------------------------------------------------------------- check


@dataclass
class Section:
    name: str
    numbers: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)

    def case(self, ok: bool, what: str) -> None:
        if not ok:
            self.failed.append(what)

    def line(self) -> str:
        verdict = "PASS" if not self.failed else f"FAIL ({len(self.failed)} cases)"
        return f"{verdict} {self.name}: {'; '.join(self.numbers)}"


TOKENS = torch.randint(3, 256, (1, 24), generator=torch.Generator().manual_seed(0))


def logits_of(model, prefill: int = 20, steps: int = 4) -> torch.Tensor:
    """Prefill `prefill` tokens, then decode `steps` one at a time: float32 logits on the CPU."""
    positions = torch.arange(prefill + steps)[None]
    cache = model.make_cache(batch_size=1, max_context=CTX, max_draft=4)
    with torch.inference_mode():
        out = [model.logits(model(TOKENS[:, :prefill], positions[:, :prefill], cache).hidden)]
        for i in range(prefill, prefill + steps):
            out.append(model.logits(model(TOKENS[:, i : i + 1], positions[:, i : i + 1], cache).hidden))
    return torch.cat([o.float().cpu() for o in out], dim=1)


def check_logits(root: Path, device: str) -> Section:
    from gemma_mtp.weights.hf import load_hf_model

    s = Section(f"logits ({len(TARGETS)} variants, {device} vs cpu)")
    worst = {"float32": 0.0, "-ngl 2": 0.0}
    agree_min = 1.0
    for name in TARGETS:
        want = logits_of(load_hf_model(root / name, dtype="float32", device="cpu")[0])
        diff = (logits_of(load_hf_model(root / name, dtype="float32", device=device)[0]) - want).abs().max()
        worst["float32"] = max(worst["float32"], diff.item())
        s.case(diff.item() <= 1e-3, f"{name}: float32 max |diff| {diff.item():.2e} > 1e-3")
        split, _, report = load_hf_model(root / name, dtype="float32", device=device, n_gpu_layers=2)
        diff = (logits_of(split) - want).abs().max()
        worst["-ngl 2"] = max(worst["-ngl 2"], diff.item())
        s.case(diff.item() <= 1e-3, f"{name}: -ngl 2 ({report.device}) max |diff| {diff.item():.2e} > 1e-3")
        bf16 = logits_of(load_hf_model(root / name, dtype="bfloat16", device=device)[0])
        agree = (bf16.argmax(-1) == want.argmax(-1)).float().mean().item()
        agree_min = min(agree_min, agree)
        s.case(agree >= 0.75, f"{name}: bfloat16 argmax agrees on {agree:.0%} < 75%")
    s.numbers = [
        f"float32 max |diff| {worst['float32']:.2e} (limit 1e-3)",
        f"-ngl 2 max |diff| {worst['-ngl 2']:.2e}",
        f"bfloat16 argmax agreement min {agree_min:.0%} (limit 75%)",
    ]
    return s


def _torch_kernels() -> dict[str, str]:
    from gemma_mtp.quant.torch_blocks import TORCH_BLOCK_TYPES

    return {q.name: "torch" for q in TORCH_BLOCK_TYPES}


def _load_blocks(root: Path, device: str, **options):
    from gemma_mtp.weights.gguf_loader import load_gguf_model

    return load_gguf_model(root / BLOCKS_GGUF, dtype="float32", device=device, **options)[0]


def _rel_max(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got - want).abs().max() / want.abs().max()).item()


def _rel_l2(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got - want).norm() / want.norm()).item()


def check_quantized(root: Path, device: str) -> Section:
    """All forwards are of 6 + 1 + 1 + 1 + 1 rows: every product is one the fused kernel takes."""
    from gguf.quants import dequantize

    from gemma_mtp.native import why_unavailable
    from gemma_mtp.quant import torch_blocks, triton_blocks
    from gemma_mtp.quant.torch_blocks import TorchBlockWeight

    s = Section(f"quantized ({BLOCKS_GGUF} kept as blocks on {device})")
    exact = logits_of(_load_blocks(root, "cpu", quantized=False), prefill=6)
    kernels = _torch_kernels()
    fused_before = torch_blocks.FUSED_DEVICES
    try:
        torch_blocks.FUSED_DEVICES = frozenset()  # the torch-ops path alone
        model = _load_blocks(root, device, quantized=True, kernels=kernels)
        weights = [m for m in model.modules() if isinstance(m, TorchBlockWeight)]
        types = sorted({w.qtype for w in weights})
        same = sum(
            torch.equal(
                w.dequantize().cpu().view(torch.int32),
                torch.from_numpy(dequantize(w.data.cpu().numpy(), w.qtype)).view(torch.int32),
            )
            for w in weights
        )
        s.case(same == len(weights), f"decoded weights: {len(weights) - same} matrices differ from gguf-py")
        torch_ops = logits_of(model, prefill=6)
        s.numbers.append(f"{len(weights)} matrices of {', '.join(q.name for q in types)}")
        s.numbers.append(f"decoded bit-exact {same}/{len(weights)}")
        s.numbers.append(f"torch-ops vs float32 dequantized max |dy|/max|y| {_rel_max(torch_ops, exact):.1e}")
        s.case(_rel_max(torch_ops, exact) <= 1e-4, "torch-ops logits off the dequantized model's by > 1e-4")

        if triton_blocks.WHY_UNAVAILABLE is not None:
            s.numbers.append(f"Triton not checked: {triton_blocks.WHY_UNAVAILABLE}")
            s.case(device == "cpu", "no Triton on a CUDA machine: install triton")
        else:
            torch_blocks.FUSED_DEVICES = frozenset({torch.device(device).type})
            torch_blocks._ANNOUNCED.clear()
            seen: set = set()
            real = triton_blocks.triton_linear
            triton_blocks.triton_linear = lambda x, d, q: seen.add(q) or real(x, d, q)
            try:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    fused = logits_of(_load_blocks(root, device, quantized=True, kernels=kernels), prefill=6)
            finally:
                triton_blocks.triton_linear = real
            said = {q for q in types if any(f"{q.name} blocks on" in str(w.message) for w in caught)}
            want_fused = {q for q in types if q in triton_blocks.TRITON_TYPES}
            s.numbers.append(f"Triton vs float32 dequantized {_rel_max(fused, exact):.1e}")
            s.numbers.append(f"Triton took {len(seen)}/{len(want_fused)} types")
            s.numbers.append(f"fallback announced for {', '.join(q.name for q in sorted(said)) or 'none'}")
            s.case(_rel_max(fused, exact) <= 1e-4, "Triton logits off the dequantized model's by > 1e-4")
            s.case(seen == want_fused, f"the fused kernel took {sorted(seen)}, not {sorted(want_fused)}")
            s.case(said == set(types) - want_fused, f"fallbacks announced for {sorted(said)} only")
    finally:
        torch_blocks.FUSED_DEVICES = fused_before

    if why_unavailable() is not None:
        s.numbers.append(f"CPU native kernels not checked: {why_unavailable()}")
    else:
        native = logits_of(_load_blocks(root, "cpu", quantized=True), prefill=6)
        agree = (native.argmax(-1) == torch_ops.argmax(-1)).float().mean().item()
        s.numbers.append(f"vs CPU native kernels rel-L2 {_rel_l2(torch_ops, native):.1e} (limit 5e-2)")
        s.numbers.append(f"argmax agreement {agree:.0%}")
        s.case(_rel_l2(torch_ops, native) <= 0.05, "torch-ops vs native rel-L2 > 5e-2")
    return s


def check_lossless(root: Path, device: str, n_maxes=(1, 2, 3, 4), batches=(1, 3)) -> Section:
    from gemma_mtp.engine.batch import BatchDecoder
    from gemma_mtp.sampling import SamplingParams
    from gemma_mtp.speculative.base import SpecOptions
    from gemma_mtp.speculative.draft_model import DraftModelDrafter
    from gemma_mtp.speculative.mtp import MTPDrafter
    from gemma_mtp.speculative.ngram import NgramDrafter
    from gemma_mtp.weights.hf import load_hf_model

    target, _, _ = load_hf_model(root / "e2b", dtype="float32", device=device)
    assistant, _, _ = load_hf_model(root / "e2b_assistant", dtype="float32", device=device)
    prompts = [[2, *range(40, 60)], [2, 9, 9, 4, 4, 9, 9, 4, 4], [2, 7, 100, 31]]
    greedy = SamplingParams(temperature=0)

    def decode(batch: int, spec: SpecOptions, cls=BatchDecoder) -> tuple[list[list[int]], int, int]:
        decoder = cls(target, max_batch=batch, ctx_size=96)
        decoder.drafters = {
            "mtp": MTPDrafter(target, assistant, decoder.cache),
            "ngram": NgramDrafter(),
            "draft": DraftModelDrafter(target.config, target, batch_size=batch, max_context=96),
        }
        outs, drafted, accepted = [], 0, 0
        for i in range(0, len(prompts), batch):
            slots = [
                decoder.add(p, n_predict=32, sampling=greedy, spec=spec, stop_ids=frozenset())
                for p in prompts[i : i + batch]
            ]
            while decoder.active():
                decoder.step()
            outs += [slot.generated for slot in slots]
            drafted += sum(slot.stats.drafted for slot in slots)
            accepted += sum(slot.stats.accepted for slot in slots)
            for slot in slots:
                decoder.release(slot)
        return outs, drafted, accepted

    s = Section(f"lossless (greedy speculative on {device} vs plain greedy)")
    plain, _, _ = decode(1, SpecOptions())
    runs = same = 0
    totals = {"mtp": [0, 0], "ngram": [0, 0], "draft": [0, 0]}
    for kind, n_max, batch in itertools.product(totals, n_maxes, batches):
        outs, drafted, accepted = decode(batch, SpecOptions(type=kind, n_max=n_max))
        runs, same = runs + 1, same + (outs == plain)
        totals[kind][0] += drafted
        totals[kind][1] += accepted
        if outs != plain:
            first = next(i for i, (a, b) in enumerate(zip(outs, plain, strict=True)) if a != b)
            s.case(False, f"{kind} n_max={n_max} batch={batch}: prompt {first} differs from plain")
    s.numbers = [f"{same}/{runs} runs equal plain greedy (n_max {list(n_maxes)}, batch {list(batches)})"]
    s.numbers += [f"{k} accepted {a}/{d} drafts" for k, (d, a) in totals.items()]
    _check_graphs(s, lambda batch, spec, cls: decode(batch, spec, cls)[0], plain, n_maxes, batches)
    _check_engine_graphs(s, root, device, prompts, n_maxes)
    _check_static_step(s, target, device)
    return s


def _check_graphs(s: Section, decode, plain, n_maxes, batches) -> None:
    """Greedy mtp through the --cuda-graphs decoder (graphs on CUDA, eager static path elsewhere)."""
    from gemma_mtp.engine.graph_decoder import GraphBatchDecoder
    from gemma_mtp.engine.graphs import GraphCaptureError
    from gemma_mtp.speculative.base import SpecOptions

    runs = same = 0
    try:
        for n_max, batch in itertools.product(n_maxes, batches):
            outs = decode(batch, SpecOptions(type="mtp", n_max=n_max), GraphBatchDecoder)
            runs, same = runs + 1, same + (outs == plain)
            s.case(outs == plain, f"mtp with graphs n_max={n_max} batch={batch}: differs from plain")
    except GraphCaptureError as exc:
        s.case(False, str(exc))
    s.numbers.append(f"mtp with graphs {same}/{runs} runs equal plain greedy")


def _check_engine_graphs(s: Section, root: Path, device: str, prompts, n_maxes) -> None:
    """`gemma_mtp.load(..., cuda_graphs=True)`: the Engine builds the --cuda-graphs decoder, and its
    greedy outputs (plain and mtp) equal the plain Engine's."""
    import gemma_mtp
    from gemma_mtp.engine.graph_decoder import GraphBatchDecoder
    from gemma_mtp.engine.graphs import GraphCaptureError
    from gemma_mtp.sampling import SamplingParams
    from gemma_mtp.speculative.base import SpecOptions

    greedy, runs, same = SamplingParams(temperature=0), 0, 0
    specs = [SpecOptions(type="none")] + [SpecOptions(type="mtp", n_max=n) for n in n_maxes]
    try:
        engines = {
            graphs: gemma_mtp.load(
                root / "e2b",
                root / "e2b_assistant",
                dtype="float32",
                device=device,
                ctx_size=96,
                cuda_graphs=graphs,
            )
            for graphs in (False, True)
        }
        s.case(
            isinstance(engines[True].decoder, GraphBatchDecoder),
            "load(cuda_graphs=True) built no graph decoder",
        )
        for spec in specs:
            outs = {
                graphs: [
                    engine.generate(p, n_predict=32, sampling=greedy, spec=spec).token_ids for p in prompts
                ]
                for graphs, engine in engines.items()
            }
            runs, same = runs + 1, same + (outs[True] == outs[False])
            s.case(
                outs[True] == outs[False],
                f"engine with --cuda-graphs, {spec.type} n_max={spec.n_max}: differs",
            )
    except GraphCaptureError as exc:
        s.case(False, str(exc))
    s.numbers.append(f"engine with --cuda-graphs {same}/{runs} runs equal the plain engine")


def _check_static_step(
    s: Section, target, device: str, rounds=((1, 0), (3, 1), (5, 4), (2, 0), (4, 2))
) -> None:
    """Forward + head over static buffers (captured on CUDA) vs the plain forward, round after
    round with rollbacks; the on-device greedy acceptance vs accept_greedy on the same logits."""
    from gemma_mtp.engine.graph_decoder import accept_greedy_on_device
    from gemma_mtp.engine.graphs import GraphCaptureError, StaticTargetStep
    from gemma_mtp.speculative.acceptance import accept_greedy

    plain = target.make_cache(batch_size=2, max_context=CTX, max_draft=4)
    static = target.make_cache(batch_size=2, max_context=CTX, max_draft=4)
    gen = torch.Generator().manual_seed(0)
    worst, agree, total = 0.0, 0, 0
    try:
        step = StaticTargetStep(target, static, max_positions=5, graphs=device.startswith("cuda"))
        with torch.inference_mode():
            prompt = torch.randint(3, 256, (2, 9), generator=gen)
            for cache in (plain, static):
                target(prompt, torch.arange(9).expand(2, 9), cache)
            for width, keep in rounds:
                start = plain.lengths.cpu().clone()  # (on the CPU .cpu() is the tensor itself)
                tokens = torch.randint(3, 256, (2, width), generator=gen)
                positions = start[:, None] + torch.arange(width)
                want = target.logits(target(tokens, positions, plain).hidden).float().cpu()
                on_device = step.run(tokens, positions).logits  # read before the next run
                got = on_device.float().cpu()
                worst = max(worst, _rel_max(got, want))
                drafts = want.argmax(-1)[:, :-1].clone()
                drafts[:, keep:] = (drafts[:, keep:] + 1) % want.shape[-1]  # reject after `keep`
                n_accepted, next_token = accept_greedy_on_device(on_device, drafts)
                for r in range(2):
                    ref = accept_greedy(got[r], drafts[r].tolist())
                    agree, total = agree + (ref == (int(n_accepted[r]), int(next_token[r]))), total + 1
                lengths = start + torch.tensor([keep, keep]) + 1
                plain.rollback(lengths)
                static.rollback(lengths.to(static.device), check=False)
    except GraphCaptureError as exc:
        s.case(False, str(exc))
    s.numbers.append(f"static step logits vs plain max |dy|/max|y| {worst:.1e} (limit 1e-4)")
    s.numbers.append(f"device acceptance = accept_greedy {agree}/{total} rows")
    s.case(worst <= 1e-4, f"static step logits off the plain forward's by {worst:.1e} > 1e-4")
    s.case(total > 0 and agree == total, f"device acceptance differs on {total - agree}/{total} rows")


def _tensor_bytes(tensors, device: torch.device) -> int:
    seen, total = set(), 0
    for t in tensors:
        if t.device.type != device.type or t.numel() == 0:
            continue
        key = (t.data_ptr(), t.numel() * t.element_size())
        if key not in seen:
            seen.add(key)
            total += key[1]
    return total


def check_memory(root: Path, device: str) -> Section:
    """CUDA: the allocator's bytes before/after the load and the cache; CPU: the bytes of the
    model's and the cache's tensors (the same count `memory_allocated` makes on a GPU)."""
    from gemma_mtp.weights.placement import gguf_sizes

    s = Section(f"memory ({BLOCKS_GGUF} on {device}, -c {CTX})")
    dev = torch.device(device)
    sizes, _ = gguf_sizes(root / BLOCKS_GGUF, dtype="float32", quantized=True, max_draft=MAX_DRAFT)
    n_layers = len(sizes.layers)
    planned_weights, planned = sizes.on_device(n_layers, 0), sizes.on_device(n_layers, CTX)
    gc.collect()
    before = torch.cuda.memory_allocated(dev) if dev.type == "cuda" else 0
    model = _load_blocks(root, device, quantized=True, kernels=_torch_kernels())
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        weights = torch.cuda.memory_allocated(dev) - before
    else:
        weights = _tensor_bytes(itertools.chain(model.parameters(), model.buffers()), dev)
    cache = model.make_cache(batch_size=1, max_context=CTX, max_draft=MAX_DRAFT)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        total = torch.cuda.memory_allocated(dev) - before
    else:
        total = weights + sum(cache.memory_bytes().values())
    kib = 1 / 1024
    s.numbers = [
        f"weights {weights * kib:.0f} KiB vs planned {planned_weights * kib:.0f} KiB "
        f"({weights / planned_weights:.3f}x)",
        f"with KV {total * kib:.0f} KiB vs planned {planned * kib:.0f} KiB ({total / planned:.3f}x; limit 0.9-1.1x)",
    ]
    s.case(0.9 <= weights / planned_weights <= 1.1, "weights outside 0.9-1.1x of the plan")
    s.case(0.9 <= total / planned <= 1.1, "weights + KV outside 0.9-1.1x of the plan")
    return s


def check(root: Path, device: str, quick: bool = False) -> int:
    if device == "cpu":  # the fused kernels run on a CPU through Triton's interpreter
        os.environ.setdefault("TRITON_INTERPRET", "1")
        os.environ.setdefault("GEMMA_MTP_GRAPHS_EAGER", "1")  # --cuda-graphs' static path, eagerly
    missing = [p for p in (*TARGETS, "e2b_assistant", BLOCKS_GGUF) if not (root / p).exists()]
    if missing:
        print(f"{root}: {', '.join(missing)} missing; build them with --build {root}", file=sys.stderr)
        return 2
    lossless = {"n_maxes": (1, 3), "batches": (1, 3)} if quick else {}
    sections = [
        lambda: check_logits(root, device),
        lambda: check_quantized(root, device),
        lambda: check_lossless(root, device, **lossless),
        lambda: check_memory(root, device),
    ]
    failures = 0
    for run in sections:
        section = run()
        print(section.line(), flush=True)
        for what in section.failed:
            print(f"    {what}", flush=True)
        failures += bool(section.failed)
    print(f"{failures} of {len(sections)} sections failed on {device}")
    return 1 if failures else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    group = ap.add_mutually_exclusive_group(required=True)
    group.add_argument("--build", type=Path)
    group.add_argument("--check", type=Path)
    ap.add_argument(
        "--device", default="cuda", help="cuda (default), or cpu: the same comparisons CPU vs CPU"
    )
    ap.add_argument("--quick", action="store_true", help="lossless: n_max 1 and 3 only")
    args = ap.parse_args()
    if args.build:
        build(args.build)
        return 0
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("SKIPPED: no CUDA device (torch.cuda.is_available() is False); nothing was checked")
        return 0
    return check(args.check, args.device, quick=args.quick)


if __name__ == "__main__":
    raise SystemExit(main())
