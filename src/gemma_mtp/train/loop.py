"""`train_drafter`: target features -> a trained assistant -> HF checkpoint + GGUF.

Resumable: the features and a checkpoint (weights, optimiser, step, history) live in the work
directory; `resume=True` continues from the checkpoint. Deterministic in the seed on the CPU: the
batch of step i is drawn from a generator seeded with (seed, i), so a resumed run draws what an
uninterrupted one would.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from ..config import AssistantConfig, TextConfig
from ..errors import GemmaMTPError, ModelFormatError, UsageError
from ..gguf.formats import GGUF, model_format
from ..models.assistant import AssistantModel
from .clusters import cluster_of
from .data import Features, build_features, read_corpus
from .export import init_assistant, load_assistant, save_gguf, save_hf
from .objective import acceptance, draft_loss
from .options import TrainOptions, assistant_config_dict, make_assistant_config
from .shards import read_shard, shard_paths, stream

__all__ = ["train_drafter", "TrainResult", "load_target", "work_paths"]

BOS_ONLY = "<bos> only: the target writes its own prompts"


@dataclass
class TrainResult:
    gguf: Path
    hf_dir: Path
    steps: int
    seconds: float
    data_seconds: float
    train_tokens: int
    heldout: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "gguf": str(self.gguf),
            "hf_dir": str(self.hf_dir),
            "steps": self.steps,
            "seconds": round(self.seconds, 1),
            "data_seconds": round(self.data_seconds, 1),
            "train_tokens": self.train_tokens,
            "heldout": self.heldout,
        }


def load_target(path: str | Path, device: str) -> tuple[torch.nn.Module, TextConfig]:
    """The target, frozen: on the CPU as the runtime loads it by default (a GGUF's quantized blocks
    read in place, float32 activations), so the drafter learns the numerics it will draft for;
    bfloat16 on CUDA."""
    path = Path(path)
    dtype = "bfloat16" if device == "cuda" else "auto" if model_format(path) == GGUF else "float32"
    if model_format(path) == GGUF:
        from ..weights.gguf_loader import load_gguf_model

        model, config, _ = load_gguf_model(path, dtype=dtype, device=device)
    else:
        from ..weights.hf import load_hf_model

        model, config, _ = load_hf_model(path, dtype=dtype, device=device)
    if isinstance(config, AssistantConfig):
        raise ModelFormatError(f"{path}: this is an assistant; --target needs the model it should draft for")
    return model, config


def work_paths(out: str | Path, work_dir: str | Path | None, hf_dir: str | Path | None) -> tuple[Path, Path]:
    out = Path(out)
    work = Path(work_dir) if work_dir else out.with_name(out.stem + ".train")
    return work, Path(hf_dir) if hf_dir else work / "hf"


def _tokenizer_or_none(path: Path):
    from ..tokenizer import load_tokenizer

    try:
        return load_tokenizer(path)
    except GemmaMTPError:
        return None


def _features_key(target: Path, corpus: list[Path], options: TrainOptions) -> str:
    digest = hashlib.sha256()
    stat = target.stat() if target.is_file() else None
    digest.update(f"{target.resolve()}|{stat.st_size if stat else ''}".encode())
    for path in corpus:
        digest.update(path.read_bytes())
    data = {k: v for k, v in options.to_dict().items() if k in _DATA_FIELDS}
    digest.update(json.dumps(data, sort_keys=True).encode())
    return digest.hexdigest()[:16]


_DATA_FIELDS = (
    "sequences",
    "seq_len",
    "prompt_min",
    "prompt_max",
    "sample_max",
    "heldout",
    "heldout_sequences",
    "top_k",
    "gen_batch",
    "seed",
    "device",
)


def _split_docs(docs: list[list[int]], share: float, seed: int) -> tuple[list[list[int]], list[list[int]]]:
    if len(docs) < 2:
        return docs, docs  # one document (e.g. <bos>): held-out rows differ by their sampled tokens
    order = torch.randperm(len(docs), generator=torch.Generator().manual_seed(seed)).tolist()
    n_held = max(1, round(share * len(docs)))
    return [docs[i] for i in order[n_held:]], [docs[i] for i in order[:n_held]]


def _features(
    target,
    config: TextConfig,
    target_path: Path,
    corpus: list[Path],
    options: TrainOptions,
    work: Path,
    progress: bool,
):
    key = _features_key(target_path, corpus, options)
    path = work / "features.pt"
    if path.is_file():
        saved = torch.load(path, map_location="cpu", weights_only=True)
        if saved.get("key") == key:
            if progress:
                tqdm.write(f"features: reusing {path}")
            dev = target.device
            return Features(**saved["train"]).to(dev), Features(**saved["heldout"]).to(dev), 0.0
    t0 = time.perf_counter()
    bos = [config.bos_token_id if config.bos_token_id is not None else 2]
    docs = read_corpus(corpus, _tokenizer_or_none(target_path)) if corpus else [bos]
    train_docs, held_docs = _split_docs(docs, options.heldout, options.seed)
    n_held = options.heldout_sequences
    common = dict(
        seq_len=options.seq_len,
        prompt_min=options.prompt_min,
        prompt_max=options.prompt_max,
        top_k=options.top_k,
        gen_batch=options.gen_batch,
    )
    bar = tqdm(total=options.sequences + n_held, desc="target data", unit="seq", disable=not progress)
    train = build_features(
        target,
        train_docs,
        options.sequences,
        sample_max=options.sample_max,
        seed=options.seed,
        progress=bar.update,
        **common,
    )
    # held-out rows are greedy from their prompt on: what greedy speculation will draft
    held = build_features(
        target, held_docs, n_held, sample_max=0, seed=options.seed + 1, progress=bar.update, **common
    )
    bar.close()
    if options.cache_features:
        work.mkdir(parents=True, exist_ok=True)
        _atomic_save({"key": key, "train": train.state(), "heldout": held.state()}, path)
    return train, held, time.perf_counter() - t0


def _atomic_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _lr(options: TrainOptions, step: int) -> float:
    warm = min(1.0, (step + 1) / max(options.warmup, 1))
    progress = step / max(options.steps - 1, 1)
    return options.lr * warm * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def _quiet(_: str) -> None:
    pass


def train_drafter(
    target_path: str | Path,
    out: str | Path,
    *,
    corpus: list[str | Path] | tuple = (),
    options: TrainOptions | None = None,
    work_dir: str | Path | None = None,
    hf_dir: str | Path | None = None,
    out_type: str = "Q8_0",
    resume: bool = False,
    progress: bool = True,
    stop_after: int | None = None,
    shards: str | Path | None = None,
    init: str | Path | None = None,
) -> TrainResult:
    """Train a drafter for the target at `target_path` and write it to `out` (GGUF) and a HF directory.

    `stop_after`: end (checkpointed) after that many steps, as an interrupted run would; the
    learning-rate schedule still follows `options.steps`, so `resume=True` continues it exactly.
    `shards`: a directory of self-distillation shards (`train/**/shard-*.pt` streamed for training,
    `heldout/**/shard-*.pt` for the acceptance; see `train.shards`) instead of making data from
    `corpus`. `init`: fine-tune this assistant (GGUF in any drafter layout, or HF directory) instead
    of a fresh one; its architecture replaces the options' layers/width/heads/centroids.
    """
    t_start = time.perf_counter()
    options = options or TrainOptions()
    log = tqdm.write if progress else _quiet
    target_path, out = Path(target_path), Path(out)
    corpus = [Path(c) for c in corpus]
    work, hf_out = work_paths(out, work_dir, hf_dir)
    if options.device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device is available; use --device cpu")
    torch.manual_seed(options.seed)
    target, config = load_target(target_path, options.device)
    if init is not None:
        initial, config_dict = load_assistant(init)
        assistant_config = initial.config
    else:
        initial, config_dict = None, assistant_config_dict(config, options)
        assistant_config = make_assistant_config(config, options)
    held_first = None
    if shards is not None:
        train_paths, held, held_first, data_s = _shard_data(Path(shards), target.device)
        train = None
    else:
        train_paths = []
        train, held, data_s = _features(target, config, target_path, corpus, options, work, progress)

    ckpt_path = work / "checkpoint.pt"
    ckpt = (
        torch.load(ckpt_path, map_location="cpu", weights_only=False)
        if resume and ckpt_path.is_file()
        else None
    )
    if resume and ckpt is None:
        log(f"--resume: no checkpoint at {ckpt_path}; starting from step 0")
    if ckpt:
        model = AssistantModel(assistant_config)
    elif initial is not None:
        model = initial
    else:
        model = init_assistant(target, assistant_config, seed=options.seed)
    if ckpt:
        model.load_state_dict(ckpt["model"])
    dev = target.device
    model.to(dev).train()
    opt = torch.optim.AdamW(
        model.parameters(), lr=options.lr, betas=(0.9, 0.98), weight_decay=options.weight_decay
    )
    if ckpt:
        opt.load_state_dict(ckpt["optimizer"])
    start = ckpt["step"] if ckpt else 0
    history: list[dict[str, Any]] = ckpt["history"] if ckpt else []
    head = model.masked_embedding
    cluster = cluster_of(head.token_ordering, head.num_centroids) if head is not None else None
    token_loss = _resolve_token_loss(options.token_loss, head)
    cuda = dev.type == "cuda"
    bf16 = options.autocast == "bf16" or (options.autocast == "auto" and cuda)
    dtype = torch.bfloat16 if bf16 else torch.float32

    def autocast():
        return torch.autocast(dev.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()

    def evaluate() -> dict[str, Any]:
        model.eval()
        with autocast():
            result = acceptance(model, target, held, steps=options.draft_steps, dtype=dtype, first=held_first)
        model.train()
        return result

    def score(result: dict[str, Any]) -> float:
        return result["mean_accepted_length"][-1]

    def save(step: int) -> None:
        state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step, "history": history}
        _atomic_save({**state, "best": best, "options": options.to_dict()}, ckpt_path)

    heldout = evaluate() if start == 0 else history[-1]["heldout"] if history else evaluate()
    if start == 0:
        history.append({"step": 0, "heldout": heldout})
    # the best held-out weights so far: what is exported (early stop keeps them, not the last ones)
    best = ckpt["best"] if ckpt and ckpt.get("best") else {"step": start, "heldout": heldout, "model": None}
    stale = 0
    batches = (
        stream(train_paths, options.batch_size, seed=options.seed, step=start) if train is None else None
    )
    bar = tqdm(
        range(start, options.steps), initial=start, total=options.steps, desc="train", disable=not progress
    )
    step = start
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = _lr(options, step)
        if batches is not None:
            batch = next(batches).to(dev)
        else:
            index = torch.randint(
                len(train),
                (options.batch_size,),
                generator=torch.Generator().manual_seed(options.seed * 1_000_003 + step),
            )
            batch = train.rows(index)
        with autocast():
            parts = draft_loss(
                model,
                target,
                batch,
                steps=options.draft_steps,
                step_decay=options.step_decay,
                cluster_weight=options.cluster_weight,
                cluster=cluster,
                dtype=dtype,
                token_loss=token_loss,
            )
        opt.zero_grad(set_to_none=True)
        parts.total.backward()
        if options.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), options.grad_clip)
        opt.step()
        done = step + 1
        out_of_time = bool(options.max_minutes) and time.perf_counter() - t_start > 60 * options.max_minutes
        out_of_time |= stop_after is not None and done >= stop_after
        if done % options.eval_every == 0 or done == options.steps or out_of_time:
            heldout = evaluate()
            history.append(
                {
                    "step": done,
                    "loss": float(parts.total.detach()),
                    "token_loss": [float(x) for x in parts.token],
                    "cluster_loss": [float(x) for x in parts.cluster],
                    "heldout": heldout,
                    "elapsed_s": round(time.perf_counter() - t_start, 1),
                }
            )
            _append_log(work / "log.jsonl", history[-1])
            if score(heldout) > score(best["heldout"]):
                best = {"step": done, "heldout": heldout, "model": _cpu_state(model)}
                stale = 0
            else:
                stale += 1
            if options.patience and stale >= options.patience:
                log(f"early stop after step {done}: no better held-out length in {stale} evaluations")
                out_of_time = True
        if done % options.checkpoint_every == 0 or done == options.steps or out_of_time:
            save(done)
        if done % 10 == 0 or done == options.steps:  # reading the loss waits for the device
            held_len = heldout["mean_accepted_length"][-1]
            bar.set_postfix(loss=f"{float(parts.total.detach()):.3f}", heldout_len=f"{held_len:.2f}")
        if out_of_time:
            log(
                f"stopping after step {done} of {options.steps} (time limit or stop_after); --resume continues"
            )
            break
    bar.close()
    steps_done = step + 1 if options.steps > start else start

    if best["model"] is not None and score(best["heldout"]) > score(heldout):
        model.load_state_dict(best["model"])
        heldout = best["heldout"]
        log(f"exporting the best held-out weights, from step {best['step']}")
    model.eval()
    save_hf(model, config_dict, hf_out)
    report = {
        "options": options.to_dict(),
        "steps": steps_done,
        "heldout": heldout,
        "corpus": str(shards) if shards is not None else [str(c) for c in corpus] or BOS_ONLY,
        "init": str(init) if init is not None else None,
        "best_step": best["step"],
    }
    (hf_out / "train_report.json").write_text(json.dumps(report, indent=2) + "\n")
    gguf = save_gguf(hf_out, out, out_type=out_type)
    return TrainResult(
        gguf=gguf,
        hf_dir=hf_out,
        steps=steps_done,
        seconds=time.perf_counter() - t_start,
        data_seconds=data_s,
        train_tokens=int(train.tokens.numel()) if train is not None else _shard_tokens(train_paths),
        heldout=heldout,
        history=history,
    )


def _resolve_token_loss(choice: str, head) -> str:
    """`--token-loss` for this drafter: the candidate loss needs a centroid head whose ordering is a
    permutation (each token in one cluster); auto takes it whenever it can."""
    usable = head is not None and head.distinct_candidates()
    if choice == "clusters" and not usable:
        why = "has a dense head" if head is None else "has a token_ordering that is not a permutation"
        raise UsageError(f"--token-loss clusters: the drafter {why}; use --token-loss full")
    return "clusters" if choice == "clusters" or (choice == "auto" and usable) else "full"


def _cpu_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def _shard_data(root: Path, device) -> tuple[list[Path], Features, torch.Tensor, float]:
    """Training shard paths (streamed) and the held-out shards in memory, with each row's prompt length."""
    train = sorted(p for sub in (root / "train").glob("**/") for p in shard_paths(sub))
    held = sorted(p for sub in (root / "heldout").glob("**/") for p in shard_paths(sub))
    if not train or not held:
        raise UsageError(
            f"--shards {root}: needs shards under train/ and heldout/ (scripts/make_drafter_corpus.py data)"
        )
    parts = [read_shard(p) for p in held]
    feats = Features.cat([f for f, _ in parts]).to(device)
    return train, feats, torch.cat([s for _, s in parts]), 0.0


def _shard_tokens(paths: list[Path]) -> int:
    return sum(
        int(torch.load(p, map_location="cpu", weights_only=True, mmap=True)["tokens"].numel()) for p in paths
    )


def _append_log(path: Path, row: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(json.dumps(row) + "\n")
