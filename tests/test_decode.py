"""The transformers backend's decode loop (`autosafe_core/llm/decode.py`): the tokens
`model.generate` would choose with the same logits processors, while a finished row
leaves the batch. A tiny random llama built from a config: seconds, nothing downloaded;
and the benchmark of the loop against `generate` (bench/transformers_decode.py) at its
quick size on SmolLM2.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import GenerationConfig, LlamaForCausalLM, LogitsProcessor, LogitsProcessorList

from autosafe_core.llm.decode import decode, left_padded
from tests.support.tiny_llama import tiny_config

REPO = Path(__file__).resolve().parent.parent
VOCAB, PAD, STOP = 97, 0, 2


@pytest.fixture(scope="module")
def model() -> LlamaForCausalLM:
    config = tiny_config(
        VOCAB,
        max_position_embeddings=256,
        bos_token_id=1,
        eos_token_id=STOP,
        pad_token_id=PAD,
    )
    torch.manual_seed(0)
    return LlamaForCausalLM(config).eval()


class StopAfter(LogitsProcessor):
    """Row i must say STOP at its `at[i]`-th new token, and must not before it."""

    def __init__(self, at: list[int | None], prompt_len: int):
        self.at, self.prompt_len = at, prompt_len

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        made = input_ids.shape[1] - self.prompt_len
        for i, at in enumerate(self.at):
            if at is not None and made == at - 1:
                scores[i] = float("-inf")
                scores[i, STOP] = 0.0
            else:
                scores[i, STOP] = float("-inf")
        return scores


PROMPTS = [[5, 6, 7, 8, 9, 10, 11], [12, 13], [14, 15, 16, 17], [18, 19, 20, 21, 22]]
BUDGETS = [12, 3, 20, 7]
STOPS_AT = [5, None, None, 2]  # rows 0 and 3 stop early; rows 1 and 2 run to their budgets


def reference(model: LlamaForCausalLM) -> list[list[int]]:
    """`generate` on the whole batch, each row cut at its stop token or budget."""
    ids, mask = left_padded(PROMPTS, PAD)
    out = model.generate(
        input_ids=ids,
        attention_mask=mask,
        generation_config=GenerationConfig(
            do_sample=False, max_new_tokens=max(BUDGETS), eos_token_id=[STOP], pad_token_id=PAD
        ),
        logits_processor=LogitsProcessorList([StopAfter(STOPS_AT, ids.shape[1])]),
    )[:, ids.shape[1] :].tolist()
    rows = []
    for tokens, budget in zip(out, BUDGETS, strict=True):
        tokens = tokens[:budget]
        rows.append(tokens[: tokens.index(STOP) + 1] if STOP in tokens else tokens)
    return rows


def test_the_tokens_are_generates_and_each_row_ends_at_its_stop_or_budget(model: LlamaForCausalLM) -> None:
    ids, mask = left_padded(PROMPTS, PAD)
    got = decode(model, ids, mask, BUDGETS, [STOP], PAD, [StopAfter(STOPS_AT, ids.shape[1])])
    assert got == reference(model)
    assert [len(t) for t in got] == [5, 3, 20, 2]
    assert got[0][-1] == STOP and got[3][-1] == STOP and STOP not in got[1] + got[2]


@pytest.fixture
def rows_per_pass(model: LlamaForCausalLM, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The rows of each forward pass the model makes from here on (the test's own passes)."""
    rows: list[int] = []
    forward = model.forward

    def counting(**kwargs):
        rows.append(kwargs["input_ids"].shape[0])
        return forward(**kwargs)

    monkeypatch.setattr(model, "forward", counting)
    return rows


def test_a_finished_row_leaves_the_batch(model: LlamaForCausalLM, rows_per_pass: list[int]) -> None:
    ids, mask = left_padded(PROMPTS, PAD)
    decode(model, ids, mask, BUDGETS, [STOP], PAD, [StopAfter(STOPS_AT, ids.shape[1])])
    # One pass per token of the longest row: all 4 rows until row 3 stops (token 2), then
    # 3 until row 1's budget (3), 2 until row 0 stops (5), then row 2 alone to 20.
    assert rows_per_pass == [4, 4, 3, 2, 2, *[1] * 15]


def test_a_row_no_longer_wanted_leaves_the_batch_and_the_others_are_unchanged(
    model: LlamaForCausalLM, rows_per_pass: list[int]
) -> None:
    full = reference(model)
    rows_per_pass.clear()  # the reference's passes
    ids, mask = left_padded(PROMPTS, PAD)
    # Row 2 (budget 20) is withdrawn once it has made 4 tokens, as a cancelled caller's row is.
    got = decode(model, ids, mask, BUDGETS, [STOP], PAD, [StopAfter(STOPS_AT, ids.shape[1])],
                 wanted=lambda i: i != 2 or len(rows_per_pass) < 4)  # fmt: skip
    assert got[2] == full[2][:4]
    assert [got[i] for i in (0, 1, 3)] == [full[i] for i in (0, 1, 3)]
    # Row 2 leaves with row 1 after the third pass and row 0 alone runs on to its stop.
    assert rows_per_pass == [4, 4, 3, 2, 1]


def test_an_empty_batch_decodes_nothing(model: LlamaForCausalLM) -> None:
    ids, mask = left_padded([[5, 6]], PAD)
    assert decode(model, ids[:0], mask[:0], [], [STOP], PAD) == []


@pytest.mark.slow
def test_the_decode_benchmark_runs_quick_on_smollm2_and_both_paths_choose_the_same_tokens(tmp_path):
    out = tmp_path / "transformers-decode.json"
    done = subprocess.run(
        [sys.executable, "bench/transformers_decode.py", "--quick", "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["same_tokens"] is True and result["rows"] == 4
    made, budgets = result["generated_tokens_per_row"], result["budgets"]
    assert all(1 <= n <= b for n, b in zip(made, budgets, strict=True)), (made, budgets)
    assert result["loop_tokens_per_s"] > 0 and result["generate_tokens_per_s"] > 0 and result["speedup_vs_generate"] > 0
