"""LoRA SFT of a 7B-class llama on 2 GPUs through the project's own training entry point
(`autosafe_core.training.train` under torchrun): ZeRO-2 and ZeRO-3, against a single-GPU plain
transformers + peft loop doing the same work.

    python bench/finetune_gpu.py                  # the GPU machine (nvidia-h200-x2): all three, ~6 minutes
    python bench/finetune_gpu.py --variants zero2 --micro-batch 8 --checkpointing on   # one variant, other settings
    python bench/finetune_gpu.py --micro-batch auto --checkpointing auto   # the entry point's own defaults
    python bench/finetune_gpu.py --gpus 1 --variants zero2 --compile-layers --out X.json   # compiled layers, one GPU
    python bench/finetune_gpu.py --tiny           # here: a tiny llama on 2 CPU processes (gloo), to keep it working

Nothing is downloaded: the model is llama-2-7B's shape with random weights built from its config
(`load_format="dummy"` in the job), and the tokenizer is a word-level one built here (one token
per synthetic word, so lengths are exact), with a ChatML template. The examples are synthetic
agent chats: a system prompt of tool specs, a user turn with the history, a JSON-sized target;
every one is longer than the sequence, so after the entry point's left truncation each is
exactly `--seq` tokens (no padding) with the loss on its last ~150.

Measured: tokens/s per GPU (median over the timed steps, after `--warmup` steps; min-max spread
printed), peak GPU memory (torch's max allocated, rank 0), and model FLOPs utilisation as
../shared/BENCHMARKS.md defines it, for LoRA: (4N + 8 x layers x hidden x seq) FLOPs per token,
N = every parameter of the base model (embedding included), over 989 TFLOP/s per GPU (H100/H200
SXM dense bf16; also quoted against the measured 790 TFLOP/s matmul ceiling); recomputation
from gradient checkpointing is not counted. `speedup_vs_single_gpu_peft` is tokens/s per GPU of
the best 2-GPU variant over tokens/s of the plain single-GPU run with the same micro-batch,
accumulation, sequence and checkpointing.

The GPU machine has torch, transformers, peft, pyarrow and fsspec but no DeepSpeed or pydantic:
carry deepspeed (`pip wheel --no-deps deepspeed==0.19.8`), hjson, pydantic, pydantic-core,
annotated-types and typing-inspection as wheels (bench/device/README.md), then in one call:
`. bench/device/setup.sh; python3 bench/finetune_gpu.py`. Only the project's training imports
run there (torch, transformers, peft, deepspeed, pyarrow, fsspec, pydantic): no Prefect, no Ray.
NVLink multicast stays off: the NCCL_NVLS_ENABLE=0 family is set for every process started here.
Writes bench/results/finetune-gpu.json (finetune-gpu-tiny.json with --tiny), and a copy plus the
variants' logs to $OUT when it is set (the device tool brings those back), and prints a table last.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

RESULTS = REPO / "bench" / "results"
PEAK_BF16 = 989e12
"""Dense bf16 FLOP/s of an H100 or H200 SXM (datasheet)."""
MATMUL_CEILING = 790e12
"""The bf16 matrix-product rate measured on these machines (shared/BENCHMARKS.md)."""
NO_MULTICAST = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}
BASELINE = {
    "date": "2026-11-22",
    "setup": "plain script, llama 7B-class, LoRA r=16 all linear, seq 2048, micro-batch 8, gradient checkpointing",
    "peft_1gpu_tokens_per_s": 6660, "peft_1gpu_mfu": 0.21,
    "zero2_tokens_per_s_per_gpu": 8911, "zero2_mfu": 0.28,
    "zero3_tokens_per_s_per_gpu": 5925, "zero3_mfu": 0.19,
}  # fmt: skip

LLAMA_7B = dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                num_key_value_heads=32, vocab_size=32000, max_position_embeddings=4096)  # fmt: skip
TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=4, vocab_size=1000, max_position_embeddings=512)  # fmt: skip
SPECIALS = ["<unk>", "<s>", "<pad>", "<|im_start|>", "<|im_end|>"]
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


# -- the model directory and the data ----------------------------------------------------------


def model_dir(target: Path, shape: dict) -> Path:
    """config.json of a llama of `shape` and a word-level ChatML tokenizer covering its vocabulary."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, PreTrainedTokenizerFast

    words = ["system", "user", "assistant"] + [f"w{i}" for i in range(shape["vocab_size"] - len(SPECIALS) - 3)]
    vocab = {token: i for i, token in enumerate(SPECIALS + words)}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.add_special_tokens(SPECIALS)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, unk_token="<unk>", bos_token="<s>", eos_token="<|im_end|>", pad_token="<pad>"
    )
    tokenizer.chat_template = CHATML
    config = LlamaConfig(**shape, rms_norm_eps=1e-5, bos_token_id=vocab["<s>"], eos_token_id=vocab["<|im_end|>"],
                         pad_token_id=vocab["<pad>"], tie_word_embeddings=False, dtype="bfloat16")  # fmt: skip
    target.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(target)
    tokenizer.save_pretrained(target)
    return target


