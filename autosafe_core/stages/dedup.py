"""Dedup of safe samples: one copy of each thing the agent is taught, and why the rest went.

A sample's training content is its text over the parts named in `DedupConfig.compare`
(user instruction, interaction history, safe action by default). Two samples are exact
duplicates when that text is equal up to case and whitespace (a content hash), near
duplicates when the cosine of their embeddings reaches the threshold. Dedup is greedy
in id order, so the same input always keeps the same samples, and works in blocks so
memory grows with the kept embeddings, never with the square of the sample count.
`seen` holds earlier runs' samples or fingerprints, so a nightly regeneration does not
re-add what the dataset already has. This module knows nothing about how embeddings
are made (`Embedder`), nor about storage.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from autosafe_core.ots import Action, Rejection, SafeSample, Step
from autosafe_core.stages.embedding import Embedder

Part = Literal["instruction", "history", "unsafe_action", "safe_action"]

DEFAULT_PARTS: tuple[Part, ...] = ("instruction", "history", "safe_action")
"""What the agent is taught: (u, tau_t) -> a_safe."""

# Embedding models truncate long inputs (MiniLM at 256 word pieces), so the short,
# decisive parts go first and the long history last; the hash sees every part anyway.
_PART_ORDER: tuple[Part, ...] = ("instruction", "safe_action", "unsafe_action", "history")


class DedupConfig(BaseModel):
    """What counts as the same training content."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    near_duplicate_threshold: float = Field(
        0.95, ge=0.0, le=1.0, description="Cosine at or above which a sample is a near duplicate."
    )
    compare: tuple[Part, ...] = Field(
        DEFAULT_PARTS,
        min_length=1,
        description="Which parts of a sample make its training content.",
    )
    block_size: int = Field(1024, ge=1, description="Rows per block of the similarity products.")


@dataclass(frozen=True)
class Fingerprint:
    """What dedup remembers of a kept sample: its id, content hash and embedding."""

    id: str
    content_hash: str
    embedding: np.ndarray | None = None


@dataclass(frozen=True)
class Dropped:
    """A sample left out of the dataset, the step that left it out, and why."""

    sample: SafeSample
    reason: str
    step: Literal["quality", "dedup"] = "dedup"
    duplicate_of: str | None = None
    """The id of the kept or seen sample this one duplicates (dedup only)."""

    def rejection(self) -> Rejection:
        """The same fact as a `Rejection` row."""
        return Rejection(stage="dataset", role=self.step, item_id=self.sample.id, reason=self.reason)


@dataclass
class DedupResult:
    """Kept samples (in input order), dropped ones with reasons, and the kept fingerprints.

    Pass `fingerprints` as `seen` to a later run to dedup against this one.
    """

    kept: list[SafeSample] = field(default_factory=list)
    dropped: list[Dropped] = field(default_factory=list)
    fingerprints: list[Fingerprint] = field(default_factory=list)


# --- training content ---------------------------------------------------------------


def action_text(action: Action) -> str:
    """An action as the agent writes it in ReAct form."""
    lines = [f"Thought: {action.thought}"] if action.thought else []
    if action.is_final:
        lines.append(f"Final Answer: {action.answer}")
    else:
        lines.append(f"Action: {action.tool}")
        lines.append(f"Action Input: {json.dumps(action.tool_input, sort_keys=True, ensure_ascii=False)}")
    return "\n".join(lines)


def _step_text(step: Step) -> str:
    text = action_text(step.action)
    if step.observation is not None:
        text += f"\nObservation: {step.observation}"
    return text


def training_text(sample: SafeSample, compare: Iterable[Part] = DEFAULT_PARTS) -> str:
    """The text of the parts of `sample` named in `compare`, in a fixed order."""
    wanted = set(compare)
    sections: list[str] = []
    for part in _PART_ORDER:
        if part not in wanted:
            continue
        if part == "instruction":
            sections.append(f"User: {sample.scenario.user_instruction}")
        elif part == "safe_action":
            sections.append(action_text(sample.safe_action) if sample.safe_action else "")
        elif part == "unsafe_action":
            sections.append(action_text(sample.unsafe_action))
        else:
            # The scenario's prior interaction, then the rollout up to the trigger (tau_t).
            steps = [*sample.scenario.history, *sample.history]
            sections.append("\n".join(_step_text(s) for s in steps))
    return "\n\n".join(sections)


