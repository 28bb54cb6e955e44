"""JSON-schema constraints for transformers decoding, through xgrammar.

`SchemaGrammars` compiles each schema once per tokenizer (cached by the schema's
hash), with no free whitespace, so every token the model spends is content. A
`GrammarMask` is a logits processor for one batched decode (`decode.decode`): each row has
its own grammar, or none (rows without a schema pass through untouched), and its
own token budget. It replaces xgrammar's `contrib.hf.LogitsProcessor`, which needs a
grammar on every row and asserts on the padding that a batch feeds a row stopped
by a per-row budget.

This module knows tokens and logits, not chat messages or requests.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Sequence
from typing import Any

import torch
import xgrammar as xgr
from transformers import LogitsProcessor


def schema_key(schema: dict[str, Any]) -> str:
    """Content hash of a JSON schema: equal schemas share one compiled grammar."""
    return hashlib.sha256(json.dumps(schema, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


class SchemaGrammars:
    """Compiles JSON schemas for one tokenizer, each schema once."""

    def __init__(self, tokenizer: Any, vocab_size: int, stop_token_ids: Sequence[int]):
        # The model's vocabulary (its lm_head) may be padded beyond the tokenizer's.
        info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size, stop_token_ids=list(stop_token_ids))
        self.vocab_size = vocab_size
        self._compiler = xgr.GrammarCompiler(info)
        self._compiled: dict[str, xgr.CompiledGrammar] = {}
        self._lock = threading.Lock()

    def compile(self, schema: dict[str, Any]) -> xgr.CompiledGrammar:
        """The grammar of `schema`; raises on a schema xgrammar cannot compile."""
        key = schema_key(schema)
        with self._lock:
            found = self._compiled.get(key)
        if found is None:
            found = self._compiler.compile_json_schema(json.dumps(schema), any_whitespace=False, strict_mode=True)
            with self._lock:
                self._compiled[key] = found
        return found

    def __len__(self) -> int:
        return len(self._compiled)


class GrammarMask(LogitsProcessor):
    """Masks each constrained row's logits to what its grammar allows next.

    `budgets[i]` is row i's max new tokens: past it (or past its stop token) the decode
    loop pads the row, and those pads must not reach the grammar. One instance serves
    exactly one batch.
    """

    def __init__(self, grammars: Sequence[xgr.CompiledGrammar | None], budgets: Sequence[int], vocab_size: int):
        self._matchers = [xgr.GrammarMatcher(g) if g is not None else None for g in grammars]
        self._budgets = list(budgets)
        self._rows = [i for i, m in enumerate(self._matchers) if m is not None]
        self._bitmask = xgr.allocate_token_bitmask(len(self._matchers), vocab_size)
        self._vocab_size = vocab_size
        self._prompt_len: int | None = None
        self.rejected: list[bool] = [False] * len(self._matchers)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if not self._rows:
            return scores
        if self._prompt_len is None:
            self._prompt_len = input_ids.shape[1]
        generated = input_ids.shape[1] - self._prompt_len
        live = []
        for i in self._rows:
            matcher = self._matchers[i]
            assert matcher is not None
            if generated > 0 and generated <= self._budgets[i] and not matcher.is_terminated():
                if not matcher.accept_token(int(input_ids[i, -1])):
                    self.rejected[i] = True
            if generated < self._budgets[i] and not matcher.is_terminated() and not self.rejected[i]:
                matcher.fill_next_token_bitmask(self._bitmask, i)
                live.append(i)
        if live:
            xgr.apply_token_bitmask_inplace(
                scores, self._bitmask.to(scores.device), vocab_size=self._vocab_size, indices=live
            )
        return scores
