"""Our MTP decoding vs transformers' assisted generation on the same tiny pair, in one run.

    python benchmarks/bench_mtp_vs_transformers.py [-n 64] [--reps 3] [--n-max 3] [--threads 1]
        [--pair trained|random] [--retrain]

The pair is the test suite's E2B-shaped target and its centroid-head assistant shape
(tests/hf_reference.py; needs the dev extra).

`--pair trained` (default): with random weights the target's next token is a hash of its context that
no drafter can learn (a drafter distilled from it accepts ~18% at position 1), so the target is first
trained (transformers, a few hundred AdamW steps) on a synthetic "phrase language": 32 random token
phrases, the next phrase drawn from a peaked distribution given the previous two. Then
`gemma_mtp.train.train_drafter` distils the assistant (the same shape as `hf_reference.assistant_config`)
from the trained target's own continuations. Both are cached under .cache/bench_mtp_pair/ (keyed by
the settings and the trainer's and reference builder's sources); prompts are sampled from the
language with a seed the training never uses. 2–3 minutes on one thread, once.
`--pair random`: the random-weight pair and fixed prompts (acceptance ~0: every draft is wasted).

Reported, greedy, per engine: decode tokens/s (prefill excluded: ours from its decode timer;
transformers' generate() timed whole minus a prefill-only call), the ratio to transformers, mean
accepted length (ours: 1 + accepted/rounds; transformers: tokens after the first / verify forwards,
counted with a forward hook on the target), draft and verify ms per round (transformers: time in the
candidate generator's get_candidates, and the rest of the round); plus our plain decoding and our
draft-model strategy with the target drafting for itself (every draft accepted), which isolates our
round overhead. Every engine's output is checked against our plain greedy output.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from _common import REPO, RESULTS, append_jsonl, cpu_name, format_table, git_commit, median, timestamp

sys.path.insert(0, str(REPO / "tests"))
import hf_reference as ref  # noqa: E402
from transformers.utils import logging as transformers_logging  # noqa: E402

from gemma_mtp.api import Engine  # noqa: E402
from gemma_mtp.sampling import SamplingParams  # noqa: E402
from gemma_mtp.speculative.base import SpecOptions  # noqa: E402

GREEDY = SamplingParams(temperature=0)
RANDOM_PROMPTS = [[2, *range(10, 30)], [2, 7, 9, 7, 9, 7, 9, 11, 13], [2, 100, 50, 25, 12, 6, 3]]
CACHE = REPO / ".cache" / "bench_mtp_pair"
# what the cached pair depends on besides the settings
SOURCES = [REPO / "tests" / "hf_reference.py", *sorted((REPO / "src" / "gemma_mtp" / "train").glob("*.py"))]


# --------------------------------------------------------------------------- the trained pair


@dataclass(frozen=True, kw_only=True)
class PhraseLanguage:
    """Documents of random token phrases; the next phrase depends on the previous two (order 2)."""

    seed: int = 0
    phrases: int = 32
    vocab: int = ref.VOCAB
    choice_probs: tuple[float, ...] = (0.5, 0.3, 0.2)  # of each context's 3 possible next phrases

    def tables(self) -> tuple[list[list[int]], torch.Tensor]:
        g = torch.Generator().manual_seed(self.seed)
        n, k = self.phrases, len(self.choice_probs)
        words = [
            torch.randint(3, self.vocab, (int(torch.randint(2, 7, (1,), generator=g)),), generator=g).tolist()
            for _ in range(n)
        ]
        nxt = torch.stack([torch.randperm(n, generator=g)[:k] for _ in range(n * n)]).view(n, n, k)
        return words, nxt

    def sample(self, length: int, g: torch.Generator) -> list[int]:
        """<bos> then phrases, cut to `length` tokens."""
        words, nxt = self.tables()
        probs = torch.tensor(self.choice_probs)
        a, b = (int(x) for x in torch.randint(self.phrases, (2,), generator=g))
        out = [2]
        while len(out) < length:
            out += words[b]
            a, b = b, int(nxt[a, b, int(torch.multinomial(probs, 1, generator=g))])
        return out[:length]


def train_target(model, language: PhraseLanguage, *, steps: int, seq_len: int = 64, batch: int = 32) -> float:
    """Next-token training of a transformers target in place; returns the last loss."""
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(language.seed + 1)
    model.train()
    loss = torch.tensor(float("nan"))
    for _ in range(steps):
        tokens = torch.tensor([language.sample(seq_len, g) for _ in range(batch)])
        loss = model(input_ids=tokens, labels=tokens, use_cache=False).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    model.eval()
    return float(loss.detach())


def drafter_options(target_model, steps: int):
    """`TrainOptions` for an assistant of `hf_reference.assistant_config`'s shape."""
    from gemma_mtp.train import TrainOptions

    with ref.reference_patches():
        _, config = ref.assistant_config(ref.text_config_of(target_model), use_ordered_embeddings=True)
    text = config.text_config
    assert text.layer_types == ["sliding_attention"] * (text.num_hidden_layers - 1) + ["full_attention"]
    return TrainOptions(
        layers=text.num_hidden_layers,
        width=text.hidden_size,
        heads=text.num_attention_heads,
        intermediate=text.intermediate_size,
        centroids=config.num_centroids,
        centroid_top_k=config.centroid_intermediate_top_k,
        sequences=512,
        seq_len=64,
        prompt_min=4,
        prompt_max=20,
        sample_max=0,  # the corpus already varies; greedy continuations are what greedy decoding drafts
        heldout_sequences=32,
        steps=steps,
        batch_size=16,
        eval_every=steps,
        checkpoint_every=steps,
        cache_features=False,
    )