def normalise(text: str) -> str:
    """Case-folded, with every run of whitespace one space: what exact dedup compares."""
    return re.sub(r"\s+", " ", text).strip().casefold()


def content_hash(text: str) -> str:
    """The hash of the normalised text."""
    return hashlib.sha256(normalise(text).encode()).hexdigest()


def fingerprints(
    samples: Iterable[SafeSample], embedder: Embedder | None, cfg: DedupConfig = DedupConfig()
) -> list[Fingerprint]:
    """Fingerprints of `samples` (embeddings only with an embedder), e.g. to persist as `seen`."""
    samples = list(samples)
    texts = [training_text(s, cfg.compare) for s in samples]
    embeddings: list[np.ndarray | None] = [None] * len(samples)
    if embedder is not None:
        for start, rows in _embedded_blocks(texts, embedder, cfg.block_size):
            embeddings[start : start + len(rows)] = list(rows)
    return [
        Fingerprint(id=s.id, content_hash=content_hash(t), embedding=e)
        for s, t, e in zip(samples, texts, embeddings, strict=True)
    ]


# --- dedup --------------------------------------------------------------------------


def dedup(
    samples: list[SafeSample],
    embedder: Embedder | None,
    cfg: DedupConfig = DedupConfig(),
    seen: Iterable[SafeSample | Fingerprint] = (),
) -> DedupResult:
    """Drop exact duplicates, then (with an embedder) near duplicates, of earlier samples.

    embedder: None skips near-duplicate detection. seen: samples or fingerprints of
    earlier data; they are never dropped, only compared against.
    """
    seen_prints = _seen_fingerprints(seen, embedder, cfg)
    first_with_hash: dict[str, str] = {}
    for fp in seen_prints:
        first_with_hash.setdefault(fp.content_hash, fp.id)

    # Greedy in id order (a stable sort keeps input order among equal ids), so the
    # survivor of a duplicate group never depends on how the batch was shuffled.
    order = sorted(range(len(samples)), key=lambda i: samples[i].id)
    texts = {i: training_text(samples[i], cfg.compare) for i in order}
    reasons: dict[int, tuple[str, str]] = {}  # index -> (reason, id of the sample it duplicates)
    candidates: list[int] = []
    hashes: dict[int, str] = {}
    for i in order:
        h = content_hash(texts[i])
        hashes[i] = h
        if h in first_with_hash:
            reasons[i] = (f"exact duplicate of {first_with_hash[h]}", first_with_hash[h])
        else:
            first_with_hash[h] = samples[i].id
            candidates.append(i)

    kept_embeddings: dict[int, np.ndarray] = {}
    if embedder is not None and candidates:
        pool = _Pool(cfg.block_size)
        for fp in seen_prints:
            if fp.embedding is not None:
                pool.add(fp.id, fp.embedding)
        for start, rows in _embedded_blocks([texts[i] for i in candidates], embedder, cfg.block_size):
            block = candidates[start : start + len(rows)]
            # Within a block the greedy pass is sequential: row j meets only the rows
            # before it that were kept, and its best match in the pool of earlier blocks.
            kept_here = np.zeros(len(rows), dtype=bool)
            sims_in = rows @ rows.T
            for j, (cos, owner) in enumerate(pool.best_matches(rows)):
                local = np.where(kept_here, sims_in[j], -np.inf)
                k = int(np.argmax(local))
                if local[k] > cos:  # ties go to the pool, whose samples come first
                    cos, owner = float(local[k]), samples[block[k]].id
                if owner is not None and cos >= cfg.near_duplicate_threshold:
                    reasons[block[j]] = (f"near duplicate of {owner} (cos {cos:.2f})", owner)
                else:
                    kept_here[j] = True
                    kept_embeddings[block[j]] = rows[j]
            pool.add_block([samples[block[j]].id for j in np.flatnonzero(kept_here)], rows[kept_here])

    dropped = [Dropped(samples[i], reasons[i][0], duplicate_of=reasons[i][1]) for i in order if i in reasons]
    kept_idx = [i for i in range(len(samples)) if i not in reasons]
    return DedupResult(
        kept=[samples[i] for i in kept_idx],
        dropped=dropped,
        fingerprints=[
            Fingerprint(id=samples[i].id, content_hash=hashes[i], embedding=kept_embeddings.get(i))
            for i in kept_idx
        ],
    )


