"""The vision-language path on CPU: a tiny Qwen2.5-VL, its image-only processor, sampling."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
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


def test_processor_saves_and_reloads_as_a_processor(vlm_dir, tmp_path):
    import json

    from synergy.vlm import load_processor

    processor = load_processor(vlm_dir)
    processor.save_pretrained(tmp_path)
    # Saved under the real class's name (a GPU install's AutoProcessor loads the full one).
    saved = json.loads((tmp_path / "processor_config.json").read_text())
    assert saved["processor_class"] == "Qwen2_5_VLProcessor"
    again = load_processor(tmp_path)  # AutoProcessor alone would give a bare tokenizer here
    assert hasattr(again, "image_processor") and again.image_token_id == processor.image_token_id


def test_chat_template_puts_the_loss_on_assistant_parts_only(vlm_dir):
    """TRL's vision collator turns every turn into parts; the assistant's still get the mask."""
    from synergy.vlm import load_processor
    from trl.data_utils import prepare_multimodal_messages

    processor = load_processor(vlm_dir)
    reply = "<think> 3*4=12.</think> \\boxed{12}"
    messages = prepare_multimodal_messages(
        [{"role": "user", "content": "? *4"}, {"role": "assistant", "content": reply}],
        images=[Image.new("RGB", (56, 56), "white")])
    out = processor.apply_chat_template([messages], tokenize=True, return_dict=True,
                                        return_assistant_tokens_mask=True, return_tensors="pt")
    ids, mask = out["input_ids"][0], out["assistant_masks"][0].bool()
    assert processor.tokenizer.decode(ids[mask]) == reply + "<|im_end|>"
    assert (ids == processor.image_token_id).sum() == 4


def test_grpo_dataset_gives_vlms_a_conversational_prompt_and_images(vlm_dir, tmp_path):
    from synergy import grpo
    from synergy.vlm import load_processor

    path = tmp_path / "a.png"
    Image.new("RGB", (56, 56), "white").save(path)
    questions = pd.DataFrame({"qid": ["a", "b"], "question": ["? *4", "? +1"],
                              "answer": ["12", "3"], "images": [[str(path)], [str(path)]],
                              "precision": [None, 1.0], "unit": [None, "cm"]})
    ds = grpo.training_dataset(questions, load_processor(vlm_dir), "Think.")
    assert ds[0]["prompt"] == [{"role": "user", "content": "? *4 Think."}]
    assert isinstance(ds[0]["images"][0], Image.Image) and ds[1]["unit"] == "cm"
    assert ds["precision"][1] == 1.0 and ds["answer"] == ["12", "3"]
    text = grpo.training_dataset(questions.drop(columns=["images"]),
                                 load_processor(vlm_dir), "")
    assert isinstance(text[0]["prompt"], str) and "images" not in text.column_names


def test_token_kl_batches_rows_with_and_without_images(vlm_dir, tmp_path):
    from synergy import models
    from synergy.scoring import token_kl

    model, processor = models.load(vlm_dir)
    other, _ = models.load(vlm_dir)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.05 * torch.randn_like(p))
    n_images = [1, 1, 0, 1]
    prompts = [chat_prompt(processor, q, "", k) for q, k in zip(["? +4", "? *3 -1", "2 +2",
                                                                 "? -2 +9"], n_images)]
    responses = ["\\boxed{7}", "<think> 2*3=6. 6-1=5.</think> \\boxed{5}", "\\boxed{4}",
                 "Wait, hmm \\boxed{9}"]
    images = [[Image.new("RGB", (56, 56), (30 * i, 0, 0))] * k for i, k in enumerate(n_images)]
    one = token_kl(other, model, processor, prompts, responses, images, batch_size=1)
    all_ = token_kl(other, model, processor, prompts, responses, images, batch_size=4)
    assert one["response"].tolist() == all_["response"].tolist()
    assert (one["kl"] - all_["kl"]).abs().max() < 1e-5 and one["kl"].sum() > 0
    assert one.groupby("response").size().tolist() == [
        len(processor.tokenizer(r, add_special_tokens=False)["input_ids"]) for r in responses]
