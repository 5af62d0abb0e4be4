"""Padded batches computed in groups of neighbouring lengths, each cut to its own longest row.

A padded batch computes every row at the longest row's length. The world's training batches
(mostly direct answers, a few long traces) and GRPO's rollout batches (short answers beside
a few that run to the completion budget) waste most of their positions that way. Running the
rows as `length_buckets` and cutting each group's all-padding columns gives the same losses,
log-probs and gradients up to float rounding:

- `backward_mean_loss`: the world base's training step (a batch's mean token loss);
- `completion_logps`: GRPO's per-token log-probs of completions (TRL's
  `_get_per_token_logps_and_entropies`, which 04's and 05's trainers route through it);
- `summed_loss`: a loss summed over the batch's tokens and divided by a count given for the
  whole batch (TRL's SFT loss with `num_items_in_batch`, which 03's and 05's SFT trainings
  route through it).

Trainers group only where `may_group` allows: alone on one process with the whole model.

torch is imported inside the functions: the module stays light for the stage modules that
import it for their configs.
"""

from __future__ import annotations

from typing import Callable


def length_buckets(lengths: list[int], groups: int) -> list[list[int]]:
    """Row indices in at most `groups` groups of neighbouring lengths, shortest rows first,
    split where padding each group to its own longest row computes the fewest positions
    (fewer groups where more save nothing)."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    sizes = [lengths[i] for i in order]
    n = len(sizes)
    if n == 0:
        return [order]
    # cost[g][j]: fewest positions for the first j rows in g groups; cut[g][j]: last group's start
    inf = float("inf")
    cost = [[inf] * (n + 1) for _ in range(groups + 1)]
    cut = [[0] * (n + 1) for _ in range(groups + 1)]
    cost[0][0] = 0
    for g in range(1, groups + 1):
        for j in range(1, n + 1):
            for i in range(j):  # the last group is rows i..j-1, padded to sizes[j - 1]
                c = cost[g - 1][i] + (j - i) * sizes[j - 1]
                if c < cost[g][j]:
                    cost[g][j], cut[g][j] = c, i
    g = min(range(1, groups + 1), key=lambda k: (cost[k][n], k))  # a tie keeps fewer groups
    bounds, j = [], n
    while g:
        bounds.append((cut[g][j], j))
        j, g = cut[g][j], g - 1
    return [order[a:b] for a, b in reversed(bounds)]


def may_group(trainer) -> bool:
    """Whether a transformers trainer may run a micro-batch in groups: only alone, on one
    process holding the whole model (no DDP, FSDP or DeepSpeed). Elsewhere every process
    must run the same forward passes (collectives), and DDP one forward per backward: two
    CPU processes whose micro-batches split into different numbers of groups deadlocked
    (tests/test_scale.py)."""
    return (trainer.accelerator.num_processes == 1 and not trainer.is_fsdp_enabled
            and not trainer.is_deepspeed_enabled)


def filled_span(mask) -> tuple[int, int] | None:
    """(first, end) of the columns of a (rows, columns) mask that are filled in some row;
    None when every column is padding."""
    filled = mask.any(0).nonzero().flatten().tolist()
    return (filled[0], filled[-1] + 1) if filled else None


def summed_loss(loss_of: Callable, batch: dict, groups: int):
    """`loss_of(part)` summed over the batch's `length_buckets`, each part its rows of every
    (rows, columns) tensor of `batch` without the columns padded in all of them. The same
    loss as `loss_of(batch)` when that is a sum over the batch's tokens divided by a count
    fixed for the whole batch. Returns (loss, each part's count of target tokens: the
    labels after the first column that are not -100), the counts for weighting per-part
    metrics."""
    import torch

    mask = batch["attention_mask"]
    shape = tuple(mask.shape)
    total, counts = 0, []
    for rows in length_buckets(mask.sum(-1).tolist(), groups):
        index = torch.tensor(rows, device=mask.device)
        first, end = filled_span(mask[index]) or (0, 1)
        part = {k: v[index, first:end] if tuple(v.shape[:2]) == shape else v[index]
                for k, v in batch.items()}
        counts.append(int((part["labels"][:, 1:] != -100).sum()))
        total = total + loss_of(part)
    return total, counts


def backward_mean_loss(model, batch: dict, groups: int = 1) -> float:
    """Backward of the batch's mean token loss (as `model(**batch).loss`); returns the loss.

    With `groups` > 1 (right-padded text batches), the rows run as the parts of
    `summed_loss`, each part's summed token loss divided by the whole batch's count of
    target tokens and its backward run before the next part's forward: the same loss and
    gradient up to float rounding. One padded batch of the world computes 2.5x the
    positions of two groups and 3.4x those of three (`bench/world_buckets.py` compares
    group counts)."""
    if groups <= 1:
        loss = model(**batch).loss
        loss.backward()
        return loss.item()
    n_targets = int((batch["labels"][:, 1:] != -100).sum())

    def backward_part(part) -> float:
        loss = model(**part, num_items_in_batch=n_targets).loss
        loss.backward()
        return loss.item()

    return summed_loss(backward_part, batch, groups)[0]


def completion_logps(compute: Callable, input_ids, attention_mask, logits_to_keep: int,
                     groups: int, **kwargs):
    """`compute(input_ids, attention_mask, logits_to_keep, **kwargs)` -> (log-probs,
    entropies or None, aux) of the last `logits_to_keep` positions (TRL's
    `_get_per_token_logps_and_entropies`), run on the rows' `length_buckets`.

    Each group drops the columns at either end that are padding in all its rows: the left
    padding of its prompts (never past the first completion column) and the completion
    columns after its longest completion (at least one is kept). Nothing inside a row is
    cut, so any padding layout is safe. The cut positions come back as 0, where the loss
    mask is 0 too. Dropping left padding shifts every position of a row by the same amount,
    which rotary position embeddings (Qwen2, Qwen2.5-VL) do not see beyond float rounding.
    Autograd runs through the groups: a training forward may be grouped too. The third
    output (a MoE's aux loss) is not grouped: callers that need it compute directly."""
    import torch
    import torch.nn.functional as F

    prompt_width = input_ids.size(1) - logits_to_keep
    lengths = attention_mask.sum(-1).tolist()
    logps, entropies, order = [], [], []
    for rows in length_buckets(lengths, groups):
        index = torch.tensor(rows, device=input_ids.device)
        mask = attention_mask[index]
        first, end = filled_span(mask) or (prompt_width, prompt_width + 1)
        first, end = min(first, prompt_width), max(end, prompt_width + 1)
        keep = end - prompt_width
        lp, ent, _ = compute(input_ids[index, first:end], mask[:, first:end], keep, **kwargs)
        logps.append(F.pad(lp, (0, logits_to_keep - keep)))
        if ent is not None:
            entropies.append(F.pad(ent, (0, logits_to_keep - keep)))
        order.extend(rows)
    inverse = torch.empty(len(order), dtype=torch.long)
    inverse[torch.tensor(order)] = torch.arange(len(order))
    inverse = inverse.to(input_ids.device)
    return (torch.cat(logps)[inverse],
            torch.cat(entropies)[inverse] if entropies else None, None)
