"""Our mainline output is what llama.cpp's converter writes and its loader accepts: a centroid
drafter's head is left out unless asked for (with a notice either way), dense drafters carry no head
keys, the MoE router stays F32, `general.name`/`general.size_label` follow gguf-py's rules; a
centroid-less drafter says it drafts with the full head, and `--centroids-from` puts the head back."""

from __future__ import annotations

import math

import gguf
import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType
from test_gguf_helpers import realigned, rewrite_gguf, synthetic_shared_kv

from gemma_mtp.cli.main import main
from gemma_mtp.errors import ModelFormatError
from gemma_mtp.gguf.names import DRAFTER_HEADS
from gemma_mtp.tools.convert import convert_drafter_layout, convert_hf_to_gguf
from gemma_mtp.tools.inspect import inspect_gguf
from gemma_mtp.tools.pair import pair_gguf
from gemma_mtp.weights.gguf_loader import load_gguf_model
from gemma_mtp.weights.hf import load_hf_model

pytest.importorskip("transformers")

CENTROID_NAMES = ("masked_embd_centroids.weight", "masked_embd_ordering")
HEAD_KEYS = ("centroid_count", "centroid_top_k", "use_ordered_embeddings", "attention.k_eq_v")


def _fields(path):
    reader = gguf.GGUFReader(path)
    return {n: f.contents() for n, f in reader.fields.items()}, {t.name: t for t in reader.tensors}


@torch.no_grad()
def _draft_logits(model, config):
    shared = synthetic_shared_kv(config.text, length=6, seed=1)
    inputs = torch.randn(1, 1, 2 * config.backbone_hidden_size, generator=torch.Generator().manual_seed(2))
    return realigned(model)(inputs, torch.tensor([[6]]), shared).logits


def test_mainline_leaves_out_the_centroid_head_by_default_and_says_so(reference_models, tmp_path):
    reference = reference_models.assistant("e2b", ordered=True)
    notices: list[str] = []
    path = convert_hf_to_gguf(reference.path, tmp_path / "d.gguf", notices=notices)
    fields, tensors = _fields(path)
    assert not set(CENTROID_NAMES) & set(tensors)
    assert fields["gemma4-assistant.use_ordered_embeddings"] is True  # the checkpoint had the head
    assert len(notices) == 1 and "llama.cpp can load" in notices[0]


def test_keep_centroids_keeps_the_head_with_a_notice_that_llama_cpp_cannot_read_it(
    reference_models, tmp_path
):
    reference = reference_models.assistant("e2b", ordered=True)
    notices: list[str] = []
    path = convert_hf_to_gguf(reference.path, tmp_path / "d.gguf", keep_centroids=True, notices=notices)
    _, tensors = _fields(path)
    assert set(CENTROID_NAMES) <= set(tensors)
    assert len(notices) == 1 and "llama.cpp cannot load" in notices[0]


@pytest.mark.parametrize("target", ["e2b", "dense31b"])
def test_dense_mainline_drafter_carries_no_head_or_k_eq_v_keys(reference_models, tmp_path, target):
    reference = reference_models.assistant(target, ordered=False)
    notices: list[str] = []
    path = convert_hf_to_gguf(reference.path, tmp_path / "d.gguf", notices=notices)
    fields, _ = _fields(path)
    assert [k for k in fields if k.removeprefix("gemma4-assistant.") in HEAD_KEYS] == []
    assert notices == []


@pytest.mark.parametrize("out_type", ["F16", "BF16", "Q8_0"])
def test_moe_router_stays_f32_under_any_outtype(reference_models, tmp_path, out_type):
    path = convert_hf_to_gguf(reference_models.target("moe").path, tmp_path / "t.gguf", out_type=out_type)
    _, tensors = _fields(path)
    routers = [t for name, t in tensors.items() if name.endswith("ffn_gate_inp.weight")]
    assert routers and {t.tensor_type for t in routers} == {GGMLQuantizationType.F32}
    assert tensors["blk.0.attn_q.weight"].tensor_type != GGMLQuantizationType.F32


def _expected_size_label(tensors) -> str:
    shared = expert = 0
    counts = []
    for name, t in tensors.items():
        n = math.prod(int(d) for d in t.shape)
        if "_exps." in name and len(t.shape) >= 3:
            counts.append(int(t.shape[-1]))  # GGUF dims are reversed: experts are the last
            expert += n // counts[-1]
        else:
            shared += n
    n_experts = sum(counts) // len(counts) if counts else 0
    return gguf.size_label(shared + expert * (1 if n_experts else 0), shared, expert, n_experts)


@pytest.mark.parametrize("name", ["e2b", "moe"])
def test_general_name_and_size_label_follow_llama_cpps_converter(reference_models, tmp_path, name):
    reference = reference_models.target(name)
    fields, tensors = _fields(convert_hf_to_gguf(reference.path, tmp_path / "t.gguf"))
    assert fields["general.name"] == gguf.Metadata.id_to_title(reference.path.name)
    assert fields["general.size_label"] == _expected_size_label(tensors)
    if name == "moe":
        assert fields["general.size_label"].startswith("4x")


