"""Scoring fixed responses under two models, token by token.

`token_kl` is the one implementation of "how differently do two models predict the same
response": the pivotal-token analysis ranks tokens by it, and GRPO's drift table averages
it (KL of each policy to its starting model, beta 0 included, where TRL logs no KL).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

COLUMNS = ["response", "position", "token_id", "kl", "entropy", "logp_p", "logp_q"]


def _encode(processor, prompt: str, response: str, images: list | None) -> tuple[dict, int]:
    """Inputs of prompt + response for one row, and where the response starts."""
    from synergy.models import tokenizer_of

    if not images:
        tok = tokenizer_of(processor)
        p = tok(prompt, add_special_tokens=False)["input_ids"]
        r = tok(response, add_special_tokens=False)["input_ids"]
        return {"input_ids": p + r}, len(p)
    # Images expand into many tokens inside the prompt; the processor knows how many.
    full = processor(text=[prompt + response], images=list(images), return_tensors="pt")
    start = processor(text=[prompt], images=list(images), return_tensors="pt")["input_ids"]
    return dict(full), start.shape[1]


def _logprobs(model, batch: list[tuple[dict, int]], pad_id: int):
    """Log-softmax over the vocabulary at each response position, per row (list of tensors)."""
    import torch

    if len(batch) == 1 and "pixel_values" in batch[0][0]:
        enc, start = batch[0]
        with torch.no_grad():
            logits = model(**{k: v.to(model.device) for k, v in enc.items()}).logits[0]
        return [torch.log_softmax(logits[start - 1:-1].float(), -1).cpu()]
    width = max(len(e["input_ids"]) for e, _ in batch)
    ids = torch.full((len(batch), width), pad_id)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, (e, _) in enumerate(batch):
        ids[i, :len(e["input_ids"])] = torch.tensor(e["input_ids"])
        mask[i, :len(e["input_ids"])] = 1
    with torch.no_grad():
        logits = model(input_ids=ids.to(model.device), attention_mask=mask.to(model.device)).logits
    return [torch.log_softmax(logits[i, s - 1:len(e["input_ids"]) - 1].float(), -1).cpu()
            for i, (e, s) in enumerate(batch)]


def token_kl(model_p, model_q, processor, prompts: list[str], responses: list[str],
             images: list | None = None, batch_size: int = 16) -> pd.DataFrame:
    """KL(p || q) of the next-token distributions at every response token.

    `model_p` is the model whose responses these are, `model_q` the reference; both share
    `processor`'s vocabulary; `images` holds one list of images per row (VLMs), or is None.
    One row per response token: response, position, token_id, token (decoded), kl, entropy
    (of p), and logp_p and logp_q of the token actually produced.
    """
    import torch

    from synergy.models import tokenizer_of

    tok = tokenizer_of(processor)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    rows = []
    images = images if images is not None else [None] * len(prompts)
    step = 1 if any(images) else batch_size
    for b in range(0, len(prompts), step):
        batch = [_encode(processor, p, r, im) for p, r, im in
                 zip(prompts[b:b + step], responses[b:b + step], images[b:b + step])]
        lp, lq = _logprobs(model_p, batch, pad), _logprobs(model_q, batch, pad)
        for i, ((enc, start), a, c) in enumerate(zip(batch, lp, lq)):
            target = torch.as_tensor(enc["input_ids"]).reshape(-1)[start:]
            p = a.exp()
            pick = target[:, None]
            rows.append(pd.DataFrame({
                "response": b + i, "position": np.arange(len(target)),
                "token_id": target.numpy(), "kl": (p * (a - c)).sum(-1).clamp_min(0).numpy(),
                "entropy": (-(p * a).sum(-1)).numpy(),
                "logp_p": a.gather(1, pick)[:, 0].numpy(),
                "logp_q": c.gather(1, pick)[:, 0].numpy()}))
    out = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(columns=COLUMNS)
    names = {i: tok.decode([i]) for i in out["token_id"].unique()}
    return out.assign(token=out["token_id"].map(names))


def mean_kl_entropy(kl: pd.DataFrame) -> dict[str, float]:
    """Per-token means of a `token_kl` frame: KL to the reference and entropy."""
    return {"kl": float(kl["kl"].mean()) if len(kl) else float("nan"),
            "entropy": float(kl["entropy"].mean()) if len(kl) else float("nan"),
            "tokens": int(len(kl))}