class _Pool:
    """Embeddings of kept samples in blocks, searched one block product at a time."""

    def __init__(self, block_size: int) -> None:
        self.block_size = block_size
        self.blocks: list[np.ndarray] = []
        self.owners: list[list[str]] = []
        self._pending_ids: list[str] = []
        self._pending_rows: list[np.ndarray] = []

    def add(self, owner: str, row: np.ndarray) -> None:
        self._pending_ids.append(owner)
        self._pending_rows.append(np.asarray(row, dtype=np.float32))
        if len(self._pending_ids) >= self.block_size:
            self._flush()

    def add_block(self, owners: list[str], rows: np.ndarray) -> None:
        self._flush()
        if owners:
            self.blocks.append(np.asarray(rows, dtype=np.float32))
            self.owners.append(owners)

    def _flush(self) -> None:
        if self._pending_ids:
            self.blocks.append(np.stack(self._pending_rows))
            self.owners.append(self._pending_ids)
            self._pending_ids, self._pending_rows = [], []

    def best_matches(self, rows: np.ndarray) -> list[tuple[float, str | None]]:
        """For each row, the highest cosine in the pool and whose it is (earliest on ties)."""
        self._flush()
        best = np.full(len(rows), -np.inf, dtype=np.float32)
        best_block = np.full(len(rows), -1)
        best_col = np.zeros(len(rows), dtype=np.int64)
        for b, block in enumerate(self.blocks):
            if block.shape[1] != rows.shape[1]:
                raise ValueError(
                    f"dedup: seen embedding of {self.owners[b][0]!r} has dimension {block.shape[1]}, "
                    f"the embedder makes {rows.shape[1]}"
                )
            sims = rows @ block.T
            top = sims.argmax(axis=1)
            top_cos = sims[np.arange(len(rows)), top]
            # Strictly greater: on a tie the earlier block, so the earlier sample, wins.
            better = top_cos > best
            best[better], best_block[better], best_col[better] = top_cos[better], b, top[better]
        return [
            (float(best[j]), None if best_block[j] < 0 else self.owners[best_block[j]][best_col[j]])
            for j in range(len(rows))
        ]


def _embedded_blocks(texts: list[str], embedder: Embedder, block_size: int) -> Iterator[tuple[int, np.ndarray]]:
    for start in range(0, len(texts), block_size):
        chunk = texts[start : start + block_size]
        rows = np.asarray(embedder.embed(chunk), dtype=np.float32)
        if rows.ndim != 2 or rows.shape[0] != len(chunk):
            raise ValueError(f"dedup: embedder returned shape {rows.shape} for {len(chunk)} texts")
        yield start, rows


def _seen_fingerprints(
    seen: Iterable[SafeSample | Fingerprint], embedder: Embedder | None, cfg: DedupConfig
) -> list[Fingerprint]:
    given: list[Fingerprint] = []
    samples: list[SafeSample] = []
    for item in seen:
        if isinstance(item, Fingerprint):
            given.append(item)
        elif isinstance(item, SafeSample):
            samples.append(item)
        else:
            raise TypeError(f"dedup: seen items must be SafeSample or Fingerprint, got {type(item).__name__}")
    return given + fingerprints(samples, embedder, cfg)
