"""The training entry point on 2 processes (gloo): DeepSpeed ZeRO-2 and ZeRO-3 LoRA training of a
tiny llama built from a config, under torchrun and under the deepspeed launcher.

On a repeated batch the loss falls; the saved adapter reloads through the transformers backend,
generates, and makes the target likelier than the base model does; a job restarted from an
earlier checkpoint reproduces the uninterrupted job's losses.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from transformers import AutoTokenizer, LlamaForCausalLM

from autosafe_core.llm.base import ChatRequest, Message, SamplingParams
from autosafe_core.llm.registry import ModelSpec
from autosafe_core.llm.transformers_backend import TransformersChatModel
from autosafe_core.store import StorageConfig
from autosafe_core.training.checkpoints import CHECKPOINTS, LATEST, METRICS, RESULT
from autosafe_core.training.config import TrainingConfig, TrainJob, deepspeed_config
from autosafe_core.training.encoding import encode
from autosafe_core.training.train import collate
from tests.support.tiny_llama import tiny_llama_dir

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
TARGET = '{"thought": "Deleting cannot be undone.", "tool": "final_answer", "answer": "Shall I list the files first?"}'
EXAMPLES = [
    {"messages": [{"role": "system", "content": "You are a careful agent."}, {"role": "user", "content": f"Clear /tmp/{i}"}],
     "target": TARGET}
    for i in range(4)
]  # fmt: skip
"""Exactly one step's worth on 2 processes x micro-batch 2: every step sees the same batch."""


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("train")
    tiny_llama_dir(root / "base")
    (root / "data.jsonl").write_text("".join(json.dumps(e) + "\n" for e in EXAMPLES))
    return root


def job_file(root: Path, name: str, stage: str, **training) -> Path:
    settings = {"lora_rank": 8, "learning_rate": 1e-2, "warmup_ratio": 0.0, "micro_batch_size": 2, "max_steps": 8,
                "save_steps": 4, "keep_checkpoints": 3, **training}  # fmt: skip
    job = TrainJob(
        training=TrainingConfig(**settings),
        base_model=str(root / "base"),
        data_uri=str(root / "data.jsonl"),
        output=StorageConfig(uri=str(root / name)),
        deepspeed_config=deepspeed_config(stage),
    )
    path = root / f"{name}.json"
    path.write_text(job.model_dump_json())
    return path


def launch(command: list[str], job: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_WAIT_POLICY": "PASSIVE"}  # as flows/finetune.py starts it
    done = subprocess.run([*command, "--job", str(job)], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
            "-m", "autosafe_core.training.train"]  # fmt: skip
DEEPSPEED = [str(Path(sys.executable).parent / "deepspeed"), "--num_gpus=2", "--module", "autosafe_core.training.train"]


def metrics(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / METRICS).read_text().splitlines()]


@pytest.fixture(scope="module")
def zero2(workspace) -> Path:
    launch(TORCHRUN, job_file(workspace, "zero2", "zero2"))
    return workspace / "zero2"


def test_zero2_on_two_processes_lowers_the_loss_of_a_repeated_batch(zero2):
    rows = metrics(zero2)
    assert [r["step"] for r in rows] == list(range(1, 9))
    assert {r["devices"] for r in rows} == {2} and len({r["tokens"] for r in rows}) == 1, "the same batch every step"
    losses = [r["loss"] for r in rows]
    print("zero2 losses", [round(x, 3) for x in losses])
    assert losses[-1] < 0.8 * losses[0] and losses[-1] == min(losses)
    result = json.loads((zero2 / RESULT).read_text())
    assert result["status"] == "done" and result["steps"] == 8 and result["devices"] == 2
    assert result["adapter"] == str(zero2 / "adapter")


def test_the_adapter_reloads_generates_and_makes_the_target_likelier(zero2, workspace):
    base_dir, adapter = workspace / "base", zero2 / "adapter"
    tuned = TransformersChatModel.from_spec(ModelSpec(model=str(base_dir), adapter=str(adapter), options={"device": "cpu"}))
    request = ChatRequest(messages=tuple(Message(**m) for m in EXAMPLES[0]["messages"]), sampling=SamplingParams(max_tokens=12))
    (completion,) = asyncio.run(tuned.complete([request]))
    asyncio.run(tuned.aclose())
    assert completion.ok and completion.completion_tokens > 0 and tuned.model_id.endswith("+adapter")

    tokenizer = AutoTokenizer.from_pretrained(adapter)
    batch = collate([encode(tokenizer, EXAMPLES[0]["messages"], TARGET, 512)], tokenizer.pad_token_id)
    base = LlamaForCausalLM.from_pretrained(base_dir).eval()
    with torch.no_grad():
        before = base(**batch).loss.item()
        after = PeftModel.from_pretrained(base, adapter).eval()(**batch).loss.item()
    assert after < 0.8 * before, (before, after)


