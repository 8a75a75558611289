"""Our assistants against transformers' Gemma4(Unified)AssistantForCausalLM given the same inputs
and the same shared KV, plus transformers-only checks of the reference itself (``test_hf_*``)."""

from __future__ import annotations

import hf_reference as ref
import pytest
import torch

pytest.importorskip("transformers")

W = ref.SLIDING_WINDOW
# (target, centroid head?)
PAIRS = [
    ("e2b", False),
    ("e2b", True),
    ("e2b_conditional", True),
    ("moe", False),
    ("dense31b", True),
    ("unified", False),
    ("unified", True),
]
PAIR_IDS = [f"{target}-{'centroids' if ordered else 'dense'}" for target, ordered in PAIRS]
DRAFT_STEPS = 3


def ours_shared_kv(hf_kv: dict, lengths: list[int]) -> dict:
    """Our SharedKV views over transformers' KV tensors; slots past a row's length are empty."""
    from gemma_mtp.models.common import SharedKV

    views = {}
    for kind, (keys, values) in hf_kv.items():
        batch, _, slots, _ = keys.shape
        positions = torch.arange(slots).expand(batch, slots).clone()
        for row, length in enumerate(lengths):
            positions[row, length:] = -1
        window = W if kind == ref.S else None
        views[kind] = SharedKV(
            keys=keys, values=values, positions=positions, lengths=torch.tensor(lengths), window=window
        )
    return views


