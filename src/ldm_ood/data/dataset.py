"""Datasets: ``CaseDataset`` (preprocessed scans of manifest cases) and ``TensorItems`` (in-memory tensors).

Items are ``{"image": Tensor (1, *grid) float32 in [0, 1], "case_id": str}`` (the default
collate stacks them to ``(B, 1, *grid)`` and a list of ids). With ``cache=True`` each scan is read
and preprocessed once and kept in memory (the cohorts of the presets are small); the
:class:`~ldm_ood.data.transforms.PreprocessMeta` of every loaded case is kept in ``.meta`` for
inverting maps later.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch.utils.data import Dataset

from .manifest import Case
from .transforms import PreprocessMeta, Preprocessor


class CaseDataset(Dataset):
    """Preprocessed scans of ``cases`` (paper 000 §3.1 preprocessing via ``preprocessor``)."""

    def __init__(self, cases: Sequence[Case], preprocessor: Preprocessor, cache: bool = True):
        self.cases = list(cases)
        self.preprocessor = preprocessor
        self.cache = cache
        self._images: dict[int, torch.Tensor] = {}
        self.meta: dict[str, PreprocessMeta] = {}

    def __len__(self) -> int:
        return len(self.cases)

    def load(self, index: int) -> torch.Tensor:
        """The preprocessed image ``(1, *grid)`` of case ``index`` (cached when ``cache``)."""
        if index in self._images:
            return self._images[index]
        case = self.cases[index]
        x, meta = self.preprocessor.load(case.source)
        self.meta[case.case_id] = meta
        if self.cache:
            self._images[index] = x
        return x

    def __getitem__(self, index: int) -> dict[str, object]:
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(index)
        return {"image": self.load(index), "case_id": self.cases[index].case_id}


class TensorItems(Dataset):
    """In-memory tensors ``(N, ...)`` as items ``{key: (...)}``: cached LDM latents, LTM token sequences."""

    def __init__(self, key: str, tensors: torch.Tensor):
        self.key, self.tensors = key, tensors

    def __len__(self) -> int:
        return self.tensors.shape[0]

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {self.key: self.tensors[i]}
