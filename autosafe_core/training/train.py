"""The training entry point: one `TrainJob` in, a LoRA adapter (or a full model) out, on any number
of processes.

    torchrun --nproc_per_node 8 -m autosafe_core.training.train --job job.json
    deepspeed --num_gpus 8 --module autosafe_core.training.train --job job.json
    python -m autosafe_core.training.train --job job.json          # one process (a CPU: gloo)

`train(job)` is the same thing inside a process whose torch.distributed group is already up (a
Ray Train worker). Each process loads the base model (under ZeRO-3 partitioned while it loads),
adds LoRA (peft) unless the job tunes every weight, and hands it to DeepSpeed with a torch AdamW,
the job's schedule and the ZeRO config; bf16 and gradient checkpointing on GPUs. It streams its
share of the examples from storage, tokenized with the loss on the target only, and logs loss and
throughput per optimizer step: one JSON line on stdout and a row of `metrics.jsonl`. Checkpoints
(trainable weights and optimizer only) go to the job's folder; a job started again resumes from
the newest one, and a finished job returns its result without training.

Imports torch, transformers, peft, deepspeed, pyarrow, fsspec and pydantic only: no orchestration.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import os
import queue
import shutil
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fsspec
import torch

from autosafe_core.ots import stable_id
from autosafe_core.store.records import TrainingStepRow
from autosafe_core.training.checkpoints import METRICS, PLAN, RESULT, JobFolder, tag_of
from autosafe_core.training.config import CPU_STEPS, TrainJob
from autosafe_core.training.encoding import IGNORE, Encoded, encode
from autosafe_core.training.examples import FileSource, RunSource
from autosafe_core.training.stream import Mix, global_stream, plan_mix, rank_stream, total_steps

STEP_EVENT = "autosafe-train-step"
"""Prefix of the per-step JSON lines on stdout (rank 0)."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m autosafe_core.training.train", description=__doc__.split("\n")[0])
    parser.add_argument("--job", required=True, help="The TrainJob as JSON: a path or an fsspec URI.")
    # The deepspeed launcher passes --local_rank; LOCAL_RANK in the environment says the same.
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    with fsspec.open(args.job, "r") as f:
        job = TrainJob.read(f.read())
    train(job)
    return 0


def train(job: TrainJob) -> dict[str, Any]:
    """Run (or resume, or find finished) the job; returns its result.json content on every rank."""
    _quiet()
    rank, world, local_rank, device = _distributed()
    folder = JobFolder(job.output, Path(tempfile.mkdtemp(prefix=f"autosafe-train-{job.train_id}-")))
    done = folder.read_json(RESULT)
    if done is not None:
        shutil.rmtree(folder.scratch, ignore_errors=True)
        return done
    started = time.perf_counter()
    t = job.training
    on_gpu = device.type == "cuda"
    bf16 = t.precision == "bf16" or (t.precision == "auto" and on_gpu)
    micro, checkpointing = _plan(job, device, rank, world, folder)
    ds_config = _fill_deepspeed(job, world, bf16, micro)

    safe = RunSource(job.data_run, job.split) if job.data_run is not None else FileSource(job.data_uri)
    general = FileSource(t.general_data) if t.general_data else None
    mix = plan_mix(safe.count(), general.count() if general else 0, t.general_ratio)
    if mix.safe == 0:
        raise ValueError(f"{safe.name}: no examples to train on")
    per_step = world * micro * t.gradient_accumulation_steps
    steps = total_steps(t.max_steps, t.epochs, mix, per_step, not on_gpu, CPU_STEPS)

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(job.base_model)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    torch.manual_seed(t.seed)
    model, keep_alive = _model(job, device, torch.bfloat16 if bf16 else torch.float32, ds_config, checkpointing)
    engine = _engine(job, model, ds_config, steps)

    start_step, rows = _resume(engine, folder, rank, local_rank)
    stream = rank_stream(
        global_stream(safe, general, mix, t.shuffle_buffer, t.seed), rank, world, skip=start_step * per_step
    )
    batches = MicroBatches(stream, tokenizer, t.max_seq_length, micro, mix.total)
    ahead = Prefetch(batches, pad_id, pin=on_gpu, depth=2 * t.gradient_accumulation_steps)
    if rank == 0:
        _log(
            f"job {job.train_id}: {mix.safe} safe + {mix.general} general examples per epoch, {steps} steps of "
            f"{per_step} examples on {world} {device.type} process(es), ZeRO-{job.zero_stage}, "
            f"{'bf16' if bf16 else 'fp32'}, checkpointing {'on' if checkpointing else 'off'}"
            + (f", resuming after step {start_step}" if start_step else "")
        )
    for step in range(start_step + 1, steps + 1):
        row = _step(engine, ahead, t.gradient_accumulation_steps, device, world)
        if rank == 0:
            row = row.model_copy(
                update={"id": stable_id(job.train_id, step), "train_id": job.train_id, "step": step,
                        "epoch": step * per_step / mix.total}  # fmt: skip
            )
            rows.append(row)
            print(f"{STEP_EVENT} {row.model_dump_json()}", flush=True)
        if step % t.save_steps == 0 or step == steps:
            _checkpoint(engine, folder, step, rows, t.keep_checkpoints, rank, local_rank)

    ahead.close()
    name = "adapter" if t.method == "lora" else "model"
    uri = _save_final(engine, job, tokenizer, folder, name, rank)
    result = {
        "train_id": job.train_id,
        "status": "done",
        "method": t.method,
        name: uri,
        "base_model": job.base_model,
        "steps": steps,
        "resumed_from": start_step or None,
        "devices": world,
        "device": device.type,
        "examples": {"safe": mix.safe, "general": mix.general},
        "dropped_on_rank0": batches.dropped,
        "seconds": round(time.perf_counter() - started, 3),
    }
    if rank == 0:
        folder.write_json(result, RESULT)
    _barrier()
    shutil.rmtree(folder.scratch, ignore_errors=True)
    del keep_alive
    return result


