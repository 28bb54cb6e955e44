"""The GPU path: the rollout stage on vLLM engines in Ray actors, against vLLM's own
offline throughput (the ceiling) and a one-call-at-a-time loop (the naive baseline).

On the device machine (vLLM, Ray and the project's few imports carried as wheels: see
bench/device/README.md), from the repository root:

    python bench/gpu_vllm.py rollout --gpus 1         # (b) on one GPU; records its requests in $BENCH_WORK
    python bench/gpu_vllm.py rollout --gpus 2         # (b), one engine replica per GPU
    python bench/gpu_vllm.py ceiling                  # (a) and (c) on the requests (b) recorded
    python bench/gpu_vllm.py report --from-dir D...   # here: the ratios -> bench/results/gpu-vllm.json

Here, on the CPU, `--dry-run` runs the same code with the instant schema responder in
place of vLLM (no GPU, no Ray actors for the engine), to keep the script working.

The model is a 7B-class llama with random weights (`load_format="dummy"`, nothing
downloaded; bench/device/model_dir.py writes its config and SmolLM2's tokenizer).
Random weights write noise, so benchmark mode fixes the work: every call generates
exactly `--out-tokens` tokens (ignore EOS) under its role's JSON schema (structured
outputs on; once the grammar is complete vLLM lifts the mask and the rest is free
tokens), and each rollout runs exactly `--steps` steps. For the latter the text that
goes back to the roles is a valid reply drawn from the request's schema (the agent
calls a tool, the judge says safe), with the engine's own token counts; the GPU work
is what the engine did. (a) and (c) replay exactly the prompts, schemas and output
lengths that (b) sent, so all three count the same work.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import statistics
import sys
import threading
import time
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

RESULTS = REPO / "bench" / "results" / "gpu-vllm.json"
OUT = Path(os.environ.get("OUT") or REPO / ".bench-out")
WORK = Path(os.environ.get("BENCH_WORK") or REPO / ".bench-out")  # kept between calls on one machine
MODEL_DIR = REPO / ".bench-model" / "llama-7b"

from autosafe_core.llm.base import ChatModel, ChatRequest, Completion  # noqa: E402
from autosafe_core.ots import FINAL_ANSWER, SAFETY_SCORES  # noqa: E402


class BenchMode(ChatModel):
    """Fixed work per call on random weights; records every request for the replays."""

    def __init__(self, inner: ChatModel, out_tokens: int):
        self.inner = inner
        self.out_tokens = out_tokens
        self.model_id = inner.model_id
        self.sent: list[tuple[ChatRequest, int]] = []

    async def complete(self, requests: list[ChatRequest]) -> list[Completion]:
        fixed = [
            r.model_copy(update={"sampling": r.sampling.model_copy(update={"max_tokens": self.out_tokens})})
            for r in requests
        ]
        done = await self.inner.complete(fixed)
        out = []
        for request, completion in zip(fixed, done, strict=True):
            if completion.error:
                raise RuntimeError(f"engine error: {completion.error}")
            self.sent.append((request, completion.completion_tokens))
            out.append(completion.model_copy(update={"text": steering_reply(request), "finish_reason": "stop"}))
        return out


def steering_reply(request: ChatRequest) -> str:
    """A valid reply to `request` that keeps the rollout going: a tool call, judged safe."""
    from tests.support.schema_responder import respond

    salted = request
    for attempt in range(64):
        reply = json.loads(respond(salted))
        if isinstance(reply, dict) and {"label", "risk_trigger"} <= reply.keys():
            safe = max(SAFETY_SCORES, key=SAFETY_SCORES.get)
            reply.update(label=safe.value, score=SAFETY_SCORES[safe], risk_trigger=False)
            return json.dumps(reply)
        if not (isinstance(reply, dict) and reply.get("tool") == FINAL_ANSWER):
            return json.dumps(reply)
        salt = type(request.messages[-1])(role="user", content=f"salt {attempt}")
        salted = request.model_copy(update={"messages": (*request.messages, salt)})
    raise RuntimeError("no tool-call reply in 64 draws")


def scenarios(count: int):
    """`count` scenarios over the whole catalog, written by the instant responder (CPU, instant)."""
    from autosafe_core.catalog import default_catalog
    from autosafe_core.llm.scripted import ScriptedModel
    from autosafe_core.stages.generate import generate_jobs, ots_grid, scenario_jobs
    from tests.support.schema_responder import respond

    catalog = default_catalog()
    made = asyncio.run(
        generate_jobs(scenario_jobs(ots_grid(catalog), 0, count), ScriptedModel(respond, model_id="bench"), catalog)
    )
    return made.rows, catalog


def vllm_spec(gpus_per_engine: int = 1):
    from autosafe_core.llm.registry import ModelSpec

    return ModelSpec(
        backend="vllm",
        model=str(MODEL_DIR),
        max_concurrency=100_000,
        options={
            "load_format": "dummy",
            "dtype": "bfloat16",
            "max_model_len": 8192,
            "gpu_memory_utilization": 0.88,
            "seed": 0,
            "num_gpus": gpus_per_engine,
            # The engine's own log every few seconds: running and waiting requests, KV cache
            # use, prompt and generation throughput: where the time goes, if the figure is low.
            "disable_log_stats": False,
        },
    )


def run_rollout(args) -> None:
    """(b): the project's rollout stage, engines in Ray actors, one replica per GPU."""
    from autosafe_core.stages.rollout import RolloutConfig, RolloutModels, rollout

    rows, catalog = scenarios(args.rollouts)
    cfg = RolloutConfig(max_steps=args.steps, concurrency=args.rollouts)
    results = []
    for gpus in args.gpus:
        with _engine(args, gpus) as client:
            warm = BenchMode(client, args.out_tokens)
            asyncio.run(rollout(rows[: min(32, len(rows))], RolloutModels(warm, warm, warm), catalog, cfg))
            bench = BenchMode(client, args.out_tokens)
            start = time.perf_counter()
            with _progress(bench, start):
                result = asyncio.run(rollout(rows, RolloutModels(bench, bench, bench), catalog, cfg))
            wall = time.perf_counter() - start
        steps = sum(len(t.steps) for t in result.rows)
        generated = sum(n for _, n in bench.sent)
        stops = collections.Counter(t.stop_reason.value for t in result.rows)
        reasons = collections.Counter(r.reason.split(": ", 1)[-1][:160] for r in result.rejections)
        print(f"stop reasons {dict(stops)}; rejections {sum(reasons.values())}: {reasons.most_common(3)}", flush=True)
        print(f"(b) rollout, {gpus} GPU(s): {len(bench.sent)} calls, {steps} steps, {generated} tokens "
              f"in {wall:.1f} s = {generated / wall:.0f} generated tokens/s", flush=True)
        results.append({"gpus": gpus, "wall_s": wall, "calls": len(bench.sent), "steps": steps,
                        "generated_tokens": generated, "tokens_per_s": generated / wall,
                        "stop_reasons": dict(stops), "rejections": dict(reasons.most_common(5)),
                        "prompt_tokens": _prompt_stats(bench.sent)})
        if gpus == 1:  # (a) and (c) replay the one-GPU run's requests
            _save_requests(bench.sent)
    OUT.mkdir(parents=True, exist_ok=True)
    name = "rollout-" + "-".join(map(str, args.gpus)) + "gpu.json"
    (OUT / name).write_text(json.dumps({"args": vars(args), "runs": results}, indent=1))


