"""Scoring fixed responses under two models, token by token.

`token_kl` is the one implementation of "how differently do two models predict the same
response": the pivotal-token analysis ranks tokens by it, and GRPO's drift table averages
it (KL of each policy to its starting model, beta 0 included, where TRL logs no KL).
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


def _logprobs(model, inputs: dict, starts: list[int], ends: list[int]):
    """Log-softmax over the vocabulary at each response position, per row (list of tensors)."""
    import torch

    with torch.no_grad():
        logits = model(**{k: v.to(model.device) for k, v in inputs.items()}).logits
    return [torch.log_softmax(logits[i, s - 1:e - 1].float(), -1).cpu()
            for i, (s, e) in enumerate(zip(starts, ends))]


def token_kl(model_p, model_q, processor, prompts: list[str], responses: list[str],
             images: list | None = None, batch_size: int = 16) -> pd.DataFrame:
    """KL(p || q) of the next-token distributions at every response token.

    `model_p` is the model whose responses these are, `model_q` the reference; both share
    `processor`'s vocabulary; `images` holds one list of images per row (VLMs), or is None.
    Rows are scored `batch_size` at a time, rows with images apart from rows without.
    One row per response token: response, position, token_id, token (decoded), kl, entropy
    (of p), and logp_p and logp_q of the token actually produced.
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
            lp, lq = _logprobs(model_p, inputs, starts, ends), _logprobs(model_q, inputs,
                                                                        starts, ends)
            for row, i, s, e, a, c in zip(range(len(picked)), picked, starts, ends, lp, lq):
                target = inputs["input_ids"][row, s:e]
                p = a.exp()
                pick = target[:, None]
                rows.append(pd.DataFrame({
                    "response": i, "position": np.arange(len(target)),
                    "token_id": target.numpy(), "kl": (p * (a - c)).sum(-1).clamp_min(0).numpy(),
                    "entropy": (-(p * a).sum(-1)).numpy(),
                    "logp_p": a.gather(1, pick)[:, 0].numpy(),
                    "logp_q": c.gather(1, pick)[:, 0].numpy()}))
    out = (pd.concat(rows).sort_values(["response", "position"], kind="stable")
           .reset_index(drop=True) if rows else pd.DataFrame(columns=COLUMNS))
    names = {i: tok.decode([i]) for i in out["token_id"].unique()}
    return out.assign(token=out["token_id"].map(names))


def mean_kl_entropy(kl: pd.DataFrame) -> dict[str, float]:
    """Per-token means of a `token_kl` frame: KL to the reference and entropy."""
    return {"kl": float(kl["kl"].mean()) if len(kl) else float("nan"),
            "entropy": float(kl["entropy"].mean()) if len(kl) else float("nan"),
            "tokens": int(len(kl))}
