"""`gemma-mtp imatrix`: llama-imatrix's statistics (sum of x^2 per input column, rows per matrix) of
every recorded product, named by the GGUF file's tensors; a drafter calibrated with its target in the
loop; observing changes no result; the CLI writes a file llama.cpp's reader takes, with no host path."""

from __future__ import annotations

from pathlib import Path

import hf_reference as ref
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_gguf_tools_helpers import run_cli
from torch.overrides import TorchFunctionMode

from gemma_mtp import observe
from gemma_mtp.calibrate.imatrix import (
    Accumulator,
    drafter_chunk,
    product_names,
    split_chunks,
    target_chunk,
    target_states,
)
from gemma_mtp.calibrate.options import N_DRAFT, ImatrixOptions
from gemma_mtp.gguf import open_gguf
from gemma_mtp.gguf.imatrix import read_imatrix
from gemma_mtp.gguf.names import name_map
from gemma_mtp.speculative.options import SpecOptions
from gemma_mtp.tools.convert import convert_hf_to_gguf
from gemma_mtp.tools.sanitize import is_host_path
from gemma_mtp.weights.gguf_loader import load_gguf_model

pytest.importorskip("transformers")
CHUNK = ref.random_tokens(1, 24, seed=7)[0].tolist()  # longer than the tiny models' sliding window