def synthetic_examples(path: Path, count: int, seq: int, vocab: int, seed: int = 0) -> Path:
    """`count` agent-like chats, each longer than `seq` tokens, as Parquet (messages, target)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = random.Random(seed)
    first_word = 3  # w0 is the first word after the specials and role names

    def text(n: int) -> str:
        return " ".join(f"w{rng.randrange(vocab - len(SPECIALS) - first_word)}" for _ in range(n))

    rows = []
    for _ in range(count):
        target = rng.randint(max(4, seq // 16), max(8, seq // 12))  # a JSON action: ~130-170 tokens at 2,048
        system = int(seq * 0.62)  # the toolkit specs
        user = seq - system - target + rng.randint(8, max(9, seq // 10))  # the instruction and history: overflows
        rows.append({"messages": [{"role": "system", "content": text(system)}, {"role": "user", "content": text(user)}],
                     "target": text(target)})  # fmt: skip
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def parameter_count(directory: Path) -> tuple[int, dict]:
    """N (every parameter of the base model) and its config, counted on the meta device."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(directory)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters()), config.to_dict()


# -- the variants ----------------------------------------------------------------------------------


def child_env(cpu: bool) -> dict[str, str]:
    env = {**os.environ, **NO_MULTICAST, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    env.setdefault("TORCH_CUDA_ARCH_LIST", "9.0")  # DeepSpeed's op builder cannot parse the image's "9.0a"
    if cpu:
        env["CUDA_VISIBLE_DEVICES"] = ""
        env.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # spinning OpenMP threads crawl on shared cores
    return env


def run_entry_point(
    name: str, stage: str, args: argparse.Namespace, work: Path, model: Path, data: Path
) -> tuple[list[dict], dict | None]:
    """One variant through torchrun and the project's entry point: its per-step rows, and the
    micro-batch and checkpointing its `auto` settings resolved to (None when nothing was auto)."""
    from autosafe_core.store.location import StorageConfig
    from autosafe_core.training.config import TrainingConfig, TrainJob, deepspeed_config

    output = work / name
    shutil.rmtree(output, ignore_errors=True)
    training = TrainingConfig(
        lora_rank=args.rank, lora_alpha=2 * args.rank, target_modules="all-linear", deepspeed=stage,
        max_seq_length=args.seq, micro_batch_size=args.micro_batch, gradient_accumulation_steps=args.accumulation,
        max_steps=args.warmup + args.steps, learning_rate=1e-4, warmup_ratio=0.0, save_steps=10**6,
        gradient_checkpointing={"on": True, "off": False}.get(args.checkpointing, "auto"), shuffle_buffer=64,
        processes=args.gpus, compile_layers=args.compile_layers,
    )  # fmt: skip
    ds_config = deepspeed_config(stage)
    ds_config["zero_optimization"].update(args.zero_override)
    job = TrainJob(training=training, base_model=str(model), load_format="dummy", data_uri=str(data),
                   output=StorageConfig(uri=str(output)), deepspeed_config=ds_config)  # fmt: skip
    job_file = work / f"{name}.json"
    job_file.write_text(job.model_dump_json())
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.gpus}",
               "-m", "autosafe_core.training.train", "--job", str(job_file)]  # fmt: skip
    _run(name, command, child_env(args.tiny), work)
    plan_file = output / "plan.json"  # written when anything was auto
    plan = json.loads(plan_file.read_text()) if plan_file.exists() else None
    if plan is not None:
        print(f"   {name}: auto resolved to {plan}", flush=True)
    return [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()], plan


def run_plain_peft(args: argparse.Namespace, work: Path, model: Path, data: Path) -> list[dict]:
    """The baseline: this script's own plain transformers + peft loop on one device."""
    rows = work / "peft_1gpu.jsonl"
    command = [sys.executable, str(Path(__file__).resolve()), "--plain-worker", "--model-dir", str(model),
               "--data", str(data), "--rows", str(rows), *_shared_flags(args)]  # fmt: skip
    env = child_env(args.tiny)
    if not args.tiny:
        env["CUDA_VISIBLE_DEVICES"] = env.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0] or "0"
    _run("peft_1gpu", command, env, work)
    return [json.loads(line) for line in rows.read_text().splitlines()]


