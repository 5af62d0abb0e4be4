"""What the GRPO strategies with an SFT term share: TRL's `GRPOTrainer` (04's
`SynergyGRPOTrainer`) plus an SFT loss on expert targets that a family chooses per rollout
batch.

A family's trainer subclasses `trainer_class()` and overrides `route(batch, inputs,
accuracy)`, which returns the (possibly changed) GRPO batch, one SFT target or None per row,
and the SFT term's weight. SFT targets stay on the trainer (`sft_targets`, one list per
rollout batch); the batch carries each row's index into it (`sft_index`, -1: none), so TRL
shuffles and splits the batch as usual and images never enter it. The SFT term is
normalised as TRL normalises its GRPO loss (`mixing.sft_loss`).

TRL is imported when a trainer class is first asked for: importing the stage (a notebook's
first cell) stays fast.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from synergy import grpo_trainer, mixing
from synergy.models import tokenizer_of
from synergy.vlm import encode_pairs

# Model inputs a processor may return beside the token ids (passed on to TRL's log-probs).
VISION_INPUTS = ("pixel_values", "image_grid_thw", "mm_token_type_ids", "token_type_ids",
                 "image_sizes", "pixel_attention_mask")


def sft_target_of(row: dict, n_tokens: int | None = None) -> dict:
    """What the SFT loss of one question trains on: its prompt (text, or chat messages for a
    question with images), the expert response (or its first `n_tokens` tokens) and images."""
    return {"prompt": row["prompt"], "response": row["expert"], "n_tokens": n_tokens,
            "images": row.get("images") or None}


@functools.cache
def trainer_class():
    """`grpo_trainer.trainer_class()` (TRL's GRPOTrainer) with an SFT term on routed targets."""
    import torch

    class StrategyGRPOTrainer(grpo_trainer.trainer_class()):
        """GRPO plus a weighted SFT loss on the expert targets `route` picks. The dataset
        carries `expert` (the expert response) and `prefix` ("") beside TRL's `prompt` (and
        `images`)."""

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.sft_targets: list[dict] = []   # this rollout batch's targets
            self.last_loss_parts: dict[str, float] = {}

        # --- what a family overrides ---------------------------------------------------

        def route(self, batch: dict[str, Any], inputs: list[dict], accuracy
                  ) -> tuple[dict[str, Any], list[dict | None], float]:
            """(batch, SFT target per row or None, SFT weight) of one scored rollout batch
            (`accuracy`: this process's rows' accuracy rewards). Default: plain GRPO."""
            return batch, [None] * len(inputs), 0.0

        # --- shared machinery -----------------------------------------------------------

        def progress(self) -> float:
            return self.state.global_step / max(self.state.max_steps, 1)

        def _log(self, name: str, value: float) -> None:
            self._metrics["train"][f"strategy/{name}"].append(float(value))

        def _generate_and_score_completions(self, inputs):
            batch = super()._generate_and_score_completions(inputs)
            if not self.model.training:
                return batch
            here = self.accelerator.process_index * len(inputs)  # rewards span all processes
            accuracy = self._last_rewards_per_func[
                here:here + len(inputs), self.reward_func_names.index("accuracy_reward")].cpu()
            batch, targets, weight = self.route(batch, inputs, accuracy)
            self.sft_targets = [t for t in targets if t is not None]
            device = batch["completion_ids"].device
            index = np.cumsum([t is not None for t in targets]) - 1
            batch["sft_index"] = torch.tensor(
                [int(j) if t is not None else -1 for j, t in zip(index, targets)],
                device=device)
            batch["sft_weight"] = torch.tensor(float(weight), device=device)
            tokens = float(self._target_tokens(self.sft_targets))
            batch["sft_num_items"] = torch.tensor(tokens, device=device)
            # Every target is trained on once in this rollout batch's steps (same step).
            self.count(sft_tokens=tokens if weight > 0 else 0.0)
            return batch

        def recount(self, batch: dict[str, Any]) -> dict[str, Any]:
            """The GRPO token count after rows were dropped or re-rolled."""
            batch["num_items_in_batch"] = self.accelerator.gather(
                batch["completion_mask"].sum()).sum()
            return batch

        def _target_tokens(self, targets: list[dict]) -> int:
            """Response tokens the SFT loss of `targets` averages over."""
            tok = tokenizer_of(self.processing_class)
            return sum(sum(mixing.sft_target(tok, "", t["response"], t["n_tokens"])[1])
                       for t in targets)

        def _sft_nll(self, model, targets: list[dict]):
            """Summed NLL of the targets' response tokens and their count, from TRL's
            log-probs: text targets through the tokenizer, targets with chat prompts (the
            questions with images) through the processor, images included, as rollouts."""
            tok = tokenizer_of(self.processing_class)
            device = self.accelerator.device
            nll, count = torch.zeros((), device=device), torch.zeros((), device=device)
            text = [t for t in targets if isinstance(t["prompt"], str)]
            chat = [t for t in targets if not isinstance(t["prompt"], str)]
            parts = []
            if text:
                padded = mixing.pad_targets([mixing.sft_target(
                    tok, t["prompt"], t["response"], t["n_tokens"]) for t in text],
                    tok.pad_token_id)
                parts.append(({"input_ids": padded["sft_ids"],
                               "attention_mask": padded["sft_attention"]}, padded["sft_mask"]))
            if chat:
                parts.append(self._encode_chat(chat))
            for enc, mask in parts:
                extra = {k: v.to(device) for k, v in enc.items() if k in VISION_INPUTS}
                ids, attention = enc["input_ids"].to(device), enc["attention_mask"].to(device)
                mask = mask.to(device)
                logps, _, _ = self._get_per_token_logps_and_entropies(
                    model, ids, attention, ids.shape[1] - 1,
                    batch_size=self.args.per_device_train_batch_size,
                    num_images=enc.get("num_images"), **extra)
                nll = nll - (logps * mask[:, 1:]).sum()
                count = count + mask[:, 1:].sum()
            return nll, count

        def _encode_chat(self, targets: list[dict]):
            """(model inputs, loss mask) of chat prompts with their images + responses:
            the prompt rendered as TRL renders the rollouts', `vlm.encode_pairs` for the
            rest (image tokens expanded, loss on the response and end of turn)."""
            from trl.data_utils import apply_chat_template, prepare_multimodal_messages

            images = [list(t["images"] or []) for t in targets]
            prompts = [apply_chat_template(
                {"prompt": prepare_multimodal_messages(t["prompt"], images=im or None)},
                self.processing_class, **self.chat_template_kwargs)["prompt"]
                for t, im in zip(targets, images)]
            enc = encode_pairs(self.processing_class, prompts,
                               [t["response"] for t in targets], images)
            mask = (enc.pop("labels") != -100).float()
            enc = {k: v for k, v in enc.items() if torch.is_tensor(v)}
            return {**enc, "num_images": [len(im) for im in images]}, mask

        def _sft_term(self, model, inputs):
            """The weighted SFT loss of this micro-batch's targets (None without any),
            normalised like the GRPO loss (`mixing.sft_loss`)."""
            if "sft_index" not in inputs:
                return None
            rows = [int(i) for i in inputs["sft_index"].tolist() if i >= 0]
            if not rows or float(inputs["sft_weight"]) == 0:
                return None
            nll, tokens = self._sft_nll(model, [self.sft_targets[i] for i in rows])
            self._log("sft_loss", nll.detach() / tokens.clamp(min=1))
            return inputs["sft_weight"] * mixing.sft_loss(
                nll, tokens, inputs["sft_num_items"], self.loss_type,
                self.current_gradient_accumulation_steps, self.args.steps_per_generation,
                self.accelerator.num_processes)

        def _compute_loss(self, model, inputs):
            loss = super()._compute_loss(model, inputs)  # GRPO on the rows left in it
            term = self._sft_term(model, inputs)
            self.last_loss_parts = {"grpo": float(loss.detach())}
            if term is None:
                return loss
            self.last_loss_parts["sft"] = float(term.detach())
            return loss + term

    return StrategyGRPOTrainer
