"""Scoring fixed responses under two models, token by token.

`token_kl` is the one implementation of "how differently do two models predict the same
response": the pivotal-token analysis ranks tokens by it, and GRPO's drift table averages
it (KL of each policy to its starting model, beta 0 included, where TRL logs no KL).
Both load where `models.placement` says (a GPU in bf16 when there is one), and the
vocabulary-wide log-softmax is taken `CHUNK` positions at a time: on a 7B with a 152k
vocabulary the whole [seq, vocab] float32 one is GiBs per response (bench/score_memory.py).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

COLUMNS = ["response", "position", "token_id", "kl", "entropy", "logp_p", "logp_q"]


def _batch(processor, prompts: list[str], responses: list[str],
           images: list | None) -> tuple[dict, list[int], list[int]]:
    """Right-padded inputs of prompt + response per row, where each response starts and
    where each row ends. Rows with images go through the processor (an image expands into
    many tokens inside the prompt; the processor knows how many)."""
    import torch

    from synergy.models import tokenizer_of

    if images:
        kwargs = dict(images=[list(x) for x in images], return_tensors="pt", padding=True,
                      padding_side="right")
        full = processor(text=[p + r for p, r in zip(prompts, responses)], **kwargs)
        starts = processor(text=list(prompts), **kwargs)["attention_mask"].sum(-1).tolist()
        return dict(full), starts, full["attention_mask"].sum(-1).tolist()
    tok = tokenizer_of(processor)
    p = tok(list(prompts), add_special_tokens=False)["input_ids"]
    r = tok(list(responses), add_special_tokens=False)["input_ids"]
    seqs = [a + b for a, b in zip(p, r)]
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    ids = torch.full((len(seqs), max(map(len, seqs))), pad)
    mask = torch.zeros_like(ids)
    for i, seq in enumerate(seqs):
        ids[i, :len(seq)], mask[i, :len(seq)] = torch.tensor(seq), 1
    return {"input_ids": ids, "attention_mask": mask}, [len(a) for a in p], list(map(len, seqs))


# Config keys of models whose logits are more than their output head's product (soft-capped,
# scaled): those are scored from the model's own logits.
POST_HEAD = ("final_logit_softcapping", "logit_scale", "logits_scaling")
# Positions scored at once: a [CHUNK, vocab] float32 log-softmax at a time, never the
# [seq, vocab] one (2k tokens of a 152k vocabulary: 1.2 GiB per copy, several copies).
CHUNK = 256
STATS = ("kl", "entropy", "logp_p", "logp_q")


def _states(model, inputs: dict):
    """(final hidden states [rows, seq, dim], the head that turns a slice of them into
    logits): the vocabulary-wide logits are made a chunk at a time (`token_stats`). A model
    without a separate head, or whose logits the head alone does not give (`POST_HEAD`),
    gives its logits and an identity head."""
    import torch

    inputs = {k: v.to(model.device) for k, v in inputs.items()}
    head, base = model.get_output_embeddings(), model.base_model
    configs = (model.config, getattr(model.config, "text_config", None))
    plain = head is not None and base is not model and not any(
        getattr(c, k, None) for c in configs if c is not None for k in POST_HEAD)
    with torch.no_grad():
        if plain:
            return base(**inputs).last_hidden_state, head
        return model(**inputs).logits, torch.nn.Identity()


def token_stats(states_p, head_p, states_q, head_q, target, chunk: int = CHUNK) -> dict:
    """Per position of one response: kl (KL(p || q) of the next-token distributions),
    entropy of p, and logp_p / logp_q of the `target` token ([n] ids). `states_*` ([n, dim])
    are the states predicting each target token and `head_*` turn them into logits; the
    float32 log-softmax exists for `chunk` positions at a time. numpy arrays of length n."""
    import torch

    out = {k: [] for k in STATS}
    with torch.no_grad():
        for b in range(0, len(target), chunk):
            a = torch.log_softmax(head_p(states_p[b:b + chunk]).float(), -1)
            c = torch.log_softmax(head_q(states_q[b:b + chunk]).float(), -1).to(a.device)
            pick = target[b:b + chunk, None].to(a.device)
            p = a.exp()
            for name, value in (("kl", (p * (a - c)).sum(-1).clamp_min(0)),
                                ("entropy", -(p * a).sum(-1)),
                                ("logp_p", a.gather(1, pick)[:, 0]),
                                ("logp_q", c.gather(1, pick)[:, 0])):
                out[name].append(value.cpu())
            del a, c, p
    return {k: torch.cat(v).numpy() if v else np.zeros(0, np.float32) for k, v in out.items()}


def token_kl(model_p, model_q, processor, prompts: list[str], responses: list[str],
             images: list | None = None, batch_size: int = 16,
             chunk: int = CHUNK) -> pd.DataFrame:
    """KL(p || q) of the next-token distributions at every response token.

    `model_p` is the model whose responses these are, `model_q` the reference; both share
    `processor`'s vocabulary and device (`models.load_for_scoring`); `images` holds one list
    of images per row (VLMs), or is None. Rows are scored `batch_size` at a time, rows with
    images apart from rows without, and each response `chunk` positions at a time
    (`token_stats`). One row per response token: response, position, token_id, token
    (decoded), kl, entropy (of p), and logp_p and logp_q of the token actually produced.
    """
    from synergy.models import tokenizer_of

    tok = tokenizer_of(processor)
    images = images if images is not None else [None] * len(prompts)
    rows = []
    for with_images in (False, True):
        order = [i for i, im in enumerate(images) if bool(im) == with_images]
        for b in range(0, len(order), batch_size):
            picked = order[b:b + batch_size]
            inputs, starts, ends = _batch(processor, [prompts[i] for i in picked],
                                          [responses[i] for i in picked],
                                          [images[i] for i in picked] if with_images else None)
            (hp, head_p), (hq, head_q) = _states(model_p, inputs), _states(model_q, inputs)
            for row, i, s, e in zip(range(len(picked)), picked, starts, ends):
                target = inputs["input_ids"][row, s:e]
                stats = token_stats(hp[row, s - 1:e - 1], head_p, hq[row, s - 1:e - 1],
                                    head_q, target, chunk)
                rows.append(pd.DataFrame({"response": i, "position": np.arange(len(target)),
                                          "token_id": target.numpy(), **stats}))
            del hp, hq
    out = (pd.concat(rows).sort_values(["response", "position"], kind="stable")
           .reset_index(drop=True) if rows else pd.DataFrame(columns=COLUMNS))
    names = {i: tok.decode([i]) for i in out["token_id"].unique()}
    return out.assign(token=out["token_id"].map(names))


def mean_kl_entropy(kl: pd.DataFrame) -> dict[str, float]:
    """Per-token means of a `token_kl` frame: KL to the reference and entropy."""
    return {"kl": float(kl["kl"].mean()) if len(kl) else float("nan"),
            "entropy": float(kl["entropy"].mean()) if len(kl) else float("nan"),
            "tokens": int(len(kl))}
