"""Images in the prompt: the target's logits after an image and greedy generation equal transformers';
MTP and n-gram speculation with an image equal plain greedy; text and image rows batch together."""

from __future__ import annotations

import hf_reference as ref
import media_reference as mref
import pytest
import torch

import gemma_mtp
from gemma_mtp.engine.batch import BatchDecoder
from gemma_mtp.engine.media import MediaEncoder
from gemma_mtp.errors import GemmaMTPError
from gemma_mtp.media.prompt import PromptMedia, expand_placeholders
from gemma_mtp.sampling import SamplingParams
from gemma_mtp.speculative.base import SpecOptions
from gemma_mtp.speculative.mtp import MTPDrafter
from gemma_mtp.speculative.ngram import NgramDrafter

pytest.importorskip("transformers")

GREEDY = SamplingParams(temperature=0)
N_NEW = 16
# text, an image placeholder, text: the image lands mid-prompt, and the answer follows text tokens
PROMPT = [2, 17, 40, 99, mref.IMAGE_TOKEN, 23, 5, 77, 5, 23, 5, 77, 61]
TEXT_PROMPT = [2, 30, 31, 32, 30, 31, 32, 30, 9]


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("vision_pair")
    target = mref.build_e2b_vision(root / "target")
    assistant = ref.build_assistant(root / "assistant", target, use_ordered_embeddings=True)
    return target, assistant


@pytest.fixture(scope="module")
def engine(pair):
    target, assistant = pair
    return gemma_mtp.load(
        target.path, assistant.path, dtype="float32", device="cpu", ctx_size=256, max_batch=2
    )


@pytest.fixture(scope="module")
def image():
    return mref.test_image(50, 38, seed=9)


def hf_inputs(image, prompt=PROMPT):
    batch = mref.image_processor()([image], return_tensors="pt")
    ids, _ = expand_placeholders(prompt, batch["num_soft_tokens_per_image"], mref_tokens())
    return torch.tensor([ids]), batch


def mref_tokens():
    from gemma_mtp.media.prompt import MediaTokens

    return MediaTokens(image=mref.IMAGE_TOKEN, boi=mref.BOI, eoi=mref.EOI)


@torch.no_grad()
def test_prompt_logits_after_an_image_match_transformers(pair, engine, image):
    target, _ = pair
    ids, batch = hf_inputs(image)
    expected = target.model(
        input_ids=ids, pixel_values=batch["pixel_values"], image_position_ids=batch["image_position_ids"]
    ).logits.float()

    expanded, media = engine.media_encoder().prepare(PROMPT, [image])
    assert expanded == ids[0].tolist()
    model, _ = ref.load_ours(target.path)
    cache = model.make_cache(batch_size=1, max_context=256, max_draft=4)
    positions = torch.arange(ids.shape[1])[None]
    out = model(ids, positions, cache, embeds=media.overrides(ids.shape[1]))
    ref.assert_close(model.logits(out.hidden), expected, "prompt logits with an image")


@torch.no_grad()
def test_greedy_with_an_image_equals_transformers_generate(pair, engine, image):
    target, _ = pair
    ids, batch = hf_inputs(image)
    out = target.model.generate(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        pixel_values=batch["pixel_values"],
        image_position_ids=batch["image_position_ids"],
        do_sample=False,
        max_new_tokens=N_NEW,
        min_new_tokens=N_NEW,
        eos_token_id=None,
        pad_token_id=0,
    )
    expected = out[0, ids.shape[1] :].tolist()
    result = engine.generate(PROMPT, images=[image], n_predict=N_NEW, sampling=GREEDY, spec=SpecOptions())
    assert result.token_ids == expected
    assert result.n_prompt == ids.shape[1]