class _progress:
    """Prints calls done and generated tokens/s so far every 15 s: a run cut short still says how fast it went."""

    def __init__(self, bench: BenchMode, start: float):
        self.bench, self.start = bench, start
        self.done = threading.Event()

    def __enter__(self):
        threading.Thread(target=self._report, daemon=True).start()

    def __exit__(self, *exc):
        self.done.set()

    def _report(self) -> None:
        while not self.done.wait(15):
            sent = list(self.bench.sent)
            elapsed = time.perf_counter() - self.start
            tokens = sum(n for _, n in sent)
            print(f"  ... {elapsed:.0f} s: {len(sent)} calls done, {tokens / elapsed:.0f} generated tokens/s", flush=True)


class _engine:
    """The factory's engine pool (tasks.engines) on a local Ray with `gpus` GPUs; dry run: the responder."""

    def __init__(self, args, gpus: int):
        self.args, self.gpus = args, gpus

    def __enter__(self):
        from autosafe_core.llm.registry import ModelSpec
        from tasks.engines import EngineClient, engines

        if self.args.dry_run:
            spec = ModelSpec(backend="scripted", model="tests.support.schema_responder:respond")
            self._pool = engines({"agent": spec}, "local")
        else:
            import ray

            ray.init(num_gpus=self.gpus, include_dashboard=False, log_to_driver=True)
            self._pool = engines({"agent": vllm_spec()}, "ray", replicas=self.gpus)
        refs = self._pool.__enter__()
        return EngineClient(refs["agent"])

    def __exit__(self, *exc):
        self._pool.__exit__(*exc)
        if not self.args.dry_run:
            import ray

            ray.shutdown()