# -- processes and precision ---------------------------------------------------------------


def _distributed() -> tuple[int, int, int, torch.device]:
    """(rank, world size, local rank, device) with the process group up: NCCL on GPUs, gloo on a CPU."""
    import deepspeed

    on_gpu = torch.cuda.is_available()
    if not torch.distributed.is_initialized() and "RANK" not in os.environ:
        # Started bare (python -m ...): a group of one, on a free loopback port.
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1")
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    # Ray Train may show each worker only its own GPU: then local rank 1 is device 0.
    device = torch.device("cuda", local_rank % torch.cuda.device_count()) if on_gpu else torch.device("cpu")
    if on_gpu:
        torch.cuda.set_device(device)  # before NCCL starts, so each process's communicator is on its own GPU
    deepspeed.init_distributed(dist_backend="nccl" if on_gpu else "gloo", verbose=False)
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    return rank, world, local_rank, device


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _barrier() -> None:
    torch.distributed.barrier()


def _quiet() -> None:
    """DeepSpeed logs every engine detail at INFO; keep warnings."""
    for name in ("DeepSpeed", "deepspeed"):
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        from deepspeed.utils import logger

        logger.setLevel(logging.WARNING)
    except ImportError:
        pass


def _log(message: str) -> None:
    print(f"autosafe-train: {message}", flush=True)


def _fill_deepspeed(job: TrainJob, world: int, bf16: bool, micro: int) -> dict[str, Any]:
    """The job's DeepSpeed config with its 'auto' (or missing) values taken from the training config."""
    t = job.training
    config = copy.deepcopy(job.deepspeed_config)
    wanted = {
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": t.gradient_accumulation_steps,
        "train_batch_size": micro * t.gradient_accumulation_steps * world,
        "gradient_clipping": t.max_grad_norm,
    }
    for key, value in wanted.items():
        given = config.get(key, "auto")
        if given == "auto":
            config[key] = value
        elif given != value:
            raise ValueError(f"deepspeed config {key} is {given!r}, but the training config makes it {value!r}")
    section = config.setdefault("bf16", {})
    if section.get("enabled", "auto") == "auto":
        section["enabled"] = bf16
    config.setdefault("fp16", {"enabled": False})
    # The optimizer is torch's AdamW (DeepSpeed's own needs a compiled op): ZeRO must accept it.
    config["zero_allow_untested_optimizer"] = True
    config.setdefault("steps_per_print", 10**9)
    return config


