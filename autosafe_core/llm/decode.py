"""The transformers backend's decode loop: `generate` for one left-padded batch, except
that a row leaves the batch the step it finishes.

`model.generate` keeps every row in every forward pass until the last row ends, so a
batch costs its longest row's length times the full batch's step. Requests of one
batch finish at very different lengths (a short JSON verdict beside an action that
runs to its token budget), and on a CPU a step's cost grows with the rows in it
(SmolLM2-135M, 2 cores: 64 ms at 1 row, 160 ms at 12), so here each finished row's
cache is dropped and later steps run only the rows still going.

Tokens are chosen as `generate(do_sample=False)` chooses them with the same logits
processors: the processors see the whole batch (a finished row as padding), then the
argmax of each row's processed scores is its token.

A row whose caller no longer wants it (`wanted(i)` false: a cancelled request) leaves
the batch at the next step as a finished row does, its tokens so far returned.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from transformers import DynamicCache

Processor = Callable[[torch.LongTensor, torch.FloatTensor], torch.FloatTensor]


def left_padded(prompts: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.LongTensor, torch.LongTensor]:
    """The prompts as one batch and its attention mask, padded on the left: every row's
    next token sits in the same (last) column."""
    width = max((len(p) for p in prompts), default=0)
    input_ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, prompt in enumerate(prompts):
        input_ids[i, width - len(prompt) :] = torch.tensor(list(prompt), dtype=torch.long)
        attention[i, width - len(prompt) :] = 1
    return input_ids, attention


@torch.inference_mode()
def decode(
    model: torch.nn.Module,
    input_ids: torch.LongTensor,
    attention: torch.LongTensor,
    budgets: Sequence[int],
    stop_ids: Sequence[int],
    pad_id: int,
    processors: Sequence[Processor] = (),
    wanted: Callable[[int], bool] | None = None,
) -> list[list[int]]:
    """The tokens each row generates: up to and including its first stop token, at most
    `budgets[i]` of them, or until `wanted(i)` turns false. `input_ids` and `attention` are
    left-padded, on the CPU."""
    rows = input_ids.shape[0]
    device = model.device
    stops = torch.tensor(list(stop_ids))
    budget = torch.tensor(list(budgets))
    out: list[list[int]] = [[] for _ in range(rows)]
    seen = input_ids  # what the processors see: prompt, then one column per step
    live = torch.arange(rows)  # batch row of each row still in the forward pass
    mask = attention.to(device)
    cache = DynamicCache(config=model.config)
    step_ids = input_ids.to(device)
    for step in range(int(budget.max()) if rows else 0):
        positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, -step_ids.shape[1] :]
        logits = model(
            input_ids=step_ids,
            attention_mask=mask,
            position_ids=positions,
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
        ).logits[:, -1, :]
        scores = torch.zeros((rows, logits.shape[-1]), dtype=torch.float32)
        scores[live] = logits.float().cpu()
        for processor in processors:
            scores = processor(seen, scores)
        chosen = torch.full((rows,), pad_id, dtype=torch.long)
        chosen[live] = scores[live].argmax(dim=-1)
        seen = torch.cat([seen, chosen[:, None]], dim=1)
        for i in live.tolist():
            out[i].append(int(chosen[i]))
        finished = torch.isin(chosen[live], stops) | (step + 1 >= budget[live])
        if wanted is not None:
            finished |= torch.tensor([not wanted(i) for i in live.tolist()], dtype=torch.bool)
        if bool(finished.all()):
            break
        if bool(finished.any()):
            keep = (~finished).nonzero().squeeze(1)
            kept = keep.to(device)
            cache.batch_select_indices(kept)
            mask = mask[kept]
            live = live[keep]
        mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=1)
        step_ids = chosen[live][:, None].to(device)
    return out