def _shared_flags(args: argparse.Namespace) -> list[str]:
    # The plain loop has no memory planner: auto is its largest measured fit (4 on an H200), no checkpointing.
    micro = 4 if args.micro_batch == "auto" else args.micro_batch
    checkpointing = "off" if args.checkpointing == "auto" else args.checkpointing
    return ["--seq", str(args.seq), "--micro-batch", str(micro), "--accumulation", str(args.accumulation),
            "--rank", str(args.rank), "--warmup", str(args.warmup), "--steps", str(args.steps),
            "--checkpointing", checkpointing]  # fmt: skip


def _micro_batch(text: str) -> int | str:
    if text == "auto":
        return text
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("at least 1, or auto")
    return value


class VariantFailed(RuntimeError):
    """One variant's process failed; the others still run."""


def _run(name: str, command: list[str], env: dict[str, str], work: Path) -> None:
    print(f"== {name}: {shlex.join(command)}", flush=True)
    began = time.monotonic()
    log = work / f"{name}.log"
    with log.open("w") as out:
        done = subprocess.run(command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    print(f"   {name}: exit {done.returncode} after {time.monotonic() - began:.0f} s (log {log})", flush=True)
    if done.returncode != 0:
        print("".join(log.read_text().splitlines(keepends=True)[-40:]), flush=True)
        raise VariantFailed(f"{name} failed: exit {done.returncode}, log {log}")


def plain_worker(args: argparse.Namespace) -> None:
    """The single-device baseline loop: bf16 model, peft LoRA, torch AdamW, the same examples and shapes."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from autosafe_core.training.encoding import encode
    from autosafe_core.training.examples import FileSource
    from autosafe_core.training.train import collate

    device = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    tokenizer = AutoTokenizer.from_pretrained(args.model_dir)
    torch.manual_seed(0)
    with device:
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(args.model_dir), dtype=dtype)
    model.config.use_cache = False
    if args.checkpointing == "on":
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model = get_peft_model(model, LoraConfig(r=args.rank, lora_alpha=2 * args.rank, target_modules="all-linear",
                                             task_type="CAUSAL_LM"))  # fmt: skip
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-4, **({"fused": True} if device.type == "cuda" else {}))
    examples = iter(FileSource(args.data))
    out = Path(args.rows).open("w")
    for step in range(1, args.warmup + args.steps + 1):
        began = time.perf_counter()
        tokens = 0
        for _ in range(args.accumulation):
            batch = collate([encode(tokenizer, e.messages, e.target, args.seq)
                             for e in (next(examples) for _ in range(args.micro_batch))], tokenizer.pad_token_id)  # fmt: skip
            batch = {k: v.to(device) for k, v in batch.items()}
            loss = model(**batch).loss / args.accumulation
            loss.backward()
            tokens += int(batch["attention_mask"].sum())
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        value = loss.item() * args.accumulation  # waits for the device
        seconds = time.perf_counter() - began
        peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
        out.write(json.dumps({"step": step, "loss": value, "tokens": tokens, "seconds": seconds,
                              "tokens_per_s_per_device": tokens / seconds, "peak_memory_gb": peak}) + "\n")  # fmt: skip
        out.flush()


# -- figures ----------------------------------------------------------------------------------------


def figures(rows: list[dict], warmup: int, flops_per_token: float, devices: int, peak: float | None) -> dict:
    timed = [r["tokens_per_s_per_device"] for r in rows if r["step"] > warmup]
    speed = statistics.median(timed)
    mems = [r["peak_memory_gb"] for r in rows if r.get("peak_memory_gb") is not None]
    return {
        "devices": devices,
        "tokens_per_s_per_gpu": round(speed, 1),
        "tokens_per_s_spread": [round(min(timed), 1), round(max(timed), 1)],
        "timed_steps": len(timed),
        "step_seconds_median": round(statistics.median(r["seconds"] for r in rows if r["step"] > warmup), 4),
        "mfu": round(flops_per_token * speed / peak, 4) if peak else None,
        "mfu_vs_matmul_ceiling": round(flops_per_token * speed / MATMUL_CEILING, 4) if peak else None,
        "peak_mem_gb": round(max(mems), 2) if mems else None,
        "final_loss": rows[-1]["loss"],
    }


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for package in ("torch", "transformers", "peft", "deepspeed", "accelerate", "pyarrow"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = "absent"
    return found


def device_info() -> dict:
    import torch

    if not torch.cuda.is_available():
        from bench.machine import cpu_model

        return {"kind": "cpu", "name": cpu_model(), "count": os.cpu_count()}
    info = {"kind": "cuda", "name": torch.cuda.get_device_name(0), "count": torch.cuda.device_count()}
    try:
        info["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                        capture_output=True, text=True, timeout=30).stdout.split()[0]  # fmt: skip
    except (OSError, IndexError, subprocess.SubprocessError):
        pass
    return info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tiny", action="store_true", help="A tiny llama on 2 CPU processes (gloo).")
    parser.add_argument("--variants", default="zero2,zero3,peft", help="Any of zero2, zero3, peft (comma-separated).")
    parser.add_argument("--gpus", type=int, default=2, help="Processes of the entry-point variants.")
    parser.add_argument("--seq", type=int, default=None, help="Tokens per example (default 2048; 128 with --tiny).")
    parser.add_argument("--micro-batch", type=_micro_batch, default=4, help="Examples per GPU per pass, or auto.")
    parser.add_argument("--accumulation", type=int, default=2)
    parser.add_argument("--rank", type=int, default=16, help="LoRA rank (alpha = 2 x rank), every linear layer.")
    parser.add_argument("--checkpointing", choices=("on", "off", "auto"), default="off", help="Gradient checkpointing.")
    parser.add_argument("--warmup", type=int, default=3, help="Steps not timed.")
    parser.add_argument("--steps", type=int, default=10, help="Timed steps.")
    parser.add_argument("--compile-layers", action="store_true", help="torch.compile each decoder layer (entry-point variants).")
    parser.add_argument("--zero-override", action="append", default=[], metavar="KEY=JSON",
                        help="Set zero_optimization.KEY in the shipped configs for this run (repeatable), "
                        "e.g. stage3_module_granularity_threshold=3000000.")  # fmt: skip
    parser.add_argument("--peak-tflops", type=float, default=None, help="Peak bf16 TFLOP/s per GPU (default: 989 on H100/H200).")
    parser.add_argument("--out", type=Path, default=None, help="Result JSON (default bench/results/finetune-gpu[-tiny].json).")
    parser.add_argument("--work", type=Path, default=None, help="Scratch folder (default: a temporary one).")
    parser.add_argument("--plain-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--rows", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.seq = args.seq or (128 if args.tiny else 2048)
    args.zero_override = {k: json.loads(v) for k, _, v in (item.partition("=") for item in args.zero_override)}
    if args.plain_worker:
        plain_worker(args)
        return

    # Checkpoints and the model directory stay out of $OUT (the device tool would carry them back).
    work = args.work or Path(tempfile.mkdtemp(prefix="finetune-gpu-"))
    work.mkdir(parents=True, exist_ok=True)
    shape = TINY if args.tiny else LLAMA_7B
    model = model_dir(work / "model", shape)
    per_step = args.gpus * (8 if args.micro_batch == "auto" else args.micro_batch) * args.accumulation  # auto: at most 8
    data = synthetic_examples(work / "examples.parquet", per_step * (args.warmup + args.steps) + 64, args.seq, shape["vocab_size"])
    n, config = parameter_count(model)
    layers, hidden = config["num_hidden_layers"], config["hidden_size"]
    flops_per_token = 4 * n + 8 * layers * hidden * args.seq
    info = device_info()
    peak = args.peak_tflops * 1e12 if args.peak_tflops else (PEAK_BF16 if any(g in info["name"] for g in ("H100", "H200")) else None)
    if info["kind"] == "cuda" and info["count"] < args.gpus:
        raise SystemExit(f"{args.gpus} GPUs asked for, {info['count']} here")

    results: dict[str, dict] = {}
    resolved: dict[str, dict] = {}  # per entry-point variant, what its auto settings resolved to
    failed: dict[str, str] = {}
    for variant in [v.strip() for v in args.variants.split(",") if v.strip()]:
        if variant not in ("zero2", "zero3", "peft"):
            raise SystemExit(f"unknown variant {variant!r}: zero2, zero3, peft")
        try:
            if variant == "peft":
                rows = run_plain_peft(args, work, model, data)
                results["peft_1gpu"] = figures(rows, args.warmup, flops_per_token, 1, peak)
            else:
                rows, plan = run_entry_point(variant, variant, args, work, model, data)
                results[variant] = figures(rows, args.warmup, flops_per_token, args.gpus, peak)
                if plan is not None:
                    resolved[variant] = plan
        except VariantFailed as exc:  # one variant out of memory must not cost the others' figures
            failed[variant] = str(exc)

    best = max((results[v] for v in ("zero2", "zero3") if v in results), key=lambda r: r["tokens_per_s_per_gpu"], default=None)
    plain = results.get("peft_1gpu")
    summary = {
        "benchmark": "finetune_gpu",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": shlex.join([sys.executable, "bench/finetune_gpu.py", *sys.argv[1:]]),
        "device": info,
        "versions": versions(),
        "model": {"shape": "tiny" if args.tiny else "llama-2-7B", "parameters": n, "layers": layers, "hidden": hidden,
                  "vocab": config["vocab_size"], "weights": "random, from the config (load_format dummy)"},  # fmt: skip
        "settings": {"seq": args.seq, "micro_batch": args.micro_batch, "accumulation": args.accumulation,
                     "lora_rank": args.rank, "lora_targets": "all-linear", "gradient_checkpointing": args.checkpointing,
                     "compile_layers": args.compile_layers,
                     "precision": "bf16" if info["kind"] == "cuda" else "fp32", "optimizer": "torch AdamW (fused on CUDA)",
                     "deepspeed_configs": "infra/deepspeed/zero2.json, zero3.json", "zero_override": args.zero_override,
                     "plain_peft": "bf16 base, peft's default float32 adapter weights, torch AdamW (fused), no DeepSpeed",
                     "warmup_steps": args.warmup, "timed_steps": args.steps},  # fmt: skip
        "definitions": {
            "flops_per_token": "4N + 8 x layers x hidden x seq (LoRA: frozen weights get no weight gradients); "
            "N = every base-model parameter, embedding included; recomputation not counted",
            "mfu": f"flops_per_token x tokens/s per GPU / {PEAK_BF16 / 1e12:.0f} TFLOP/s (H100/H200 SXM dense bf16)",
            "tokens_per_s_per_gpu": "median over the timed steps of (non-padding tokens of a step, all GPUs) / step wall time / GPUs",
            "speedup_vs_single_gpu_peft": "tokens/s per GPU of the best 2-GPU variant / tokens/s of the plain 1-GPU peft loop",
        },
        "flops_per_token": flops_per_token,
        "variants": results,
        "auto_resolved": resolved,
        "failed": failed,
        "mfu": best["mfu"] if best else None,
        "mfu_zero3": results.get("zero3", {}).get("mfu"),
        "tokens_per_s_per_gpu": best["tokens_per_s_per_gpu"] if best else None,
        "peak_mem_gb": best["peak_mem_gb"] if best else None,
        "speedup_vs_single_gpu_peft": (
            round(best["tokens_per_s_per_gpu"] / plain["tokens_per_s_per_gpu"], 3) if best and plain else None
        ),
        "baseline": BASELINE,
    }
    out = args.out or RESULTS / ("finetune-gpu-tiny.json" if args.tiny else "finetune-gpu.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=2) + "\n")
    if os.environ.get("OUT"):
        shutil.copy(out, Path(os.environ["OUT"]) / out.name)
        for log in work.glob("*.log"):
            shutil.copy(log, Path(os.environ["OUT"]) / log.name)

    print(f"\n{summary['model']['shape']}, N = {n / 1e9:.3f} B, seq {args.seq}, micro-batch {args.micro_batch} x "
          f"{args.accumulation}, LoRA r={args.rank}, checkpointing {args.checkpointing}; {info['name']}")  # fmt: skip
    print(f"{'variant':<11} {'GPUs':>4} {'tokens/s/GPU':>13} {'spread':>17} {'MFU':>6} {'MFU/790':>8} {'peak GB':>8}")
    for name, r in results.items():
        mfu = "-" if r["mfu"] is None else f"{r['mfu']:.3f}"
        ceiling = "-" if r["mfu_vs_matmul_ceiling"] is None else f"{r['mfu_vs_matmul_ceiling']:.3f}"
        spread = f"{r['tokens_per_s_spread'][0]:,.0f}-{r['tokens_per_s_spread'][1]:,.0f}"
        mem = "-" if r["peak_mem_gb"] is None else f"{r['peak_mem_gb']:.1f}"
        print(f"{name:<11} {r['devices']:>4} {r['tokens_per_s_per_gpu']:>13,.0f} {spread:>17} {mfu:>6} {ceiling:>8} {mem:>8}")
    for name, reason in failed.items():
        print(f"{name:<11} FAILED: {reason}")
    print(f"speedup vs single-GPU peft (per GPU): {summary['speedup_vs_single_gpu_peft']}; wrote {out}")


if __name__ == "__main__":
    main()