def draft_input(model, token: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
    """concat(target's scaled embedding of ``token`` [1, 1], a backbone-width hidden [1, 1, D])."""
    return torch.cat([model.get_input_embeddings()(token), hidden], dim=-1)


@torch.no_grad()
def hf_assistant(assistant, inputs_embeds, position: int, hf_kv: dict):
    return assistant(
        inputs_embeds=inputs_embeds, position_ids=torch.tensor([[position]]), shared_kv_states=hf_kv
    )


def assert_same_draft(ours_logits, hf_logits, ordered: bool, what: str) -> None:
    """Dense head: every logit. Centroid head: the same candidate set, their logits, the argmax."""
    if not ordered:
        ref.assert_close(ours_logits, hf_logits, what)
    else:
        candidates = hf_logits > hf_logits.amin(dim=-1, keepdim=True)
        ours_candidates = ours_logits > ours_logits.amin(dim=-1, keepdim=True)
        assert torch.equal(ours_candidates, candidates), f"{what}: different candidate tokens"
        ref.assert_close(ours_logits[candidates], hf_logits[candidates], f"{what} candidates")
    assert torch.equal(ours_logits.argmax(-1), hf_logits.argmax(-1)), f"{what}: argmax differs"


# --------------------------------------------------------------------------- ours vs transformers


@pytest.mark.parametrize(("target", "ordered"), PAIRS, ids=PAIR_IDS)
def test_draft_steps_match_transformers(reference_models, target, ordered):
    """Three draft steps at one position (S=7 <= window: every KV entry visible in any semantics)."""
    paired = reference_models.target(target)
    hf = reference_models.assistant(target, ordered=ordered).model
    tokens = ref.random_tokens(1, 8, seed=20)
    prefix, last = tokens[:, :7], tokens[:, 7:]
    state = ref.hf_target_state(paired.model, prefix)
    position = prefix.shape[1]

    ours, _ = ref.load_ours(reference_models.assistant(target, ordered=ordered).path)
    shared = ours_shared_kv(state["shared_kv"], [position])
    token, hidden = last, state["hidden"][:, -1:]
    for step in range(DRAFT_STEPS):
        inputs = draft_input(paired.model, token, hidden)
        expected = hf_assistant(hf, inputs, position, state["shared_kv"])
        with torch.no_grad():
            out = ours(inputs, torch.tensor([[position]]), shared)
        assert_same_draft(out.logits.float(), expected.logits.float(), ordered, f"step {step} logits")
        ref.assert_close(out.hidden, expected.last_hidden_state, f"step {step} projected hidden")
        token, hidden = expected.logits.argmax(-1), expected.last_hidden_state


@pytest.mark.parametrize(
    ("target", "ordered"), [("e2b", True), ("dense31b", False)], ids=["e2b-centroids", "dense31b-dense"]
)
def test_batched_drafts_with_different_kv_lengths_match_each_row(reference_models, target, ordered):
    paired = reference_models.target(target)
    hf = reference_models.assistant(target, ordered=ordered).model
    lengths = [7, 5]
    tokens = ref.random_tokens(2, 8, seed=21)
    states = [ref.hf_target_state(paired.model, tokens[row : row + 1, :n]) for row, n in enumerate(lengths)]
    last = torch.stack([tokens[row, n] for row, n in enumerate(lengths)])[:, None]

    batched_kv = {}
    for kind in states[0]["shared_kv"]:
        keys, values = states[0]["shared_kv"][kind]
        short_keys, short_values = states[1]["shared_kv"][kind]
        pad = keys.shape[2] - short_keys.shape[2]
        # empty slots may hold anything
        garbage = torch.randn(
            1, keys.shape[1], pad, keys.shape[3], generator=torch.Generator().manual_seed(0)
        )
        batched_kv[kind] = (
            torch.cat([keys, torch.cat([short_keys, garbage], dim=2)]),
            torch.cat([values, torch.cat([short_values, garbage], dim=2)]),
        )
    hidden = torch.cat([s["hidden"][:, -1:] for s in states])
    inputs = torch.cat([paired.model.get_input_embeddings()(last), hidden], dim=-1)

    ours, _ = ref.load_ours(reference_models.assistant(target, ordered=ordered).path)
    with torch.no_grad():
        out = ours(inputs, torch.tensor([[n] for n in lengths]), ours_shared_kv(batched_kv, lengths))
    for row, n in enumerate(lengths):
        expected = hf_assistant(hf, inputs[row : row + 1], n, states[row]["shared_kv"])
        assert_same_draft(out.logits[row : row + 1].float(), expected.logits.float(), ordered, f"row {row}")
        ref.assert_close(out.hidden[row : row + 1], expected.last_hidden_state, f"row {row} projected hidden")


@pytest.mark.parametrize("target", ["e2b", "unified"])
def test_draft_beyond_the_window_sees_what_transformers_sees(reference_models, target):
    """S=20 > window. transformers' assistant attends to the last ``sliding_window + 1`` sliding
    entries: positions p-W-1 .. p-1 for query position p (see hf_reference's docstring), two more
    than the W-1 past entries (p-W+1 .. p-1) the target's own query at p reads."""
    paired = reference_models.target(target)
    hf = reference_models.assistant(target, ordered=False).model
    tokens = ref.random_tokens(1, 21, seed=22)
    state = ref.hf_target_state(paired.model, tokens[:, :20])
    inputs = draft_input(paired.model, tokens[:, 20:], state["hidden"][:, -1:])
    expected = hf_assistant(hf, inputs, 20, state["shared_kv"])

    ours, _ = ref.load_ours(reference_models.assistant(target, ordered=False).path)
    with torch.no_grad():
        out = ours(inputs, torch.tensor([[20]]), ours_shared_kv(state["shared_kv"], [20]))
    ref.assert_close(out.logits.float(), expected.logits.float(), "logits beyond the window")
    ref.assert_close(out.hidden, expected.last_hidden_state, "projected hidden beyond the window")


# --------------------------------------------------------------------------- the reference itself


@pytest.mark.parametrize(("target", "ordered"), PAIRS, ids=PAIR_IDS)
def test_hf_assisted_generate_equals_plain_greedy(reference_models, target, ordered):
    """The patched reference is sane: assisted greedy decoding is lossless for every pair."""
    paired = reference_models.target(target)
    assistant = reference_models.assistant(target, ordered=ordered).model
    prompt = ref.random_tokens(1, 12, seed=23)[0].tolist()  # longer than the window
    plain = ref.hf_greedy(paired.model, prompt, 20)
    assert ref.hf_greedy(paired.model, prompt, 20, assistant=assistant) == plain


def test_hf_hidden_state_fed_to_assistant_is_final_norm_output(reference_models):
    """``hidden_states[-1]`` (what the candidate generator feeds the assistant) is the output of the
    final norm, not the last decoder layer's output."""
    model = reference_models.target("e2b_conditional").model
    decoder = model.get_decoder()
    captured = {}
    hook = decoder.layers[-1].register_forward_hook(
        lambda module, args, out: captured.setdefault("last", out)
    )
    try:
        out = ref.hf_forward(model, ref.random_tokens(1, 12, seed=24), output_hidden_states=True)
    finally:
        hook.remove()
    with torch.no_grad():
        normed = decoder.norm(captured["last"])
    assert torch.equal(out.hidden_states[-1], normed)
    assert not torch.allclose(out.hidden_states[-1], captured["last"], atol=1e-2)


def test_hf_assistant_sees_last_window_plus_one_sliding_entries(reference_models):
    paired = reference_models.target("e2b")
    assistant = reference_models.assistant("e2b", ordered=False).model
    tokens = ref.random_tokens(1, 21, seed=25)
    state = ref.hf_target_state(paired.model, tokens[:, :20])
    inputs = draft_input(paired.model, tokens[:, 20:], state["hidden"][:, -1:])

    def logits_with_last(n: int | None) -> torch.Tensor:
        kv = dict(state["shared_kv"])
        keys, values = kv[ref.S]
        if n is not None:
            kv[ref.S] = (keys[:, :, -n:], values[:, :, -n:])
        return hf_assistant(assistant, inputs, 20, kv).logits

    everything = logits_with_last(None)
    # equal up to float reassociation: torch's CPU attention kernels sum a different number of
    # (masked) keys per ISA (exactly equal on AVX2, 1.4e-6 apart on an AVX-512 machine)
    diff = (logits_with_last(W + 1) - everything).abs().max().item()
    assert diff < 1e-5, diff
    assert not torch.allclose(logits_with_last(W), everything, atol=1e-3)


def test_hf_assisted_generation_keeps_a_stale_full_kv_entry_after_a_rejection(reference_models):
    """After a verify pass that rejected drafts, transformers slices the shared KV to
    ``len(input_ids)``, which counts the new token: the full-attention KV then holds one entry at the
    query's own position (the first rejected draft's). Right after prefill it holds exactly 0..p-1."""
    paired = reference_models.target("e2b")
    assistant = reference_models.assistant("e2b", ordered=False).model
    calls = []
    forward = assistant.forward

    def recording_forward(*args, **kwargs):
        calls.append((kwargs["position_ids"].item(), kwargs["shared_kv_states"][ref.F][0].shape[2]))
        return forward(*args, **kwargs)

    assistant.forward = recording_forward
    try:
        ref.hf_greedy(paired.model, ref.random_tokens(1, 12, seed=26)[0].tolist(), 12, assistant=assistant)
    finally:
        del assistant.forward
    position, kv_len = calls[0]
    assert kv_len == position == 12
    assert all(kv_len in (p, p + 1) for p, kv_len in calls)
    assert any(kv_len == p + 1 for p, kv_len in calls)


def test_hf_still_needs_the_reference_patches(reference_models):
    """FACTS.md: without the patches an assistant cannot be built and a target without KV-shared
    layers exports no shared KV. If this fails after a transformers upgrade, drop the patches."""
    from transformers import Gemma4ForCausalLM, Gemma4TextConfig

    original = Gemma4TextConfig.__dict__["kv_sharing_modes"]
    target_text = ref.text_config_of(reference_models.target("moe").model)
    model_cls, config = ref.assistant_config(target_text, use_ordered_embeddings=False)
    with pytest.raises(ValueError, match="layer types"):
        model_cls(config)
    unpatched = Gemma4ForCausalLM(
        Gemma4TextConfig(**ref.gemma4_text_kwargs(layer_types=[ref.S, ref.F]))
    ).eval()
    out = ref.hf_forward(unpatched, ref.random_tokens(1, 4, seed=27), return_shared_kv_states=True)
    assert not out.shared_kv_states
    assert Gemma4TextConfig.__dict__["kv_sharing_modes"] is original