@pytest.mark.parametrize("kind", ["mtp", "ngram"])
@pytest.mark.parametrize("n_max", [1, 3])
def test_greedy_speculation_with_an_image_equals_plain_greedy(engine, image, kind, n_max):
    plain = engine.generate(PROMPT, images=[image], n_predict=N_NEW, sampling=GREEDY, spec=SpecOptions())
    spec = engine.generate(
        PROMPT, images=[image], n_predict=N_NEW, sampling=GREEDY, spec=SpecOptions(type=kind, n_max=n_max)
    )
    assert spec.token_ids == plain.token_ids
    assert spec.speculative["rounds"] > 0


def run_rows(decoder: BatchDecoder, requests, spec: SpecOptions):
    slots = [
        decoder.add(ids, n_predict=N_NEW, sampling=GREEDY, spec=spec, stop_ids=frozenset(), media=media)
        for ids, media in requests
    ]
    while decoder.active():
        decoder.step()
    for s in slots:
        decoder.release(s)
    return [s.generated for s in slots]


@pytest.mark.parametrize("kind", ["none", "mtp", "ngram"])
def test_batch_mixing_text_and_image_rows_equals_each_alone(engine, image, kind):
    media: MediaEncoder = engine.media_encoder()
    image_request = media.prepare(PROMPT, [image])
    text_request = (TEXT_PROMPT, PromptMedia())
    target, assistant = engine.target, engine.drafter

    def decoder(batch):
        d = BatchDecoder(target, max_batch=batch, ctx_size=256)
        d.drafters = {"mtp": MTPDrafter(target, assistant, d.cache), "ngram": NgramDrafter()}
        return d

    spec = SpecOptions(type=kind, n_max=3)
    alone = [run_rows(decoder(1), [r], spec)[0] for r in (text_request, image_request)]
    together = run_rows(decoder(2), [text_request, image_request], spec)
    assert together == alone
    together = run_rows(decoder(2), [image_request, text_request], spec)
    assert together == alone[::-1]


def test_placeholder_count_must_match_the_images(engine, image):
    with pytest.raises(GemmaMTPError, match="1 image placeholder.* but 2 image"):
        engine.generate(PROMPT, images=[image, image], n_predict=2, sampling=GREEDY)


def test_images_for_a_text_only_model_are_a_clear_error(reference_models, image):
    path = reference_models.target("e2b_conditional").path
    text_only = gemma_mtp.load(path, dtype="float32", device="cpu", ctx_size=64)
    with pytest.raises(GemmaMTPError, match="has no vision tower"):
        text_only.generate([2, 5, 258880 % ref.VOCAB], images=[image], n_predict=2, sampling=GREEDY)


def test_scheduler_job_with_an_image_equals_the_engine(engine, image):
    """The server's path: a job carrying media beside a text job, in the scheduler's continuous batch."""
    from gemma_mtp.engine.scheduler import Job, Scheduler, Tokens

    ids, media = engine.media_encoder().prepare(PROMPT, [image])
    spec = SpecOptions(type="mtp", n_max=3)
    expected = engine.generate(PROMPT, images=[image], n_predict=N_NEW, sampling=GREEDY, spec=spec).token_ids
    text_alone = engine.generate(TEXT_PROMPT, n_predict=N_NEW, sampling=GREEDY, spec=spec).token_ids
    scheduler = Scheduler(engine.decoder, max_queue=2)
    jobs = [
        Job(prompt_ids=TEXT_PROMPT, n_predict=N_NEW, sampling=GREEDY, spec=spec, stop_ids=frozenset()),
        Job(prompt_ids=ids, n_predict=N_NEW, sampling=GREEDY, spec=spec, stop_ids=frozenset(), media=media),
    ]
    for j in jobs:
        scheduler.submit(j)
    got: dict[str, list[int]] = {j.id: [] for j in jobs}
    for _ in range(200):
        if scheduler.idle:
            break
        for j, event in scheduler.step():
            if isinstance(event, Tokens):
                got[j.id] += event.ids
    assert got[jobs[0].id] == text_alone
    assert got[jobs[1].id] == expected
