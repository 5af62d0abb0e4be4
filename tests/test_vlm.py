"""The vision-language path on CPU: a tiny Qwen2.5-VL, its image-only processor, sampling."""

from __future__ import annotations

import pandas as pd
import pytest
from PIL import Image
from synergy import evaluation
from synergy.generation import HFEngine, SamplingSpec, chat_prompt
from synergy.vlm import build_tiny_vlm

SPEC = SamplingSpec(1.0, 1.0, 0, 6)


@pytest.fixture(scope="module")
def vlm_dir(smoke_world, tmp_path_factory):
    _, model_dir = smoke_world
    return build_tiny_vlm(model_dir, tmp_path_factory.mktemp("vlm"))


@pytest.fixture(scope="module")
def engine(vlm_dir):
    return HFEngine.from_path(vlm_dir)


def test_processor_reloads_and_places_image_slots(engine):
    assert engine.processor is not None
    prompt = chat_prompt(engine.template, "3 *4", "", n_images=2)
    assert prompt.count("<|image_pad|>") == 2
    assert prompt.endswith("<|im_start|>assistant\n")


def test_images_change_the_encoding_and_stay_aligned_with_rows(engine):
    red, blue = Image.new("RGB", (56, 56), (220, 0, 0)), Image.new("RGB", (84, 56), (0, 0, 220))
    prompts = [chat_prompt(engine.template, "3 *4", "", 1), chat_prompt(engine.template, "5 +1", "", 1)]
    enc = engine._encode(prompts, 3, [[red], [blue]])
    # each row carries its own image's patches: 2 prompts x 3 samples
    assert enc["image_grid_thw"].shape[0] == 6
    assert enc["input_ids"].shape[0] == 6


def test_keyed_samples_do_not_depend_on_the_batch(engine):
    img = Image.new("RGB", (56, 56), (10, 200, 10))
    other = Image.new("RGB", (112, 56), (200, 200, 10))
    p1 = chat_prompt(engine.template, "3 *4", "", 1)
    p2 = chat_prompt(engine.template, "5 +1 -2 *3", "", 1)
    together = engine.generate([p1, p2], ["a", "b"], 0, 3, SPEC, 0, images=[[img], [other]])
    alone = engine.generate([p1], ["a"], 1, 2, SPEC, 0, images=[[img]])
    assert together[0][1:] == alone[0]


def test_evaluate_model_passes_images(vlm_dir, engine, tmp_path):
    img = Image.new("RGB", (56, 56), (90, 90, 90))
    questions = pd.DataFrame({"qid": ["a", "b"], "question": ["3 *4", "2 +2"],
                              "answer": ["12", "4"], "images": [[img], [img]], "level": [1, 2]})
    out = evaluation.evaluate_model(str(vlm_dir), questions, SPEC, n_samples=2, seed=0,
                                    cache_root=tmp_path, engine=engine, progress=False)
    assert len(out) == 2 and all(len(s) == 2 for s in out["samples"])
    prompts, images = evaluation.build_prompts(engine, questions)
    assert images is not None and all("<|image_pad|>" in p for p in prompts)