def trained_pair(language: PhraseLanguage, target_steps: int, drafter_steps: int, retrain: bool) -> Path:
    """Directory with target/ and assistant/ (HF checkpoints) and pair.json; made once per key."""
    from gemma_mtp.train import train_drafter

    settings = {"language": language.__dict__, "target_steps": target_steps, "drafter_steps": drafter_steps}
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    digest.update(torch.__version__.encode())
    for path in SOURCES:
        digest.update(path.read_bytes())
    root = CACHE / digest.hexdigest()[:16]
    if (root / "pair.json").is_file() and not retrain:
        return root
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        target = ref.build_e2b_like(Path(tmp) / "random_target")
    loss = train_target(target.model, language, steps=target_steps)
    target.model.save_pretrained(root / "target", safe_serialization=True)
    t1 = time.perf_counter()
    g = torch.Generator().manual_seed(language.seed + 2)
    corpus = root / "corpus.jsonl"
    corpus.write_text("".join(json.dumps(language.sample(24, g)) + "\n" for _ in range(400)))
    with tempfile.TemporaryDirectory() as tmp:
        result = train_drafter(
            root / "target",
            Path(tmp) / "drafter.gguf",
            corpus=[corpus],
            options=drafter_options(target.model, drafter_steps),
            hf_dir=root / "assistant",
            progress=False,
        )
    info = {
        **settings,
        "target_final_loss": loss,
        "target_train_s": round(t1 - t0, 1),
        "drafter_train_s": round(time.perf_counter() - t1, 1),
        "drafter_heldout": result.heldout,
    }
    (root / "pair.json").write_text(json.dumps(info, indent=2) + "\n")
    return root


def load_hf(path: Path, assistant: bool, n_max: int):
    from transformers import Gemma4AssistantForCausalLM, Gemma4ForCausalLM

    cls = Gemma4AssistantForCausalLM if assistant else Gemma4ForCausalLM
    with ref.reference_patches():
        model = cls.from_pretrained(path, dtype=torch.float32, attn_implementation="eager").eval()
    if assistant:
        model.generation_config.num_assistant_tokens = n_max
        model.generation_config.num_assistant_tokens_schedule = "constant"
    return model


# --------------------------------------------------------------------------- the engines


def ours(engine: Engine, prompts: list[list[int]], spec: SpecOptions, n: int, reps: int) -> dict:
    rates, outs, draft_ms, verify_ms, rounds, accepted = [], [], 0.0, 0.0, 0, 0
    for _ in range(reps):
        tokens, seconds, outs = 0, 0.0, []
        for p in prompts:
            r = engine.generate(p, n_predict=n, sampling=GREEDY, spec=spec)
            tokens += r.timings.decode_tokens  # after the first round (its time is prompt_ms)
            seconds += r.timings.decode_ms / 1e3
            outs.append(r.token_ids)
            if r.speculative:
                draft_ms += r.speculative["draft_ms"]
                verify_ms += r.speculative["verify_ms"]
                rounds += r.speculative["rounds"]
                accepted += r.speculative["accepted"]
        rates.append(tokens / seconds)
    per_round = {}
    if rounds:
        per_round = {
            "draft_ms_per_round": draft_ms / rounds,
            "verify_ms_per_round": verify_ms / rounds,
            "mean_accepted_length": 1 + accepted / rounds,
        }
    return {"tokens_per_s": median(rates), "outputs": outs, **per_round}


@contextlib.contextmanager
def hf_round_probe(target):
    """Counts the target's forward calls and times the MTP candidate generator's drafting."""
    from transformers.generation.candidate_generator import SinglePositionMultiTokenCandidateGenerator as Gen

    probe = {"forwards": 0, "draft_s": 0.0}
    original = Gen.get_candidates

    def timed(self, *args, **kwargs):
        t0 = time.perf_counter()
        try:
            return original(self, *args, **kwargs)
        finally:
            probe["draft_s"] += time.perf_counter() - t0

    def count(*_):
        probe["forwards"] += 1

    hook = target.register_forward_pre_hook(count)
    Gen.get_candidates = timed
    try:
        yield probe
    finally:
        Gen.get_candidates = original
        hook.remove()


