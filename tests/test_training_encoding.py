"""SFT tokens: the prompt exactly as the backends render it at inference, the loss on the target only.

SmolLM2's own tokenizer and chat template; a tiny random llama shows what the mask does to the
loss the trainer optimises.
"""

from __future__ import annotations

import pytest
import torch
from transformers import AutoTokenizer, LlamaForCausalLM

from autosafe_core.catalog import default_catalog
from autosafe_core.training import to_dataset_row
from autosafe_core.training.encoding import IGNORE, encode
from autosafe_core.training.train import collate
from tests.support.samples import safe_sample
from tests.support.tiny_llama import tiny_llama_dir


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny_llama_dir(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def tokenizer(model_dir):
    return AutoTokenizer.from_pretrained(model_dir)


@pytest.fixture(scope="module")
def row():
    """A real SFT row: the agent's system prompt with the Terminal toolkit, the instruction, the safe action."""
    return to_dataset_row(safe_sample("mask"), "train", default_catalog())


def chat(row) -> list[dict[str, str]]:
    return [m.model_dump() for m in row.messages]


def test_labels_are_ignored_on_every_prompt_token_and_the_rest_is_the_target_and_its_end_of_turn(tokenizer, row):
    encoded = encode(tokenizer, chat(row), row.target, max_length=4096)

    inference_prompt = tokenizer(
        tokenizer.apply_chat_template(chat(row), tokenize=False, add_generation_prompt=True), add_special_tokens=False
    )["input_ids"]
    n = len(inference_prompt)
    assert encoded.input_ids[:n] == inference_prompt, "the prompt is what the backends feed the model"
    assert encoded.labels[:n] == [IGNORE] * n
    learned = encoded.labels[n:]
    assert IGNORE not in learned and learned == encoded.input_ids[n:]
    assert tokenizer.decode(learned) == row.target + "<|im_end|>\n"
    assert encoded.target_tokens == len(learned) and encoded.truncated == 0


def test_the_model_loss_is_the_cross_entropy_of_the_target_tokens_alone(model_dir, tokenizer, row):
    model = LlamaForCausalLM.from_pretrained(model_dir).eval()
    encoded = encode(tokenizer, chat(row), row.target, max_length=4096)
    batch = collate([encoded], tokenizer.pad_token_id)
    with torch.no_grad():
        out = model(**batch)
    logits, labels = out.logits[0, :-1], batch["labels"][0, 1:]
    on_target = labels != IGNORE
    by_hand = torch.nn.functional.cross_entropy(logits[on_target], labels[on_target])
    assert on_target.sum() == encoded.target_tokens
    assert torch.allclose(out.loss, by_hand, atol=1e-5)

    # Another instruction leaves the mask where it was: only the target's tokens carry the loss.
    other = encode(tokenizer, [*chat(row)[:-1], {"role": "user", "content": "Something else entirely."}], row.target, 4096)
    assert other.labels[-encoded.target_tokens :] == encoded.labels[-encoded.target_tokens :]
    assert other.target_tokens == encoded.target_tokens


def test_a_long_prompt_loses_its_oldest_tokens_and_never_the_target(tokenizer, row):
    full = encode(tokenizer, chat(row), row.target, max_length=4096)
    budget = full.target_tokens + 50

    cut = encode(tokenizer, chat(row), row.target, max_length=budget)

    assert len(cut.input_ids) == budget and cut.truncated == len(full.input_ids) - budget
    assert cut.input_ids == full.input_ids[-budget:]
    assert cut.labels[-full.target_tokens :] == full.labels[-full.target_tokens :]
    assert cut.target_tokens == full.target_tokens


def test_an_example_whose_target_alone_is_too_long_is_dropped(tokenizer, row):
    full = encode(tokenizer, chat(row), row.target, max_length=4096)
    assert encode(tokenizer, chat(row), row.target, max_length=full.target_tokens - 1) is None
    assert encode(tokenizer, chat(row), row.target, max_length=full.target_tokens).input_ids == full.input_ids[-full.target_tokens :]


def test_a_batch_pads_on_the_right_with_padding_masked_and_ignored(tokenizer, row):
    long = encode(tokenizer, chat(row), row.target, max_length=4096)
    short = encode(tokenizer, [{"role": "user", "content": "hi"}], "hello", max_length=4096)

    batch = collate([long, short], pad_id=tokenizer.pad_token_id)

    width = len(long.input_ids)
    assert batch["input_ids"].shape == (2, width)
    n = len(short.input_ids)
    assert batch["attention_mask"][1].tolist() == [1] * n + [0] * (width - n)
    assert batch["labels"][1, n:].eq(IGNORE).all() and batch["labels"][1, :n].tolist() == short.labels