def test_a_job_restarted_from_an_earlier_checkpoint_reproduces_the_uninterrupted_losses(zero2, workspace):
    again = workspace / "zero2-again"
    shutil.copytree(zero2, again)
    (again / RESULT).unlink()
    shutil.rmtree(again / "adapter")
    (again / CHECKPOINTS / LATEST).write_text(json.dumps({"tag": "step-00000004", "step": 4}))

    done = launch(TORCHRUN, job_file(workspace, "zero2-again", "zero2"))

    assert "resuming after step 4" in done.stdout
    assert [json.loads(line.split(" ", 1)[1])["step"] for line in done.stdout.splitlines()
            if line.startswith("autosafe-train-step")] == [5, 6, 7, 8]  # fmt: skip
    first, resumed = metrics(zero2), metrics(again)
    assert [r["step"] for r in resumed] == list(range(1, 9))
    assert [r["loss"] for r in resumed] == pytest.approx([r["loss"] for r in first], rel=1e-5)


def test_zero3_under_the_deepspeed_launcher_trains_and_saves_the_whole_adapter(workspace, zero2):
    launch(DEEPSPEED, job_file(workspace, "zero3", "zero3", max_steps=4, save_steps=2))
    rows = metrics(workspace / "zero3")
    assert [r["step"] for r in rows] == [1, 2, 3, 4] and rows[-1]["loss"] < rows[0]["loss"]
    from safetensors.torch import load_file

    gathered = load_file(workspace / "zero3" / "adapter" / "adapter_model.safetensors")
    reference = load_file(zero2 / "adapter" / "adapter_model.safetensors")
    assert {k: v.shape for k, v in gathered.items()} == {k: v.shape for k, v in reference.items()}
    assert all(v.abs().sum() > 0 for k, v in gathered.items() if "lora_B" in k), "every LoRA B was trained and gathered"


def test_full_fine_tuning_in_one_bare_process_saves_a_model_that_loads(workspace):
    job = job_file(workspace, "full", "zero2", method="full", learning_rate=1e-3, max_steps=3, micro_batch_size=4)
    launch([sys.executable, "-m", "autosafe_core.training.train"], job)

    result = json.loads((workspace / "full" / RESULT).read_text())
    assert result["method"] == "full" and result["devices"] == 1 and result["model"] == str(workspace / "full" / "model")
    rows = metrics(workspace / "full")
    assert [r["step"] for r in rows] == [1, 2, 3] and rows[-1]["loss"] < rows[0]["loss"]
    tuned = LlamaForCausalLM.from_pretrained(result["model"])
    base = LlamaForCausalLM.from_pretrained(workspace / "base")
    assert AutoTokenizer.from_pretrained(result["model"]).chat_template
    changed = [name for name, p in tuned.state_dict().items() if not torch.equal(p, base.state_dict()[name])]
    assert any("mlp" in name for name in changed) and any("embed_tokens" in name for name in changed)


def test_compiled_layers_learn_what_eager_layers_learn(workspace):
    losses, logs = {}, {}
    for name, compiled in (("eager", False), ("compiled", True)):
        job = job_file(workspace, name, "zero2", max_steps=3, micro_batch_size=4, compile_layers=compiled)
        logs[name] = launch([sys.executable, "-m", "autosafe_core.training.train"], job).stdout
        losses[name] = [r["loss"] for r in metrics(workspace / name)]
    assert "compiled 2 decoder layers" in logs["compiled"] and "compiled" not in logs["eager"]
    assert losses["compiled"] == pytest.approx(losses["eager"], rel=1e-4)
    assert losses["compiled"][-1] < losses["compiled"][0]


def test_compiled_layers_are_refused_with_zero3(workspace):
    with pytest.raises(ValueError, match="compile_layers: not with ZeRO-3"):
        job_file(workspace, "refused", "zero3", compile_layers=True)