@torch.no_grad()
def transformers_rate(target, assistant, prompts: list[list[int]], n: int, reps: int) -> dict:
    rates, outs, rounds, tokens_after_first, draft_s, decode_s = [], [], 0, 0, 0.0, 0.0
    for _ in range(reps):
        tokens, seconds, outs = 0, 0.0, []
        for p in prompts:
            ids = torch.tensor([p])
            kw = dict(attention_mask=torch.ones_like(ids), do_sample=False, eos_token_id=None, pad_token_id=0)
            t0 = time.perf_counter()
            target.generate(ids, max_new_tokens=1, min_new_tokens=1, **kw)
            prefill = time.perf_counter() - t0
            with hf_round_probe(target) as probe:
                t0 = time.perf_counter()
                out = target.generate(
                    ids, max_new_tokens=n, min_new_tokens=n, assistant_model=assistant, **kw
                )
                elapsed = time.perf_counter() - t0 - prefill
            seconds += elapsed
            tokens += n - 1
            outs.append(out[0, len(p) :].tolist())
            rounds += probe["forwards"] - 1  # the first forward is the prompt's (it drafts nothing)
            tokens_after_first += n - 1
            draft_s += probe["draft_s"]
            decode_s += elapsed
        rates.append(tokens / seconds)
    return {
        "tokens_per_s": median(rates),
        "outputs": outs,
        "mean_accepted_length": tokens_after_first / rounds,
        "draft_ms_per_round": draft_s * 1e3 / rounds,
        "verify_ms_per_round": (decode_s - draft_s) * 1e3 / rounds,
    }


# --------------------------------------------------------------------------- main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=64)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--n-max", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--pair", choices=["trained", "random"], default="trained")
    ap.add_argument("--target-steps", type=int, default=300, help="target training steps (--pair trained)")
    ap.add_argument("--drafter-steps", type=int, default=300, help="train_drafter steps (--pair trained)")
    ap.add_argument("--retrain", action="store_true", help="train the pair again even when cached")
    ap.add_argument("--out", default=str(RESULTS / "mtp_vs_transformers.jsonl"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    transformers_logging.set_verbosity_error()
    with contextlib.ExitStack() as stack:
        if args.pair == "trained":
            language = PhraseLanguage()
            root = trained_pair(language, args.target_steps, args.drafter_steps, args.retrain)
            target_dir, assistant_dir = root / "target", root / "assistant"
            pair_info = json.loads((root / "pair.json").read_text())
            g = torch.Generator().manual_seed(language.seed + 3)
            prompts = [language.sample(16, g) for _ in range(3)]
        else:
            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
            target_ref = ref.build_e2b_like(tmp / "target")
            assistant_dir = ref.build_assistant(
                tmp / "assistant", target_ref, use_ordered_embeddings=True
            ).path
            target_dir, pair_info, prompts = target_ref.path, {}, RANDOM_PROMPTS
        hf_target = load_hf(target_dir, assistant=False, n_max=args.n_max)
        hf_assistant = load_hf(assistant_dir, assistant=True, n_max=args.n_max)
        target, config = ref.load_ours(target_dir)
        assistant, _ = ref.load_ours(assistant_dir)
    mtp_engine = Engine(target, config, ctx_size=512, stop_ids=frozenset(), drafter=assistant)
    self_engine = Engine(target, config, ctx_size=512, stop_ids=frozenset(), drafter=target)
    mtp_engine.generate(prompts[0], n_predict=8, sampling=GREEDY)  # warm-up
    with ref.reference_patches():
        hf = transformers_rate(hf_target, hf_assistant, prompts, args.n, args.reps)
    results = {
        "transformers assisted (mtp)": hf,
        "ours plain": ours(mtp_engine, prompts, SpecOptions(), args.n, args.reps),
        "ours mtp": ours(mtp_engine, prompts, SpecOptions(type="mtp", n_max=args.n_max), args.n, args.reps),
        "ours draft=target": ours(
            self_engine, prompts, SpecOptions(type="draft", n_max=args.n_max), args.n, args.reps
        ),
    }
    plain = results["ours plain"]["outputs"]
    common = {
        "cpu": cpu_name(),
        "threads": args.threads,
        "n": args.n,
        "n_max": args.n_max,
        "reps": args.reps,
        "pair": args.pair,
        "pair_info": pair_info,
        "commit": git_commit(),
        "timestamp": timestamp(),
        "torch": torch.__version__,
    }
    columns = [
        "engine",
        "tokens_per_s",
        "vs_transformers",
        "mean_accepted_length",
        "same_output_as_plain",
        "draft_ms_per_round",
        "verify_ms_per_round",
    ]
    rows = [
        {
            **common,
            "engine": name,
            **{c: r.get(c) for c in columns[1:]},
            "vs_transformers": r["tokens_per_s"] / hf["tokens_per_s"],
            "same_output_as_plain": r["outputs"] == plain,
        }
        for name, r in results.items()
    ]
    append_jsonl(args.out, rows)
    if pair_info:
        held = pair_info["drafter_heldout"]["mean_accepted_length"]
        print(
            f"trained pair: target loss {pair_info['target_final_loss']:.3f}, drafter held-out mean accepted "
            f"length at n=1..{len(held)}: {', '.join(f'{x:.2f}' for x in held)}"
        )
    print(format_table(rows, columns))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