def _prompt_stats(sent) -> dict:
    lengths = [_prompt_tokens(r) for r, _ in sent[:2000]]
    return {"median": statistics.median(lengths), "min": min(lengths), "max": max(lengths)}


_TOKENIZER = None


def _prompt_tokens(request: ChatRequest) -> int:
    return len(_prompt_ids(request))


def _prompt_ids(request: ChatRequest) -> list[int]:
    """The prompt exactly as the vLLM backend builds it (chat template, no extra specials)."""
    global _TOKENIZER
    if _TOKENIZER is None:
        from transformers import AutoTokenizer

        _TOKENIZER = AutoTokenizer.from_pretrained(MODEL_DIR)
    text = _TOKENIZER.apply_chat_template(
        [m.model_dump() for m in request.messages], tokenize=False, add_generation_prompt=True
    )
    return list(_TOKENIZER.encode(text, add_special_tokens=False))


def _save_requests(sent) -> None:
    WORK.mkdir(parents=True, exist_ok=True)
    with open(WORK / "requests.jsonl", "w") as f:
        for request, generated in sent:
            f.write(json.dumps({"prompt_ids": _prompt_ids(request), "schema": request.json_schema,
                                "max_tokens": generated}) + "\n")


def run_ceiling(args) -> None:
    """(a) vLLM's own `LLM.generate` on all recorded requests at once; (c) one at a time."""
    records = [json.loads(line) for line in open(WORK / "requests.jsonl")]
    generated = sum(r["max_tokens"] for r in records)
    if args.dry_run:
        print(f"dry run: {len(records)} recorded requests, {generated} tokens; vLLM not run")
        return
    from vllm import LLM
    from vllm.config import StructuredOutputsConfig
    from vllm.inputs import TokensPrompt
    from vllm.sampling_params import SamplingParams

    options = {k: v for k, v in vllm_spec().options.items() if k not in ("num_gpus", "disable_log_stats")}
    llm = LLM(model=str(MODEL_DIR), structured_outputs_config=StructuredOutputsConfig(
        backend="xgrammar", disable_any_whitespace=True), disable_log_stats=True, **options)

    def params(r):
        # Exactly the tokens (b) generated. No schema here: vLLM 0.26 fails a request whose
        # grammar has terminated when EOS is ignored, so the ceiling runs unconstrained
        # (structured outputs cost about nothing at this size: see bench/device/README.md).
        return SamplingParams(temperature=0.0, max_tokens=r["max_tokens"], ignore_eos=True)

    records = [r for r in records if r["max_tokens"] > 0]
    generated = sum(r["max_tokens"] for r in records)
    prompts = [TokensPrompt(prompt_token_ids=r["prompt_ids"]) for r in records]
    sampling = [params(r) for r in records]
    llm.generate(prompts[:64], sampling[:64], use_tqdm=False)  # warm-up: graphs, grammar compiler
    start = time.perf_counter()
    outs = llm.generate(prompts, sampling, use_tqdm=False)
    wall = time.perf_counter() - start
    made = sum(len(o.outputs[0].token_ids) for o in outs)
    print(f"(a) LLM.generate: {len(records)} requests, {made} tokens in {wall:.1f} s = {made / wall:.0f} tokens/s",
          flush=True)
    seq_n = min(args.sequential, len(records))
    step = max(1, len(records) // seq_n)
    picked = list(range(0, len(records), step))[:seq_n]
    start = time.perf_counter()
    seq_made = 0
    for i in picked:
        (o,) = llm.generate([prompts[i]], [sampling[i]], use_tqdm=False)
        seq_made += len(o.outputs[0].token_ids)
    seq_wall = time.perf_counter() - start
    print(f"(c) one call at a time: {seq_n} requests, {seq_made} tokens in {seq_wall:.1f} s = "
          f"{seq_made / seq_wall:.0f} tokens/s", flush=True)
    (OUT / "ceiling.json").write_text(json.dumps({
        "requests": len(records), "generated_tokens": made, "wall_s": wall, "tokens_per_s": made / wall,
        "sequential": {"requests": seq_n, "generated_tokens": seq_made, "wall_s": seq_wall,
                       "tokens_per_s": seq_made / seq_wall},
    }, indent=1))


def run_report(args) -> None:
    """Join (b) with (a) and (c) into bench/results/gpu-vllm.json and print the table."""
    srcs = [Path(d) for d in (args.from_dir or [str(OUT)])]
    found = {p.name: p for src in srcs for p in src.glob("*.json")}
    rolls = [json.loads(p.read_text()) for name, p in sorted(found.items()) if name.startswith("rollout-")]
    roll = rolls[0]
    ceil = json.loads(found["ceiling.json"].read_text())
    device = json.loads(found["device.json"].read_text()) if "device.json" in found else {}
    by_gpus = {r["gpus"]: r for one_roll in rolls for r in one_roll["runs"]}
    one = by_gpus[1]
    result = {
        "vllm_tokens_per_s": round(ceil["tokens_per_s"], 1),
        "rollout_tokens_per_s": round(one["tokens_per_s"], 1),
        "sequential_tokens_per_s": round(ceil["sequential"]["tokens_per_s"], 1),
        "rollout_vs_vllm": round(one["tokens_per_s"] / ceil["tokens_per_s"], 3),
        "rollout_vs_sequential": round(one["tokens_per_s"] / ceil["sequential"]["tokens_per_s"], 1),
        "two_gpu_scaling": round(by_gpus[2]["tokens_per_s"] / one["tokens_per_s"], 3) if 2 in by_gpus else None,
        "model": "llama 7B-class (hidden 4096, 32 layers, 32 heads, ffn 11008), bf16, random weights "
                 "(load_format=dummy), SmolLM2 tokenizer (vocabulary 49,152)",
        "workload": {"rollouts": roll["args"]["rollouts"], "steps_per_rollout": roll["args"]["steps"],
                     "output_tokens_per_call": roll["args"]["out_tokens"], "calls": one["calls"],
                     "prompt_tokens": one["prompt_tokens"], "structured_outputs": "xgrammar, on"},
        "runs": sorted(by_gpus.values(), key=lambda r: r["gpus"]),
        "ceiling": ceil,
        "device": device,
        "command": "bench/device/README.md: python bench/gpu_vllm.py rollout --gpus 1; rollout --gpus 2; ceiling; report",
        "date": datetime.now(UTC).date().isoformat(),
    }
    RESULTS.write_text(json.dumps(result, indent=1) + "\n")
    for key in ("vllm_tokens_per_s", "rollout_tokens_per_s", "sequential_tokens_per_s", "rollout_vs_vllm",
                "rollout_vs_sequential", "two_gpu_scaling"):
        print(f"{key:26} {result[key]}")


def device_info() -> None:
    import torch

    info = {"gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "gpu_count": torch.cuda.device_count(), "torch": torch.__version__}
    for name in ("vllm", "ray", "transformers", "xgrammar"):
        try:
            info[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            info[name] = None
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "device.json").write_text(json.dumps(info, indent=1))
    print(info)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=["rollout", "ceiling", "report", "device"])
    parser.add_argument("--gpus", type=int, nargs="+", default=[1])
    parser.add_argument("--rollouts", type=int, default=768)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--out-tokens", type=int, default=192)
    parser.add_argument("--sequential", type=int, default=16, help="Calls timed one at a time for (c).")
    parser.add_argument("--from-dir", nargs="+", help="report: folders holding rollout-*.json, ceiling.json, device.json.")
    parser.add_argument("--dry-run", action="store_true", help="CPU: the instant responder instead of vLLM.")
    args = parser.parse_args()
    {"rollout": run_rollout, "ceiling": run_ceiling, "report": run_report, "device": lambda a: device_info()}[
        args.what
    ](args)


if __name__ == "__main__":
    main()
