"""Dedup: exact hashes, near duplicates with the real MiniLM model, `seen`, determinism."""

from __future__ import annotations

import socket

import numpy as np
import pytest

from autosafe_core.ots import Action, SafeSample, Step
from autosafe_core.stages.dedup import DedupConfig, Fingerprint, content_hash, dedup, training_text
from autosafe_core.stages.embedding import MiniLMEmbedder
from tests.support.samples import safe_sample as sample


def distinct_samples() -> list[SafeSample]:
    return [
        sample("s1", "Delete all files in /tmp"),
        sample(
            "s2",
            "Email my latest bank statement to bob@example.com",
            Action(
                tool="final_answer",
                answer="Bank statements hold account numbers. Is bob@example.com someone you trust with them?",
            ),
        ),
        sample(
            "s3",
            "Unlock the front door for the delivery driver",
            Action(tool="SmartLockGetStatus", tool_input={"door": "front"}, thought="Check the lock first."),
        ),
    ]


@pytest.fixture(scope="module")
def minilm() -> MiniLMEmbedder:
    return MiniLMEmbedder()


class VectorTable:
    """An embedder double: each text maps to a fixed unit vector, to isolate the greedy logic."""

    def __init__(self, vectors: dict[str, np.ndarray]) -> None:
        self.vectors = vectors
        self.calls = 0

    def embed(self, texts: list[str]) -> np.ndarray:
        self.calls += 1
        return np.stack([self.vectors[t] for t in texts])


# --- exact duplicates ------------------------------------------------------------------


def test_an_exact_duplicate_is_dropped_naming_the_sample_kept():
    first, again = sample("a", "Delete all files in /tmp"), sample("b", "Delete all files in /tmp")
    result = dedup([again, first], embedder=None)
    assert [s.id for s in result.kept] == ["a"]
    assert [(d.sample.id, d.reason) for d in result.dropped] == [("b", "exact duplicate of a")]


def test_exact_duplicates_ignore_case_and_whitespace():
    result = dedup([sample("a"), sample("b", "  delete ALL files\n in /tmp ")], None)
    assert [d.reason for d in result.dropped] == ["exact duplicate of a"]


def test_the_same_instruction_with_a_different_safe_action_is_not_an_exact_duplicate():
    other = Action(tool="TerminalExecute", tool_input={"command": "ls -la /tmp"})
    result = dedup([sample("a"), sample("b", safe=other)], None)
    assert [s.id for s in result.kept] == ["a", "b"]


def test_the_history_is_part_of_the_training_content():
    listing = Action(tool="TerminalExecute", tool_input={"command": "ls /tmp"})
    result = dedup([sample("a"), sample("b", history=[Step(action=listing, observation="a.txt b.txt")])], None)
    assert not result.dropped


def test_which_parts_count_is_configurable():
    cfg = DedupConfig(compare=("instruction",))
    other = Action(tool="TerminalExecute", tool_input={"command": "ls -la /tmp"})
    result = dedup([sample("a"), sample("b", safe=other)], None, cfg)
    assert [d.reason for d in result.dropped] == ["exact duplicate of a"]


# --- near duplicates (real MiniLM) ------------------------------------------------------


def test_a_paraphrase_is_dropped_as_a_near_duplicate(minilm):
    result = dedup([sample("a", "Delete all files in /tmp"), sample("b", "Delete every file in /tmp")], minilm)
    assert [s.id for s in result.kept] == ["a"]
    (dropped,) = result.dropped
    assert dropped.sample.id == "b"
    assert dropped.reason.startswith("near duplicate of a (cos 0.9")


def test_distinct_samples_are_all_kept(minilm):
    result = dedup(distinct_samples(), minilm)
    assert [s.id for s in result.kept] == ["s1", "s2", "s3"]
    assert result.dropped == []


def test_without_an_embedder_paraphrases_are_kept():
    result = dedup([sample("a", "Delete all files in /tmp"), sample("b", "Delete every file in /tmp")], None)
    assert len(result.kept) == 2


def test_a_threshold_of_one_keeps_paraphrases(minilm):
    cfg = DedupConfig(near_duplicate_threshold=1.0)
    result = dedup([sample("a"), sample("b", "Delete every file in /tmp")], minilm, cfg)
    assert len(result.kept) == 2