def test_a_drafter_that_lost_its_centroid_head_says_it_drafts_with_the_full_head(reference_models, tmp_path):
    reference = reference_models.assistant("e2b", ordered=True)
    path = convert_hf_to_gguf(reference.path, tmp_path / "d.gguf")
    _, config, report = load_gguf_model(path, dtype="float32")
    assert not config.use_ordered_embeddings
    assert any("centroid head that this file lacks" in n and "--centroids-from" in n for n in report.notices)
    hyper = inspect_gguf(path)["hyperparameters"]
    assert hyper["head"].startswith("full head") and "num_centroids" not in hyper


def test_a_mainline_drafter_without_head_keys_gets_the_dense_head_notice(reference_models, tmp_path):
    path = convert_hf_to_gguf(reference_models.assistant("e2b", ordered=False).path, tmp_path / "d.gguf")
    _, _, report = load_gguf_model(path, dtype="float32")
    assert any("dense drafter head" in n for n in report.notices)


@pytest.mark.parametrize("layout", ["mainline", "legacy"])
def test_centroids_from_puts_the_head_back(reference_models, tmp_path, layout):
    reference = reference_models.assistant("e2b", ordered=True)
    dropped = convert_hf_to_gguf(reference.path, tmp_path / "dropped.gguf")
    notices: list[str] = []
    restored = convert_drafter_layout(
        dropped, tmp_path / "restored.gguf", layout, centroids_from=reference.path, notices=notices
    )
    hf_model, hf_config, _ = load_hf_model(reference.path, dtype="float32")
    model, config, report = load_gguf_model(restored, dtype="float32")
    assert config == hf_config
    assert not any("full" in n for n in report.notices)
    assert torch.equal(_draft_logits(model, config), _draft_logits(hf_model, hf_config))
    assert inspect_gguf(restored)["hyperparameters"]["head"].startswith("centroid head")
    assert (layout == "mainline") == any("llama.cpp cannot load" in n for n in notices)


def test_centroids_from_a_checkpoint_of_another_width_is_refused(reference_models, tmp_path):
    dropped = convert_hf_to_gguf(reference_models.assistant("e2b", ordered=True).path, tmp_path / "d.gguf")
    dense = reference_models.assistant("e2b", ordered=False)
    with pytest.raises(ModelFormatError, match="centroid head"):
        convert_drafter_layout(dropped, tmp_path / "o.gguf", "mainline", centroids_from=dense.path)


def _mistagged(reference_models, tmp_path):
    """A dense drafter as early conversions tagged it: general.architecture = gemma4, no width key."""
    reference = reference_models.assistant("e2b", ordered=False)
    good = convert_hf_to_gguf(reference.path, tmp_path / "good.gguf")
    bad = rewrite_gguf(
        good, tmp_path / "bad.gguf", arch="gemma4", drop_keys=("gemma4-assistant.embedding_length_out",)
    )
    return good, bad


def test_a_drafter_tagged_gemma4_is_named_as_an_assistant_with_the_fix(reference_models, tmp_path):
    _, bad = _mistagged(reference_models, tmp_path)
    with pytest.raises(ModelFormatError) as info:
        load_gguf_model(bad, dtype="float32")
    message = str(info.value)
    assert "MTP assistant (drafter) tagged general.architecture = gemma4" in message
    assert "gemma-mtp convert bad.gguf OUT.gguf --layout mainline" in message


@pytest.mark.parametrize("layout", ["mainline", "ik"])
def test_convert_rewrites_a_drafter_tagged_gemma4_to_a_layout(reference_models, tmp_path, layout, capsys):
    good, bad = _mistagged(reference_models, tmp_path)
    out = tmp_path / "fixed.gguf"
    assert main(["convert", str(bad), str(out), "--layout", layout]) == 0
    want_model, want_config, _ = load_gguf_model(good, dtype="float32")
    got_model, got_config, _ = load_gguf_model(out, dtype="float32")
    assert got_config == want_config
    assert torch.equal(_draft_logits(got_model, got_config), _draft_logits(want_model, want_config))


@pytest.mark.parametrize("prefixed", [True, False])
def test_pair_reads_requires_target_arch_with_or_without_the_arch_prefix(
    reference_models, tmp_path, prefixed
):
    target = convert_hf_to_gguf(reference_models.target("e2b").path, tmp_path / "t.gguf")
    legacy = convert_hf_to_gguf(
        reference_models.assistant("e2b", ordered=False).path, tmp_path / "l.gguf", layout="legacy"
    )
    key = "gemma4_assistant.requires_target_arch"
    draft = legacy
    if not prefixed:
        from test_gguf_tools_helpers import with_metadata

        draft = with_metadata(legacy, tmp_path / "bare.gguf", {"requires_target_arch": "gemma4"}, drop=(key,))
    notes = {c.name: c.detail for c in pair_gguf(target, draft).checks}
    assert notes["required target"] == "gemma4"
    assert notes["drafter head"].startswith("full head")


def test_ordering_tensor_is_int32_when_put_back(reference_models, tmp_path):
    reference = reference_models.assistant("e2b", ordered=True)
    dropped = convert_hf_to_gguf(reference.path, tmp_path / "d.gguf")
    restored = convert_drafter_layout(dropped, tmp_path / "r.gguf", "ik", centroids_from=reference.path)
    _, tensors = _fields(restored)
    ordering = tensors[DRAFTER_HEADS["ik"]["masked_embedding.token_ordering"]]
    assert ordering.tensor_type == GGMLQuantizationType.I32
    assert np.array_equal(
        np.asarray(ordering.data).reshape(-1),
        reference.model.masked_embedding.token_ordering.numpy().astype(np.int32),
    )
