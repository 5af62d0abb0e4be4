"""Vision-language plumbing that CPU installs can test: a tiny Qwen2.5-VL and its processor.

The real run uses Qwen2.5-VL-7B-Instruct through `AutoProcessor`. Its video processor needs
torchvision, which does not work beside the CPU build of torch, so on CPU the processor is
assembled from the PIL image processor and the tokenizer only (images, no video).

Processor quirks met on the way (see `load_processor`):
- `AutoProcessor` on a folder whose `processor_class` it does not know returns the bare
  tokenizer, silently; a processor is only accepted with an `image_processor`.
- The image-only processor saves itself as `Qwen2_5_VLProcessor` (its class name), so the
  same folder loads the real processor where torchvision works.
- transformers 5 saves a processor's image settings in `processor_config.json`; the
  image-only processor also writes `preprocessor_config.json`, as released model folders
  hold it (`Qwen2VLImageProcessorPil.from_pretrained` reads either).
- The chat template marks assistant turns with `{% generation %}` whether their content is
  a string or a list of parts: TRL's vision collator turns every turn into parts, and
  assistant-only loss needs the markers (transformers >= 5.18).
"""

from __future__ import annotations

import warnings
from pathlib import Path

VISION_TOKENS = ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
# Weight names with one of these parts are the vision tower and its merger (Qwen2-VL and
# Qwen2.5-VL: `visual.*`): frozen in SFT, compared by `vision_weights_equal`.
VISION_PARTS = ("visual",)

# ChatML with image slots, as Qwen2.5-VL's template renders them; assistant turns (string or
# parts) inside {% generation %} so TRL can put the loss on them only.
VLM_CHAT_TEMPLATE = (
    "{%- for message in messages %}{{- '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['role'] == 'assistant' %}{% generation %}"
    "{%- if message['content'] is string %}{{- message['content'] }}"
    "{%- else %}{%- for part in message['content'] %}"
    "{%- if part['type'] == 'text' %}{{- part['text'] }}{%- endif %}{%- endfor %}{%- endif %}"
    "{{- '<|im_end|>' }}{% endgeneration %}{{- '\\n' }}"
    "{%- elif message['content'] is string %}{{- message['content'] + '<|im_end|>\\n' }}"
    "{%- else %}{%- for part in message['content'] %}"
    "{%- if part['type'] == 'image' %}{{- '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{%- elif part['type'] == 'text' %}{{- part['text'] }}{%- endif %}{%- endfor %}"
    "{{- '<|im_end|>\\n' }}{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
# The tiny VLM's images: 56 x 56 pixels (min_pixels) are 4 image tokens after the merger.
IMAGE_PIXELS = (28 * 28 * 4, 28 * 28 * 16)


def image_only_processor(image_processor, tokenizer, chat_template: str | None = None):
    """A Qwen2.5-VL processor without the (torchvision-bound) video processor."""
    from transformers import Qwen2_5_VLProcessor
    from transformers.processing_utils import ProcessorMixin

    class ImageOnlyQwen2_5_VLProcessor(Qwen2_5_VLProcessor):
        def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
            self.image_token, self.video_token = "<|image_pad|>", "<|video_pad|>"
            self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
            self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
            ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)

        def save_pretrained(self, save_directory, **kwargs):
            saved = super().save_pretrained(save_directory, **kwargs)
            # Also preprocessor_config.json, as the released model folders hold it
            # (mergekit carries it along).
            self.image_processor.save_pretrained(save_directory)
            return saved

    # Saved as the real class, so AutoProcessor loads the full processor where it can.
    ImageOnlyQwen2_5_VLProcessor.__name__ = Qwen2_5_VLProcessor.__name__
    return ImageOnlyQwen2_5_VLProcessor(image_processor, tokenizer,
                                        chat_template or tokenizer.chat_template)


def load_processor(path: str | Path):
    """`AutoProcessor` where it works (GPU installs); else the image-only processor."""
    from transformers import AutoProcessor, AutoTokenizer
    from transformers.models.qwen2_vl import Qwen2VLImageProcessorPil

    try:
        processor = AutoProcessor.from_pretrained(path)
        if hasattr(processor, "image_processor"):  # not a bare tokenizer
            return processor
    except (ImportError, AttributeError, ValueError, TypeError, OSError):
        pass
    tokenizer = AutoTokenizer.from_pretrained(path)
    return image_only_processor(Qwen2VLImageProcessorPil.from_pretrained(path), tokenizer)


def encode_pairs(processor, prompts: list[str], responses: list[str], images: list[list]):
    """Model inputs of prompt + response + end of turn per row, right-padded, with `labels`
    on the responses only (a VLM's `world.encode_pairs`: the processor expands each prompt's
    image tokens, the tokenizer appends the response's tokens)."""
    import torch

    tok = processor.tokenizer
    enc = processor(text=prompts, images=images, return_tensors="pt", padding=True,
                    padding_side="right")
    lengths = enc["attention_mask"].sum(-1).tolist()
    replies = tok([r + tok.eos_token for r in responses], add_special_tokens=False)["input_ids"]
    width = max(n + len(r) for n, r in zip(lengths, replies))
    per_token = {k: v for k, v in enc.items() if torch.is_tensor(v) and v.dim() == 2
                 and v.shape[0] == len(prompts) and v.shape[1] == enc["input_ids"].shape[1]}
    out = {k: v for k, v in enc.items() if k not in per_token}
    for key, value in per_token.items():  # input ids, mask, token types: widened
        fill = tok.pad_token_id if key == "input_ids" else 0
        out[key] = torch.full((len(prompts), width), fill, dtype=value.dtype)
    labels = torch.full((len(prompts), width), -100)
    for row, (n, reply) in enumerate(zip(lengths, replies)):
        for key in per_token:
            out[key][row, :n] = per_token[key][row, :n]
        out["input_ids"][row, n:n + len(reply)] = torch.tensor(reply)
        out["attention_mask"][row, n:n + len(reply)] = 1
        labels[row, n:n + len(reply)] = torch.tensor(reply)
    return {**out, "labels": labels}