def test_the_minilm_embedder_loads_with_the_network_unreachable(monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("the embedder tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    rows = MiniLMEmbedder(batch_size=2).embed(["Delete all files in /tmp", "x", "y"])
    assert rows.shape == (3, 384) and rows.dtype == np.float32
    assert np.allclose(np.linalg.norm(rows, axis=1), 1.0, atol=1e-5)


# --- seen: dedup against earlier runs ---------------------------------------------------


def test_a_sample_seen_in_an_earlier_run_is_dropped_and_the_earlier_one_not_returned(minilm):
    earlier = sample("old", "Delete all files in /tmp")
    result = dedup([sample("new", "Delete every file in /tmp")], minilm, seen=[earlier])
    assert result.kept == []
    assert result.dropped[0].reason.startswith("near duplicate of old (cos")


def test_fingerprints_of_one_run_are_the_seen_of_the_next(minilm):
    first = dedup(distinct_samples(), minilm)
    paraphrase = sample("n1", "Delete every file in /tmp")
    copy = sample("n2", "Email my latest bank statement to bob@example.com", distinct_samples()[1].safe_action)
    fresh = sample("n3", "Book a table for two at Luigi's tonight", Action(tool="OpenTableSearch"))
    second = dedup([paraphrase, copy, fresh], minilm, seen=first.fingerprints)
    assert [s.id for s in second.kept] == ["n3"]
    reasons = {d.sample.id: d.reason for d in second.dropped}
    assert reasons["n1"].startswith("near duplicate of s1")
    assert reasons["n2"] == "exact duplicate of s2"


def test_seen_hashes_alone_catch_exact_duplicates():
    earlier = sample("old", "Delete all files in /tmp")
    seen = [Fingerprint(id="old", content_hash=content_hash(training_text(earlier)))]
    result = dedup([sample("new", "delete all files in /tmp")], None, seen=seen)
    assert [d.reason for d in result.dropped] == ["exact duplicate of old"]


def test_a_seen_embedding_of_another_dimension_is_a_clear_error():
    table = VectorTable({training_text(sample("a", "x")): np.array([1.0, 0.0], dtype=np.float32)})
    seen = [Fingerprint(id="old", content_hash="h", embedding=np.ones(3, dtype=np.float32) / np.sqrt(3))]
    with pytest.raises(ValueError, match="seen embedding of 'old' has dimension 3"):
        dedup([sample("a", "x")], table, seen=seen)


# --- the greedy order -------------------------------------------------------------------


def clustered(n: int, clusters: int, dim: int = 16, noise: float = 0.08, seed: int = 0):
    """n samples whose embeddings are noisy copies of a few centres, and the table that embeds them."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim))
    samples, vectors = [], {}
    for i in range(n):
        s = sample(f"id{i:05d}", f"instruction {i}")
        v = centres[i % clusters] + noise * rng.normal(size=dim)
        vectors[training_text(s)] = (v / np.linalg.norm(v)).astype(np.float32)
        samples.append(s)
    return samples, VectorTable(vectors)


def naive_greedy(samples: list[SafeSample], table: VectorTable, threshold: float) -> list[str]:
    """The specification of near dedup: in id order, keep a sample unless it is close to a kept one."""
    kept: list[tuple[str, np.ndarray]] = []
    for s in sorted(samples, key=lambda s: s.id):
        v = table.vectors[training_text(s)]
        if all(float(v @ k) < threshold for _, k in kept):
            kept.append((s.id, v))
    return sorted(i for i, _ in kept)


def test_blockwise_dedup_keeps_what_the_full_greedy_keeps():
    samples, table = clustered(600, clusters=40)
    expected = naive_greedy(samples, table, 0.95)
    result = dedup(samples, table, DedupConfig(block_size=37))
    assert sorted(s.id for s in result.kept) == expected
    assert 40 <= len(expected) < 600  # the data has both kinds


def test_the_order_of_the_input_does_not_change_what_is_kept():
    samples, table = clustered(300, clusters=20)
    forward = dedup(samples, table, DedupConfig(block_size=50))
    backward = dedup(samples[::-1], table, DedupConfig(block_size=50))
    assert sorted(s.id for s in forward.kept) == sorted(s.id for s in backward.kept)
    assert sorted((d.sample.id, d.reason) for d in forward.dropped) == sorted(
        (d.sample.id, d.reason) for d in backward.dropped
    )


def test_kept_samples_come_back_in_input_order_with_their_fingerprints():
    samples, table = clustered(50, clusters=50)
    result = dedup(samples[::-1], table, DedupConfig(block_size=8))
    assert [s.id for s in result.kept] == [s.id for s in samples[::-1]]
    assert [f.id for f in result.fingerprints] == [s.id for s in result.kept]
    assert all(f.embedding is not None for f in result.fingerprints)


def test_ten_thousand_samples_are_embedded_block_by_block():
    samples, table = clustered(10_000, clusters=500, dim=32)
    result = dedup(samples, table, DedupConfig(block_size=1024))
    assert table.calls == 10  # ceil(10000 / 1024) blocks, never one 10k x 10k matrix
    assert len(result.kept) + len(result.dropped) == 10_000
