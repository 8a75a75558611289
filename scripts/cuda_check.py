"""CUDA correctness check (not part of `make test`: CI has no GPU).

1. On a machine with transformers 5.23 (the dev extra), build the tiny checkpoints:
       python scripts/cuda_check.py --build .gpu
2. On a CUDA machine (transformers not needed), compare CUDA with the CPU results:
       python scripts/cuda_check.py --check .gpu
It checks, for every checkpoint: CUDA float32 logits (prefill and cached decode) equal the CPU
ones; the `-ngl 2` split (first 2 layers on the GPU) equals CPU; greedy speculative decoding on
CUDA (mtp, ngram, draft, n_max 1..4, batch 1 and 3) equals plain greedy; bfloat16 on CUDA runs
and agrees with float32 on most greedy tokens. Prints one line per check; exits 1 on a failure.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

TARGETS = ("e2b", "moe", "dense31b", "unified", "gemma3")


def build(root: Path) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    import hf_reference as ref

    for name in TARGETS:
        ref.TARGET_BUILDERS[name](root / name)
    with ref.reference_patches():
        from transformers import AutoModelForCausalLM

        target = ref.Reference(root / "e2b", AutoModelForCausalLM.from_pretrained(root / "e2b"))
    ref.build_assistant(root / "e2b_assistant", target, use_ordered_embeddings=True)
    print(f"built {', '.join(TARGETS)} and e2b_assistant under {root}")


def check(root: Path) -> int:
    from gemma_mtp.engine.batch import BatchDecoder
    from gemma_mtp.sampling import SamplingParams
    from gemma_mtp.speculative.base import SpecOptions
    from gemma_mtp.speculative.draft_model import DraftModelDrafter
    from gemma_mtp.speculative.mtp import MTPDrafter
    from gemma_mtp.speculative.ngram import NgramDrafter
    from gemma_mtp.weights.hf import load_hf_model

    failures = 0

    def report(ok: bool, what: str) -> None:
        nonlocal failures
        failures += not ok
        print(("ok   " if ok else "FAIL ") + what, flush=True)

    tokens = torch.randint(3, 256, (1, 24), generator=torch.Generator().manual_seed(0))
    positions = torch.arange(24)[None]

    def logits_of(model):
        cache = model.make_cache(batch_size=1, max_context=64, max_draft=4)
        with torch.inference_mode():
            prefill = model.logits(model(tokens[:, :20], positions[:, :20], cache).hidden).cpu()
            steps = [
                model.logits(model(tokens[:, i : i + 1], positions[:, i : i + 1], cache).hidden).cpu()
                for i in range(20, 24)
            ]
        return torch.cat([prefill, *steps], dim=1)

    for name in TARGETS:
        cpu, _, _ = load_hf_model(root / name, dtype="float32", device="cpu")
        ref_logits = logits_of(cpu)
        gpu, _, _ = load_hf_model(root / name, dtype="float32", device="cuda")
        diff = (logits_of(gpu) - ref_logits).abs().max().item()
        report(diff <= 1e-3, f"{name}: cuda float32 logits vs cpu, max |diff| {diff:.2e}")
        split, _, report_ = load_hf_model(root / name, dtype="float32", device="cuda", n_gpu_layers=2)
        diff = (logits_of(split) - ref_logits).abs().max().item()
        report(diff <= 1e-3, f"{name}: -ngl 2 split ({report_.device}) vs cpu, max |diff| {diff:.2e}")
        bf16, _, _ = load_hf_model(root / name, dtype="bfloat16", device="cuda")
        agree = (logits_of(bf16).argmax(-1) == ref_logits.argmax(-1)).float().mean().item()
        report(agree >= 0.75, f"{name}: cuda bfloat16 argmax agrees with float32 on {agree:.0%} of positions")

    target, _, _ = load_hf_model(root / "e2b", dtype="float32", device="cuda")
    assistant, _, _ = load_hf_model(root / "e2b_assistant", dtype="float32", device="cuda")
    prompts = [[2, *range(40, 60)], [2, 9, 9, 4, 4, 9, 9, 4, 4], [2, 7, 100, 31]]
    greedy = SamplingParams(temperature=0)

    def decode(batch: int, spec: SpecOptions) -> list[list[int]]:
        decoder = BatchDecoder(target, max_batch=batch, ctx_size=96)
        decoder.drafters = {
            "mtp": MTPDrafter(target, assistant, decoder.cache),
            "ngram": NgramDrafter(),
            "draft": DraftModelDrafter(target.config, target, batch_size=batch, max_context=96),
        }
        outs = []
        for i in range(0, len(prompts), batch):
            slots = [
                decoder.add(p, n_predict=32, sampling=greedy, spec=spec, stop_ids=frozenset())
                for p in prompts[i : i + batch]
            ]
            while decoder.active():
                decoder.step()
            outs += [s.generated for s in slots]
            for s in slots:
                decoder.release(s)
        return outs

    plain = decode(1, SpecOptions())
    for kind in ("mtp", "ngram", "draft"):
        for n_max in (1, 2, 3, 4):
            for batch in (1, 3):
                same = decode(batch, SpecOptions(type=kind, n_max=n_max)) == plain
                report(same, f"cuda {kind} n_max={n_max} batch={batch}: equals plain greedy")
    print(f"{failures} failed")
    return 1 if failures else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    group = ap.add_mutually_exclusive_group(required=True)
    group.add_argument("--build", type=Path)
    group.add_argument("--check", type=Path)
    args = ap.parse_args()
    if args.build:
        build(args.build)
        return 0
    if not torch.cuda.is_available():
        print("no CUDA device", file=sys.stderr)
        return 1
    return check(args.check)


if __name__ == "__main__":
    raise SystemExit(main())