def _plan(job: TrainJob, device: torch.device, rank: int, world: int, folder: JobFolder) -> tuple[int, bool]:
    """(micro-batch, checkpointing): the job's settings, with auto resolved for this hardware.

    On a CPU auto is 1 and off; on a GPU it is what the memory estimate says fits
    (training/memory.py). A resumed job keeps the plan its first start wrote (`PLAN`), so
    the data it skips is the data it saw, whatever GPUs it resumes on.
    """
    t = job.training
    micro = None if t.micro_batch_size == "auto" else t.micro_batch_size
    ckpt = None if t.gradient_checkpointing == "auto" else t.gradient_checkpointing
    if micro is not None and ckpt is not None:
        return micro, ckpt
    kept = folder.read_json(PLAN)
    if kept is not None:
        return kept["micro_batch_size"], kept["gradient_checkpointing"]
    if device.type != "cuda":
        micro, ckpt = micro or 1, bool(ckpt)
    else:
        from autosafe_core.training.memory import choose, model_shape, peak_bytes

        shape = model_shape(job.base_model)
        zero = job.deepspeed_config.get("zero_optimization", {})
        sizes = dict(seq=t.max_seq_length, processes=world, zero_stage=job.zero_stage, full=t.method == "full",
                     live_parameters=float(zero.get("stage3_max_live_parameters", 3e9)))  # fmt: skip
        gpu = torch.cuda.get_device_properties(device).total_memory
        micro, ckpt = choose(shape, gpu, micro, ckpt, **sizes)
        if rank == 0:
            need = peak_bytes(shape, micro_batch=micro, checkpointing=ckpt, **sizes) / 2**30
            _log(f"auto: micro-batch {micro}, checkpointing {'on' if ckpt else 'off'} "
                 f"(about {need:.0f} of {gpu / 2**30:.0f} GiB per GPU)")  # fmt: skip
    if rank == 0:
        folder.write_json({"micro_batch_size": micro, "gradient_checkpointing": ckpt}, PLAN)
    return micro, ckpt


# -- the model -----------------------------------------------------------------------------


def _model(
    job: TrainJob, device: torch.device, dtype: torch.dtype, ds_config: dict[str, Any], checkpointing: bool
) -> tuple[Any, Any]:
    """The base model, with LoRA unless the job is full fine-tuning; and what must outlive its loading."""
    from transformers import AutoConfig, AutoModelForCausalLM

    keep_alive = None
    if job.zero_stage == 3:
        from transformers.integrations import HfDeepSpeedConfig

        # While this object lives, transformers builds and loads the model partitioned (zero.Init):
        # no process ever holds all of a model that only the group can hold.
        keep_alive = HfDeepSpeedConfig(ds_config)
    if job.load_format == "dummy":
        config = AutoConfig.from_pretrained(job.base_model)
        if keep_alive is None:
            with device:
                model = AutoModelForCausalLM.from_config(config, dtype=dtype)
        else:
            model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    else:
        kwargs: dict[str, Any] = {"dtype": dtype}
        if keep_alive is None and device.type == "cuda":
            kwargs["device_map"] = {"": device}
        model = AutoModelForCausalLM.from_pretrained(job.base_model, **kwargs)
    if keep_alive is None:
        model.to(device)
    model.config.use_cache = False
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    t = job.training
    if t.method == "lora":
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(
            r=t.lora_rank,
            lora_alpha=t.lora_alpha,
            lora_dropout=t.lora_dropout,
            target_modules=t.target_modules,
            task_type="CAUSAL_LM",
        )
        model = get_peft_model(model, lora)
        if keep_alive is None:
            model.to(device=device, dtype=dtype)
        else:
            # peft keeps adapters in float32 beside a bf16 base; partitioned base weights must not be
            # touched, so only the (whole) adapter weights are cast: bf16 LoRA math, fp32 master copies
            # in the optimizer.
            for param in model.parameters():
                if param.requires_grad and not hasattr(param, "ds_id"):
                    param.data = param.data.to(device=device, dtype=dtype)
    if t.compile_layers:
        _log(f"compiled {compile_layers(model)} decoder layers")
    return model, keep_alive


