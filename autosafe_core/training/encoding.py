"""One SFT example as token ids and labels: the loss falls on the target's tokens only.

The prompt is what the inference backends feed the model: the tokenizer's chat template over the
prompt turns with the generation prompt added, tokenized without extra special tokens. The target
is the rest of the assistant turn as the same template writes it around the safe action, its
end-of-turn token included, so the tuned model learns to stop. Labels are -100 (ignored by the
loss) on every prompt token. Prompt and target are tokenized apart, as at inference, where the
model starts generating right after the prompt's last token.

Too long for `max_length`: the prompt loses its oldest tokens; the target is never cut (an example
whose target alone does not fit is dropped, and the caller counts it).

This module knows nothing about where examples come from or how they are batched.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

IGNORE = -100
"""The label the loss skips (transformers' and torch's cross-entropy default)."""


@dataclass(frozen=True)
class Encoded:
    """Token ids of one example and its labels (IGNORE on prompt tokens)."""

    input_ids: list[int]
    labels: list[int]
    truncated: int = 0
    """Prompt tokens dropped from the left to fit."""

    @property
    def target_tokens(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE)


def encode(
    tokenizer: Any, messages: Sequence[dict[str, str]], target: str, max_length: int
) -> Encoded | None:
    """`messages` then `target` as one assistant turn; None when the target alone exceeds `max_length`."""
    prompt_ids, target_ids = split_ids(tokenizer, messages, target)
    if len(target_ids) > max_length:
        return None
    room = max_length - len(target_ids)
    dropped = max(0, len(prompt_ids) - room)
    prompt_ids = prompt_ids[dropped:]
    return Encoded(prompt_ids + target_ids, [IGNORE] * len(prompt_ids) + target_ids, dropped)


def split_ids(tokenizer: Any, messages: Sequence[dict[str, str]], target: str) -> tuple[list[int], list[int]]:
    """(prompt ids as the backends render them, target ids as the template closes the assistant turn)."""
    turns = [{"role": m["role"], "content": m["content"]} for m in messages]
    prompt = tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template([*turns, {"role": "assistant", "content": target}], tokenize=False)
    if full.startswith(prompt) and target in full[len(prompt) :]:
        reply = full[len(prompt) :]
    else:
        # Templates that rewrite earlier turns once a reply follows (some drop reasoning):
        # the reply is the target and the end-of-sequence token.
        reply = target + (tokenizer.eos_token or "")
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    target_ids = tokenizer(reply, add_special_tokens=False)["input_ids"]
    return list(prompt_ids), list(target_ids)