class LinearInputs(TorchFunctionMode):
    """Every `F.linear` call's input, keyed by the weight tensor it multiplies (the reference)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: dict[int, list[torch.Tensor]] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is F.linear:
            self.seen.setdefault(id(args[1]), []).append(args[0].detach().reshape(-1, args[0].shape[-1]))
        return func(*args, **(kwargs or {}))


def _hand(inputs: list[torch.Tensor]) -> tuple[np.ndarray, int]:
    x = torch.cat(inputs).double()
    return (x * x).sum(dim=0).float().numpy(), x.shape[0]


@pytest.fixture(scope="module")
def e2b(reference_models):
    target, config = ref.load_ours(reference_models.target("e2b").path)
    return target, config


@pytest.fixture(scope="module")
def pair_gguf(reference_models, tmp_path_factory):
    """The E2B-like target and its centroid assistant as Q8_0 GGUF files (quantized kernels, fused
    projections, native layers where they are built)."""
    root = tmp_path_factory.mktemp("imatrix")
    target = convert_hf_to_gguf(reference_models.target("e2b").path, root / "t.gguf", out_type="Q8_0")
    drafter = convert_hf_to_gguf(
        reference_models.assistant("e2b", ordered=True).path,
        root / "d.gguf",
        out_type="Q8_0",
        keep_centroids=True,
    )
    return target, drafter


def test_sums_and_counts_equal_a_hand_computation_over_every_linear_input(e2b):
    target, config = e2b
    products = product_names(target, config)
    acc = Accumulator(products)
    with LinearInputs() as mode:
        target_chunk(target, CHUNK, acc)
    params = dict(target.named_parameters())
    by_weight = {id(params[ours]): gguf for ours, gguf in name_map(config).items() if ours in params}
    expected = {by_weight[w]: _hand(xs) for w, xs in mode.seen.items() if by_weight[w].startswith("blk.")}
    got = acc.entries()
    assert set(got) == set(expected)
    for name, (sums, count) in expected.items():
        in_sum2, counts = got[name]
        assert counts.tolist() == [count] == [len(CHUNK)]
        np.testing.assert_allclose(in_sum2.numpy()[0], sums, rtol=1e-6, err_msg=name)


def test_only_blk_products_of_a_target_are_recorded_as_llama_imatrix_does(e2b):
    target, config = e2b
    names = {n for p in product_names(target, config, process_output=True).values() for n in p.names}
    assert names and all(n.startswith("blk.") for n in names)
    assert "per_layer_model_proj.weight" not in names  # not a blk. product: llama-imatrix skips it


def test_expert_stacks_get_one_row_and_one_count_per_expert(reference_models):
    target, config = ref.load_ours(reference_models.target("moe").path)
    acc = Accumulator(product_names(target, config))
    target_chunk(target, CHUNK, acc)
    got = acc.entries()
    d, i = config.hidden_size, config.moe_intermediate_size
    for layer in range(config.num_layers):
        gate_up, counts = got[f"blk.{layer}.ffn_gate_up_exps.weight"]
        down, down_counts = got[f"blk.{layer}.ffn_down_exps.weight"]
        assert gate_up.shape == (config.num_experts, d) and down.shape == (config.num_experts, i)
        assert counts.shape == (config.num_experts,) and torch.equal(counts, down_counts)
        assert counts.sum() == len(CHUNK) * config.top_k_experts  # each token's picked experts
        assert bool(((gate_up.sum(dim=1) > 0) == (counts > 0)).all())
        assert got[f"blk.{layer}.ffn_gate.weight"][1].tolist() == [len(CHUNK)]  # the dense MLP beside


@torch.inference_mode()
def _logits(target, drafter):
    cache = target.make_cache(max_context=len(CHUNK))
    out = target(torch.tensor([CHUNK]), torch.arange(len(CHUNK))[None], cache)
    kv = {kind: cache.shared_kv(kind) for kind in cache.config.layer_kinds}
    step = drafter(
        torch.cat([target.embed(torch.tensor([[5]])), out.hidden[:, -1:]], -1), cache.lengths[:, None], kv
    )
    return target.logits(out.hidden), step.logits, step.hidden


@pytest.mark.parametrize("watched", ["target", "drafter"])
def test_observing_changes_no_result_bit_for_bit(pair_gguf, watched):
    target, t_config, _ = load_gguf_model(pair_gguf[0])
    drafter, d_config, _ = load_gguf_model(pair_gguf[1])
    plain = _logits(target, drafter)
    if watched == "target":
        acc = Accumulator(product_names(target, t_config))
    else:
        acc = Accumulator(product_names(drafter, d_config, layout="mainline"))
    with observe.observing(acc):
        seen = _logits(target, drafter)
    assert acc.sums and all(torch.equal(a, b) for a, b in zip(plain, seen, strict=True))
    assert not observe.active()


def _drafter_imatrix(pair, **kwargs) -> dict:
    target, _, _ = load_gguf_model(pair[0])
    drafter, config, _ = load_gguf_model(pair[1])
    acc = Accumulator(product_names(drafter, config, layout="mainline"))
    drafter_chunk(target, drafter, CHUNK, acc, n_draft=3, **kwargs)
    return {name: (s.numpy(), c.numpy()) for name, (s, c) in acc.entries().items()}


def test_drafter_imatrix_is_deterministic_and_covers_every_drafter_matrix(pair_gguf):
    first, second = _drafter_imatrix(pair_gguf), _drafter_imatrix(pair_gguf)
    assert first.keys() == second.keys()
    for name in first:
        assert np.array_equal(first[name][0], second[name][0]) and np.array_equal(
            first[name][1], second[name][1]
        )
    tensors = set(open_gguf(pair_gguf[1]).tensors)
    want = {n for n in tensors if n.endswith(("_proj.weight", "projection.weight", "centroids.weight"))}
    layer_matrices = ("attn_q", "attn_output", "ffn_gate", "ffn_up", "ffn_down")
    want |= {n for n in tensors if n.startswith("blk.") and n.split(".")[2] in layer_matrices}
    assert set(first) == want
    steps = (len(CHUNK) - 1) * 3  # a round at every position 1..T-1, 3 draft steps each
    assert first["blk.0.attn_q.weight"][1].tolist() == [steps]
    assert first["nextn.pre_projection.weight"][1].tolist() == [steps]
    assert first["nextn.post_projection.weight"][1].tolist() == [(len(CHUNK) - 1) * 2]  # none after the last


def test_drafter_imatrix_sees_the_targets_states(pair_gguf):
    with_target = _drafter_imatrix(pair_gguf)
    target, _, _ = load_gguf_model(pair_gguf[0])
    hidden, cache = target_states(target, CHUNK)
    for kv in (*cache.keys.values(), *cache.values.values()):
        kv.zero_()
    blind = _drafter_imatrix(pair_gguf, states=(torch.zeros_like(hidden), cache))
    assert with_target.keys() == blind.keys()
    assert not np.allclose(
        with_target["nextn.pre_projection.weight"][0], blind["nextn.pre_projection.weight"][0]
    )
    assert not np.allclose(with_target["blk.0.attn_output.weight"][0], blind["blk.0.attn_output.weight"][0])


def test_chunks_are_whole_slices_starting_with_bos():
    tokens = list(range(10, 33))
    assert split_chunks(tokens, 8, 2, None) == [[2, *range(11, 18)], [2, *range(19, 26)]]
    assert split_chunks(tokens, 8, 2, 1) == [[2, *range(11, 18)]]
    assert split_chunks(tokens, 24, 2, None) == []


def test_default_draft_length_is_the_speculative_default():
    assert N_DRAFT == SpecOptions().n_max == ImatrixOptions().n_draft


# ------------------------------------------------------------------------------------------- CLI


@pytest.fixture(scope="module")
def text_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("text") / "calibration.txt"
    words = [chr(97 + (i * 7) % 26) * (1 + i % 3) for i in range(400)]
    path.write_text(" ".join(words) + "\n")
    return path


@pytest.fixture(scope="module")
def pair_with_tokenizer(pair_gguf, reference_models, tmp_path_factory):
    """The target GGUF with a tokenizer (the converter embeds the checkpoint's tokenizer.json)."""
    import llama_cpp_checkpoints as checkpoints

    root = tmp_path_factory.mktemp("tok")
    ckpt = ref.copy_checkpoint(reference_models.target("e2b").path, root / "e2b")
    checkpoints.write_tokenizer(ckpt, ref.VOCAB)
    target = convert_hf_to_gguf(ckpt, root / "target.gguf", out_type="Q8_0")
    return target, pair_gguf[1]


@pytest.mark.parametrize("calibrate", ["target", "drafter"])
def test_cli_writes_an_imatrix_with_the_files_names_and_no_host_path(
    pair_with_tokenizer, text_file, tmp_path, calibrate, capsys
):
    target, drafter = pair_with_tokenizer
    out = tmp_path / "imatrix.gguf"
    argv = ["imatrix", "-m", str(target), "-f", str(text_file), "-o", str(out), "-c", "32", "--chunks", "2"]
    argv += ["-md", str(drafter), "--spec-draft-n-max", "2"] if calibrate == "drafter" else []
    assert run_cli([*argv, "-t", "1", "--quiet"]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    data = read_imatrix(out)
    assert data.datasets == ["calibration.txt"] and (data.chunk_count, data.chunk_size) == (2, 32)
    assert not any(is_host_path(d) for d in data.datasets)
    assert str(tmp_path) not in out.read_bytes().decode("latin-1")
    tensors = set(open_gguf(drafter if calibrate == "drafter" else target).tensors)
    assert data.entries and set(data.entries) <= tensors
    rows = 2 * 32 if calibrate == "target" else 2 * 31 * 2
    assert data.entries["blk.0.attn_q.weight"][1].tolist() == [rows]


def test_cli_bench_prompts_are_named_as_such(pair_with_tokenizer, tmp_path):
    out = tmp_path / "bench.gguf"
    argv = ["imatrix", "-m", str(pair_with_tokenizer[0]), "--bench-prompts", "-o", str(out)]
    assert run_cli([*argv, "-c", "64", "--chunks", "1", "-t", "1", "--quiet"]) == 0
    assert read_imatrix(out).datasets == ["gemma-mtp:bench-prompts"]


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (["-m", "{target}"], 2, "one of the arguments -f/--file --bench-prompts is required"),
        (["-md", "{drafter}", "-f", "{text}"], 2, "imatrix needs -m/--model: the drafter's target"),
        (["-m", "{target}", "-f", "{empty}"], 2, "holds no text"),
        (["-m", "{target}", "-f", "{text}", "-c", "100000"], 2, "shorter than one chunk of 100000"),
        (["-m", "{target}", "-f", "{tmp}/missing.txt"], 2, "no such file"),
        (["-m", "{target}", "-f", "{text}", "-o", "{tmp}/no/dir/x.gguf"], 1, "does not exist"),
        (["-m", "{target}", "-f", "{text}", "--chunks", "0"], 2, "--chunks 0"),
        (["-m", "{drafter}", "-f", "{text}"], 1, "drafter"),
    ],
    ids=[
        "no-text",
        "drafter-without-target",
        "empty-text",
        "short-text",
        "missing-text",
        "bad-output",
        "chunks",
        "drafter-as-target",
    ],
)
def test_bad_input_is_one_clear_line(pair_with_tokenizer, text_file, tmp_path, capsys, argv, code, message):
    target, drafter = pair_with_tokenizer
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    fill = {"target": target, "drafter": drafter, "text": text_file, "empty": empty, "tmp": tmp_path}
    argv = [a.format(**fill) for a in argv]
    out = [] if "-o" in argv else ["-o", str(tmp_path / "o.gguf")]
    assert run_cli(["imatrix", *argv, *out, "--quiet"]) == code
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "o.gguf").exists()


def test_llama_cpp_took_our_imatrix_files_as_recorded():
    """What scripts/check_imatrix_llama_cpp.py found with the vendored llama.cpp (never run by CI)."""
    import json

    record = json.loads((Path(__file__).parent / "fixtures" / "llama_cpp" / "manifest.json").read_text())[
        "imatrix"
    ]
    versus = record["target_vs_llama_imatrix"]
    assert versus["same_names"] and versus["counts_equal"] and versus["rel_diff_max"] < 0.05
    assert versus["llama_datasets_hold_a_path"] and versus["ours_datasets"] == ["calibration.txt"]
    assert all(
        q["accepted"] and q["entries_loaded"] and not q["no_entry_for"] for q in record["llama_quantize"]
    )