def compile_layers(model: Any) -> int:
    """torch.compile each decoder layer in place (the classes the model's `_no_split_modules`
    names); the layers share one compiled graph, their weights its inputs. How many."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    kinds = set(getattr(base, "_no_split_modules", None) or ())
    layers = [m for m in base.modules() if type(m).__name__ in kinds]
    if not layers:
        raise ValueError(f"training.compile_layers: {type(base).__name__} names no decoder layer class to compile")
    for layer in layers:
        layer.compile()
    return len(layers)


def _engine(job: TrainJob, model: Any, ds_config: dict[str, Any], steps: int) -> Any:
    import deepspeed
    from transformers import get_scheduler

    t = job.training
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            # Full fine-tuning: no decay on norms and biases; LoRA matrices all decay alike.
            (no_decay if param.ndim < 2 and t.method == "full" else decay).append(param)
    groups = [{"params": decay, "weight_decay": t.weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    fused = {"fused": True} if torch.cuda.is_available() else {}
    optimizer = torch.optim.AdamW(groups, lr=t.learning_rate, betas=(0.9, 0.999), eps=1e-8, **fused)
    warmup = round(t.warmup_ratio * steps)  # a short run (the CPU quickstart's 8 steps) wastes none at lr 0

    def schedule(opt: Any) -> Any:
        return get_scheduler(t.lr_scheduler, opt, num_warmup_steps=warmup, num_training_steps=steps)

    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=schedule, config=ds_config)
    return engine


# -- data ------------------------------------------------------------------------------------


class MicroBatches:
    """Lists of `size` encoded examples from this rank's stream; counts examples dropped as too long."""

    def __init__(self, stream: Iterator[Any], tokenizer: Any, max_length: int, size: int, epoch: int):
        self.stream, self.tokenizer, self.max_length, self.size = stream, tokenizer, max_length, size
        self.epoch = epoch
        self.dropped = 0
        self._dropped_in_a_row = 0

    def __iter__(self) -> MicroBatches:
        return self

    def __next__(self) -> list[Encoded]:
        batch: list[Encoded] = []
        while len(batch) < self.size:
            example = next(self.stream)  # the stream repeats its epochs: it never ends
            encoded = encode(self.tokenizer, example.messages, example.target, self.max_length)
            if encoded is None:
                self.dropped += 1
                self._dropped_in_a_row += 1
                if self._dropped_in_a_row > self.epoch:
                    raise ValueError(f"every example's target is longer than max_seq_length ({self.max_length})")
            else:
                self._dropped_in_a_row = 0
                batch.append(encoded)
        return batch


class Prefetch:
    """Collated micro-batches made ahead on a thread, so reading and tokenizing overlap the device's work."""

    def __init__(self, batches: MicroBatches, pad_id: int, pin: bool, depth: int):
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=max(2, depth))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._fill, args=(batches, pad_id, pin), name="prefetch", daemon=True)
        self._thread.start()

    def _fill(self, batches: MicroBatches, pad_id: int, pin: bool) -> None:
        try:
            for batch in batches:
                if self._stop.is_set():
                    return
                tensors = collate(batch, pad_id)
                counts = (int(tensors["attention_mask"].sum()), sum(e.target_tokens for e in batch))
                if bool(tensors["attention_mask"].all()):
                    # No padding: without a mask the model takes its causal fast path (and never has to
                    # look at the mask on the device to find that out).
                    del tensors["attention_mask"]
                self._queue.put(({k: v.pin_memory() for k, v in tensors.items()} if pin else tensors, counts))
        except BaseException as exc:  # handed to the training loop, which raises it there
            self._queue.put(exc)

    def __next__(self) -> tuple[dict[str, torch.Tensor], tuple[int, int]]:
        """Tensors of one micro-batch, and its (tokens, target tokens)."""
        item = self._queue.get()
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self) -> None:
        """Stop the thread: it finishes the batch in hand and sees the flag (the stream has no end)."""
        self._stop.set()
        while self._thread.is_alive():
            try:
                self._queue.get(timeout=0.1)
            except queue.Empty:
                pass


