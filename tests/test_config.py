"""config.json -> TextConfig: the per-layer facts the models rely on."""

from __future__ import annotations

import pytest

from gemma_mtp.config import FULL, SLIDING, config_from_dict
from gemma_mtp.errors import ModelFormatError

BASE = {
    "model_type": "gemma4_text",
    "vocab_size": 64,
    "hidden_size": 32,
    "intermediate_size": 48,
    "num_hidden_layers": 4,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "head_dim": 16,
    "layer_types": [SLIDING, FULL, SLIDING, FULL],
}


def test_an_empty_per_layer_config_means_full_layers_keep_head_dim():
    config = config_from_dict({**BASE, "per_layer_config": {}})
    assert [s.head_dim for s in config.layers] == [16, 16, 16, 16]


def test_released_flat_keys_give_full_layers_their_own_head_dim_and_kv_heads():
    config = config_from_dict(
        {**BASE, "global_head_dim": 32, "num_global_key_value_heads": 2, "attention_k_eq_v": True}
    )
    full = [s for s in config.layers if s.kind == FULL]
    assert {(s.head_dim, s.kv_heads, s.k_eq_v) for s in full} == {(32, 2, True)}
    assert {s.head_dim for s in config.layers if s.kind == SLIDING} == {16}


def test_kv_shared_layers_read_the_last_owner_of_their_kind():
    config = config_from_dict(
        {**BASE, "num_hidden_layers": 6, "layer_types": [SLIDING, FULL] * 3, "num_kv_shared_layers": 2}
    )
    assert [s.kv_source for s in config.layers] == [0, 1, 2, 3, 2, 3]
    assert [s.owns_kv for s in config.layers] == [True] * 4 + [False] * 2


def test_unknown_model_type_and_missing_keys_are_named():
    with pytest.raises(ModelFormatError, match="unsupported model_type 'llama'"):
        config_from_dict({**BASE, "model_type": "llama"})
    with pytest.raises(ModelFormatError, match="missing required key 'hidden_size'"):
        config_from_dict({k: v for k, v in BASE.items() if k != "hidden_size"})