def tiny_vlm(tokenizer, seed: int = 0, hidden_size: int = 64, num_layers: int = 2,
             num_heads: int = 2, intermediate_size: int = 128, max_positions: int = 1024):
    """(model, processor): a Qwen2.5-VL with random weights, a two-block vision tower and
    the given language model, on `tokenizer` (a world tokenizer; the vision tokens and the
    VLM chat template are added to it)."""
    import torch
    from transformers import GenerationConfig, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
    from transformers.models.qwen2_vl import Qwen2VLImageProcessorPil

    torch.manual_seed(seed)
    tokenizer.add_special_tokens({"additional_special_tokens": VISION_TOKENS})
    tokenizer.chat_template = VLM_CHAT_TEMPLATE
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in VISION_TOKENS}
    half = hidden_size // num_heads // 2  # rotary frequencies per head: t, h, w as 2:3:3
    config = Qwen2_5_VLConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=hidden_size,
                         num_hidden_layers=num_layers, num_attention_heads=num_heads,
                         num_key_value_heads=num_heads, intermediate_size=intermediate_size,
                         max_position_embeddings=max_positions, tie_word_embeddings=True,
                         bos_token_id=None, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id,
                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                          "mrope_section": [half // 4, 3 * half // 8,
                                                            3 * half // 8]}),
        vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2,
                           out_hidden_size=hidden_size, patch_size=14, spatial_merge_size=2,
                           temporal_patch_size=2, fullatt_block_indexes=[1], window_size=56),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        bos_token_id=None, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True)
    model = Qwen2_5_VLForConditionalGeneration(config)
    model.generation_config = GenerationConfig(eos_token_id=tokenizer.eos_token_id,
                                               pad_token_id=tokenizer.pad_token_id)
    image_processor = Qwen2VLImageProcessorPil(
        min_pixels=IMAGE_PIXELS[0], max_pixels=IMAGE_PIXELS[1], patch_size=14, merge_size=2,
        temporal_patch_size=2)
    return model, image_only_processor(image_processor, tokenizer)


def build_tiny_vlm(tokenizer_dir: str | Path, out_dir: str | Path, seed: int = 0) -> Path:
    """Save a ~0.1M-parameter Qwen2.5-VL (random weights) with the world's tokenizer."""
    from transformers import AutoTokenizer

    model, processor = tiny_vlm(AutoTokenizer.from_pretrained(tokenizer_dir), seed)
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir, safe_serialization=True)
    processor.save_pretrained(out_dir)
    return out_dir


def is_vision_weight(name: str) -> bool:
    return any(part in VISION_PARTS for part in name.split("."))


def vision_weights(path: str | Path) -> dict:
    """The vision tower's and merger's tensors of a saved model folder, by name."""
    from safetensors.torch import load_file

    out = {}
    for f in sorted(Path(path).glob("*.safetensors")):
        out.update({k: v for k, v in load_file(f).items() if is_vision_weight(k)})
    return out


def vision_weights_equal(a: str | Path, b: str | Path) -> bool | None:
    """Whether two saved models hold the same vision weights, tensor for tensor (the check
    that SFT left a frozen tower alone); None when either is no local folder or neither
    has a vision tower."""
    import torch

    if not (Path(a).is_dir() and Path(b).is_dir()):
        return None
    va, vb = vision_weights(a), vision_weights(b)
    if not va and not vb:
        return None
    return va.keys() == vb.keys() and all(torch.equal(va[k], vb[k]) for k in va)


# --- images a stage can afford to read --------------------------------------------------------

def image_problem(image, max_pixels: int) -> str | None:
    """None when `image` (a PIL image or a file path) decodes whole within `max_pixels`
    (width x height); else why not: more pixels than the limit (checked from the header,
    before decoding: a decompression bomb never expands), an empty file, not an image, or
    truncated data."""
    from PIL import Image, UnidentifiedImageError

    name = Path(image).name if isinstance(image, (str, Path)) else "stored image"
    try:
        if isinstance(image, (str, Path)) and Path(image).stat().st_size == 0:
            return f"{name}: empty file (0 bytes)"
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            opened = image if isinstance(image, Image.Image) else Image.open(image)
            try:
                width, height = opened.size
                if width * height > max_pixels:
                    return (f"{name}: {width}x{height} = {width * height:,} pixels, above "
                            f"max_image_pixels={max_pixels:,}")
                opened.load()
            finally:
                if opened is not image:
                    opened.close()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        return f"{name}: decompression bomb ({exc})"
    except UnidentifiedImageError:
        return f"{name}: not an image PIL can read"
    except (OSError, SyntaxError, ValueError) as exc:  # truncated or damaged data
        return f"{name}: unreadable ({' '.join(str(exc).split())[:200]})"
    return None