def collate(batch: list[Encoded], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded input ids, attention mask and labels (IGNORE on padding) of one micro-batch."""
    width = max(len(e.input_ids) for e in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
    attention = torch.zeros((len(batch), width), dtype=torch.long)
    for i, e in enumerate(batch):
        n = len(e.input_ids)
        input_ids[i, :n] = torch.tensor(e.input_ids)
        labels[i, :n] = torch.tensor(e.labels)
        attention[i, :n] = 1
    return {"input_ids": input_ids, "attention_mask": attention, "labels": labels}


# -- one optimizer step --------------------------------------------------------------------


def _step(engine: Any, batches: Prefetch, accumulation: int, device: torch.device, world: int) -> TrainingStepRow:
    """`accumulation` micro-batches forward and backward, one optimizer step; its figures over all ranks."""
    began = time.perf_counter()
    learning_rate = float(engine.get_lr()[0])  # the one this step's update uses; the scheduler moves on after it
    loss_sum = torch.zeros((), device=device, dtype=torch.float32)
    tokens = targets = 0
    for _ in range(accumulation):
        tensors, (n_tokens, n_targets) = next(batches)
        batch = {k: v.to(device, non_blocking=True) for k, v in tensors.items()}
        loss = engine(**batch).loss
        engine.backward(loss)
        engine.step()
        loss_sum += loss.detach().float()
        tokens += n_tokens
        targets += n_targets
    figures = torch.stack([loss_sum.double() / accumulation, torch.tensor(float(tokens), dtype=torch.float64, device=device),
                           torch.tensor(float(targets), dtype=torch.float64, device=device)])  # fmt: skip
    torch.distributed.all_reduce(figures)
    loss_mean, total_tokens, total_targets = figures.tolist()
    loss_mean /= world
    if not math.isfinite(loss_mean):
        raise FloatingPointError(f"loss is {loss_mean} at step {engine.global_steps}: stopping")
    seconds = time.perf_counter() - began  # tolist() above waited for the device
    grad_norm = engine.get_global_grad_norm()
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return TrainingStepRow(
        id="", train_id="", step=1, epoch=0.0,
        loss=loss_mean,
        learning_rate=learning_rate,
        grad_norm=float(grad_norm) if grad_norm is not None and math.isfinite(float(grad_norm)) else None,
        tokens=int(total_tokens),
        target_tokens=int(total_targets),
        seconds=seconds,
        tokens_per_s=total_tokens / seconds,
        tokens_per_s_per_device=total_tokens / seconds / world,
        devices=world,
        peak_memory_gb=peak,
    )  # fmt: skip


# -- checkpoints and the result ----------------------------------------------------------------


def _resume(engine: Any, folder: JobFolder, rank: int, local_rank: int) -> tuple[int, list[TrainingStepRow]]:
    """The step of the newest checkpoint (0 without one), loaded into `engine`, and the metrics up to it."""
    latest = folder.latest()
    if latest is None:
        return 0, []
    tag, step = latest["tag"], int(latest["step"])
    if local_rank == 0:
        folder.download_checkpoint(tag)
    _barrier()
    path, _ = engine.load_checkpoint(folder.checkpoint_dir(), tag=tag, load_module_strict=False)
    if path is None:
        raise RuntimeError(f"checkpoint {tag} in {folder.uri()} could not be loaded")
    rows = []
    if rank == 0:
        rows = [TrainingStepRow.model_validate_json(line) for line in folder.read_lines(METRICS) if line.strip()]
        rows = [r for r in rows if r.step <= step]
    return step, rows


def _checkpoint(
    engine: Any, folder: JobFolder, step: int, rows: list[TrainingStepRow], keep: int, rank: int, local_rank: int
) -> None:
    tag = tag_of(step)
    # Frozen base weights are the base model's: a checkpoint holds what training changed.
    engine.save_checkpoint(folder.checkpoint_dir(), tag=tag, exclude_frozen_parameters=True)
    _barrier()
    if local_rank == 0:
        folder.upload_checkpoint(tag)
    _barrier()
    if rank == 0:
        folder.write_lines([r.model_dump_json() for r in rows], METRICS)
        folder.commit_checkpoint(tag, step, keep)
    _barrier()


def _save_final(engine: Any, job: TrainJob, tokenizer: Any, folder: JobFolder, name: str, rank: int) -> str:
    """The adapter (or full model) with the tokenizer, gathered on rank 0 and published as `name`."""
    module = engine.module
    lora = job.training.method == "lora"
    params = [(n, p) for n, p in module.named_parameters() if p.requires_grad or not lora]
    state: dict[str, torch.Tensor] = {}
    if job.zero_stage == 3:
        import deepspeed

        # Gathered a few at a time: a full model need never be whole on one device.
        for i in range(0, len(params), 64):
            chunk = params[i : i + 64]
            with deepspeed.zero.GatheredParameters([p for _, p in chunk], modifier_rank=None):
                if rank == 0:
                    state.update({n: p.detach().to("cpu", copy=True) for n, p in chunk})
    elif rank == 0:
        state = {n: p.detach().to("cpu", copy=True) for n, p in params}
    uri = ""
    if rank == 0:
        local = folder.scratch / name
        module.save_pretrained(str(local), state_dict=state, safe_serialization=True)
        tokenizer.save_pretrained(str(local))
        uri = folder.publish_dir(local, name)
    box = [uri]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def ray_worker(config: dict[str, Any]) -> None:
    """Ray Train's `train_loop_per_worker`: the job's JSON under "job"; Ray has set up the process group."""
    train(TrainJob.read(config["job"]))


if __name__ == "__main__":
    sys.exit(main())
