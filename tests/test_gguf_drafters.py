"""Assistant drafters in the three GGUF layouts (mainline, legacy, ik): they load to the HF
assistant's config and outputs, and converting between layouts changes names and keys, never data."""

from __future__ import annotations

import gguf
import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType
from test_gguf_helpers import realigned, synthetic_shared_kv

from gemma_mtp.errors import ModelFormatError
from gemma_mtp.gguf import open_gguf
from gemma_mtp.gguf.keys import DRAFTER_LAYOUTS
from gemma_mtp.gguf.names import DRAFTER_HEADS, ROPE_FREQS
from gemma_mtp.tools.convert import LAYOUTS, convert_drafter_layout, convert_hf_to_gguf
from gemma_mtp.weights.gguf_loader import load_gguf_model
from gemma_mtp.weights.hf import load_hf_model

pytest.importorskip("transformers")

PAIRS = [("e2b", True), ("e2b", False), ("dense31b", False)]


@torch.no_grad()
def _draft_step(model, config):
    shared = synthetic_shared_kv(config.text, length=6, seed=1)
    inputs = torch.randn(1, 1, 2 * config.backbone_hidden_size, generator=torch.Generator().manual_seed(2))
    return model(inputs, torch.tensor([[6]]), shared)


def _assistant(reference_models, target: str, ordered: bool):
    return reference_models.assistant(target, ordered=ordered)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize(("target", "ordered"), PAIRS)
def test_drafter_gguf_gives_the_hf_assistant_outputs(reference_models, tmp_path, target, ordered, layout):
    reference = _assistant(reference_models, target, ordered)
    path = convert_hf_to_gguf(
        reference.path, tmp_path / f"drafter.{layout}.gguf", layout=layout, keep_centroids=True
    )
    hf_model, hf_config, _ = load_hf_model(reference.path, dtype="float32")
    gguf_model, gguf_config, _ = load_gguf_model(path, dtype="float32")
    assert gguf_config == hf_config
    want, got = _draft_step(realigned(hf_model), hf_config), _draft_step(realigned(gguf_model), gguf_config)
    assert torch.equal(got.logits, want.logits)
    assert torch.equal(got.hidden, want.hidden)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_each_layout_names_its_architecture_keys_and_heads(reference_models, tmp_path, layout):
    reference = _assistant(reference_models, "e2b", True)
    path = convert_hf_to_gguf(
        reference.path, tmp_path / f"drafter.{layout}.gguf", layout=layout, keep_centroids=True
    )
    spec, reader = DRAFTER_LAYOUTS[layout], gguf.GGUFReader(path)
    fields = {name: field.contents() for name, field in reader.fields.items()}
    tensors = {t.name: t for t in reader.tensors}
    assert fields["general.architecture"] == spec.arch
    assert fields[f"{spec.arch}.{spec.backbone_key}"] == reference.model.config.backbone_hidden_size
    assert set(DRAFTER_HEADS[layout].values()) <= set(tensors)  # centroid tensors kept in every layout
    assert (
        tensors[DRAFTER_HEADS[layout]["masked_embedding.token_ordering"]].tensor_type
        == GGMLQuantizationType.I32
    )
    assert (ROPE_FREQS in tensors) == spec.rope_freqs
    n_layers = fields[f"{spec.arch}.block_count"]
    if layout == "mainline":
        assert fields[f"{spec.arch}.nextn_predict_layers"] == n_layers
    if layout == "legacy":
        assert fields[f"{spec.arch}.requires_target_arch"] == "gemma4"
    assert fields[f"{spec.arch}.{spec.ordered_key}"] is True
    assert fields[f"{spec.arch}.{spec.centroid_count_key}"] == reference.model.config.num_centroids


def _snapshot(path):
    gf = open_gguf(path)
    tensors = {name: (t.tensor_type, t.data.tobytes()) for name, t in gf.tensors.items()}
    return gf, tensors, {key: field.value for key, field in gf.fields.items()}


@pytest.mark.parametrize("ordered", [True, False])
def test_layout_round_trip_is_byte_identical(reference_models, tmp_path, ordered):
    reference = _assistant(reference_models, "e2b", ordered)
    start = convert_hf_to_gguf(
        reference.path, tmp_path / "a.mainline.gguf", layout="mainline", out_type="Q8_0", keep_centroids=True
    )
    legacy = convert_drafter_layout(start, tmp_path / "b.legacy.gguf", "legacy")
    ik = convert_drafter_layout(legacy, tmp_path / "c.ik.gguf", "ik")
    back = convert_drafter_layout(ik, tmp_path / "d.mainline.gguf", "mainline", keep_centroids=True)
    _, tensors_a, meta_a = _snapshot(start)
    _, tensors_d, meta_d = _snapshot(back)
    assert tensors_d == tensors_a
    assert meta_d == meta_a
    # every hop keeps the data of every tensor both layouts carry, under the layout's names
    for hop in (legacy, ik):
        gf, tensors, meta = _snapshot(hop)
        heads = {
            DRAFTER_HEADS["mainline"][k]: v
            for k, v in DRAFTER_HEADS[DRAFTER_LAYOUTS_BY_ARCH[gf.arch]].items()
        }
        for name, data in tensors_a.items():
            if name == ROPE_FREQS and ROPE_FREQS not in tensors:
                continue
            assert tensors[heads.get(name, name)] == data, name
        shared = {k.split(".", 1)[1] for k in meta_a if k.startswith("gemma4-assistant.")}
        for suffix in shared & {k.split(".", 1)[1] for k in meta if k.startswith(gf.arch + ".")}:
            assert meta[f"{gf.arch}.{suffix}"] == meta_a[f"gemma4-assistant.{suffix}"], suffix


DRAFTER_LAYOUTS_BY_ARCH = {spec.arch: name for name, spec in DRAFTER_LAYOUTS.items()}


def test_layout_conversion_keeps_the_outputs(reference_models, tmp_path):
    reference = _assistant(reference_models, "e2b", True)
    start = convert_hf_to_gguf(reference.path, tmp_path / "a.gguf", layout="legacy")
    ik = convert_drafter_layout(start, tmp_path / "b.gguf", "ik")
    a_model, a_config, _ = load_gguf_model(start, dtype="float32")
    b_model, b_config, _ = load_gguf_model(ik, dtype="float32")
    assert a_config == b_config
    assert torch.equal(
        _draft_step(realigned(a_model), a_config).logits, _draft_step(realigned(b_model), b_config).logits
    )


def test_layout_conversion_refuses_a_target(reference_models, tmp_path):
    target = convert_hf_to_gguf(reference_models.target("e2b").path, tmp_path / "t.gguf")
    with pytest.raises(ModelFormatError, match="not a drafter"):
        convert_drafter_layout(target, tmp_path / "out.gguf", "ik")


def test_q8_0_drafter_keeps_vectors_and_ordering_exact(reference_models, tmp_path):
    reference = _assistant(reference_models, "e2b", True)
    path = convert_hf_to_gguf(reference.path, tmp_path / "q.gguf", layout="ik", out_type="Q8_0")
    hf_model, _, _ = load_hf_model(reference.path, dtype="float32")
    gguf_model, _, _ = load_gguf_model(path, dtype="float32")
    want, got = hf_model.state_dict(), gguf_model.state_dict()
    assert torch.equal(got["masked_embedding.token_ordering"], want["masked_embedding.token_ordering"])
    for name, value in want.items():
        if value.dim() <= 1:
            assert torch.equal(got[name], value), name
        else:
            assert np.allclose(got[name].numpy(), value.numpy(), atol=float(value.abs().max()) / 100), name
