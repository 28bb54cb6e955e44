"""The transformers backend's decode loop against `model.generate`, on the embedded default.

    .venv/bin/python bench/transformers_decode.py           # 8 rows, quickstart-sized, 2 rounds (~7 min)
    .venv/bin/python bench/transformers_decode.py --quick   # 4 short rows, 1 round: a check that it runs

One batch shaped like the quickstart's (SmolLM2-135M on the CPU): prompts of about
600 to 1,800 tokens, half of them constrained to a JSON schema, greedy and seeded
sampled rows, budgets of the roles' sizes (160 to 448), so rows stop at very different
lengths. Both paths get the same rows and the same logits processors (`GrammarMask`,
`RowSampler`): the baseline is one `model.generate` call with a per-row budget, as the
backend decoded until 2026-12-07; the other is `autosafe_core.llm.decode.decode`, where a
finished row leaves the batch. Rounds alternate the two, in this process; the tokens of
every row must be the same on both paths.

Writes bench/results/transformers-decode.json (not with --quick).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import torch  # noqa: E402
from transformers import GenerationConfig, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList  # noqa: E402

from autosafe_core.llm.base import ChatRequest, Message, SamplingParams  # noqa: E402
from autosafe_core.llm.decode import decode  # noqa: E402
from autosafe_core.llm.registry import ModelSpec  # noqa: E402
from autosafe_core.llm.transformers_backend import TransformersChatModel, _Job  # noqa: E402
from machine import cpu_model  # noqa: E402

RESULTS = REPO / "bench" / "results" / "transformers-decode.json"
SCHEMA = {
    "type": "object",
    "properties": {
        "thought": {"type": "string"},
        "tool": {"type": "string", "enum": ["BankTransfer", "EmailSend", "FileDelete", "final_answer"]},
        "tool_input": {"type": "object", "properties": {"target": {"type": "string"}}, "required": ["target"]},
    },
    "required": ["thought", "tool", "tool_input"],
}
CONTEXT = (
    "The user manages a small business account. Tools: BankTransfer moves money between accounts; "
    "EmailSend sends an email to any address; FileDelete removes a file for good. "
)


def requests(quick: bool) -> list[ChatRequest]:
    budgets = [16, 24, 8, 32] if quick else [160, 384, 448, 256]
    rows = 4 if quick else 8
    out = []
    for i in range(rows):
        repeats = 2 + i if quick else 16 + 5 * i  # about 600 to 1,800 prompt tokens
        text = CONTEXT * repeats + f"Task {i}: pay the invoice from the supplier and tell them it is done."
        out.append(
            ChatRequest(
                messages=(Message(role="system", content="Answer as the agent, in JSON."), Message(role="user", content=text)),
                sampling=SamplingParams(
                    temperature=0.8 if i % 3 == 0 else 0.0, seed=i, max_tokens=budgets[i % len(budgets)]
                ),
                json_schema=SCHEMA if i % 2 == 0 else None,
            )
        )
    return out


class _RowBudget(StoppingCriteria):
    """The old path's per-row budget (generate's own limit is the batch's largest)."""

    def __init__(self, budgets: list[int], prompt_len: int):
        self._budgets, self._prompt_len = torch.tensor(budgets), prompt_len

    def __call__(self, input_ids, scores, **kwargs):
        return input_ids.shape[1] - self._prompt_len >= self._budgets


def batch(model: TransformersChatModel, reqs: list[ChatRequest]):
    """The backend's own inputs for one batch of `reqs` (as `_generate` builds them)."""
    loop = asyncio.new_event_loop()
    rows = [model._prepare(_Job(r, loop.create_future(), loop)) for r in reqs]
    loop.close()
    ids, mask, budgets, grammar, sampler = model.batch_inputs(rows)
    return ids, mask, budgets, [grammar, sampler], [len(r.prompt_ids) for r in rows]


def with_generate(model: TransformersChatModel, reqs: list[ChatRequest]) -> list[list[int]]:
    ids, mask, budgets, processors, _ = batch(model, reqs)
    config = GenerationConfig(
        do_sample=False, max_new_tokens=max(budgets), eos_token_id=model.stop_ids, pad_token_id=model.pad_id
    )
    with torch.inference_mode():
        out = model.model.generate(
            input_ids=ids,
            attention_mask=mask,
            generation_config=config,
            logits_processor=LogitsProcessorList(processors),
            stopping_criteria=StoppingCriteriaList([_RowBudget(budgets, ids.shape[1])]),
        )[:, ids.shape[1] :].tolist()
    stops, rows = set(model.stop_ids), []
    for tokens, budget in zip(out, budgets, strict=True):
        tokens = tokens[:budget]
        end = next((k for k, t in enumerate(tokens) if t in stops), None)
        rows.append(tokens if end is None else tokens[: end + 1])
    return rows


def with_loop(model: TransformersChatModel, reqs: list[ChatRequest]) -> list[list[int]]:
    ids, mask, budgets, processors, _ = batch(model, reqs)
    return decode(model.model, ids, mask, budgets, model.stop_ids, model.pad_id, processors)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="4 short rows, 1 round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None, help="where the JSON goes (default: bench/results/, not with --quick)")
    args = parser.parse_args()
    rounds = 1 if args.quick else args.rounds
    model = TransformersChatModel.from_spec(ModelSpec(options={"device": "cpu"}))
    reqs = requests(args.quick)
    with_loop(model, reqs[:2])  # warm the kernels and the grammar compiler
    times: dict[str, list[float]] = {"generate": [], "loop": []}
    tokens: dict[str, list[list[int]]] = {}
    for _ in range(rounds):
        for name, path in (("generate", with_generate), ("loop", with_loop)):
            start = time.perf_counter()
            tokens[name] = path(model, reqs)
            times[name].append(time.perf_counter() - start)
    same = tokens["generate"] == tokens["loop"]
    generated = sum(len(t) for t in tokens["loop"])
    base, loop = statistics.median(times["generate"]), statistics.median(times["loop"])
    _, _, budgets, _, prompts = batch(model, reqs)
    result = {
        "loop_tokens_per_s": round(generated / loop, 1),
        "generate_tokens_per_s": round(generated / base, 1),
        "speedup_vs_generate": round(base / loop, 3),
        "same_tokens": same,
        "rows": len(reqs),
        "prompt_tokens": prompts,
        "budgets": budgets,
        "generated_tokens_per_row": [len(t) for t in tokens["loop"]],
        "wall_s": {k: [round(v, 2) for v in vs] for k, vs in times.items()},
        "model": "smollm2-135m-instruct, float32, cpu",
        "torch_threads": torch.get_num_threads(),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count()},
        "versions": {p: metadata.version(p) for p in ("torch", "transformers", "xgrammar")},
        "date": datetime.now(UTC).date().isoformat(),
    }
    asyncio.run(model.aclose())
    for key in ("generate_tokens_per_s", "loop_tokens_per_s", "speedup_vs_generate", "same_tokens"):
        print(f"{key:<26}{str(result[key]):>12}")
    out = args.out or (None if args.quick else RESULTS)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {out}")
    if not same:
        raise SystemExit("the two paths chose different tokens")


if __name__ == "__main__":
    main()
