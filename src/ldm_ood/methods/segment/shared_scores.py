"""Image-level scores shared between the variants of one run (paper 001 §4.1).

The image-level score — the mean KL over the whole Markov chain, 999 UNet evaluations per image — does not
depend on the variant: it is computed from the same latent, with the same per-case seed and random stream
(:data:`.batch.SCORE_STREAM`) and the same t-values whichever variant segments the case. Once one variant has
written it for a case, the others read it back from that variant's score file instead of spending the 999
evaluations again: :class:`SharedImageScores`.

A score is reused only from a row with the same ``score_key`` (:func:`score_key`: a hash of what the score
depends on — the networks, the t-values, the subsample, the seed and the UNet's precision; the calibration
id would not do, since calibrating one more variant changes it) that holds the subsample column when one
is asked for. A reused row leaves ``score_seconds`` blank, so the time tables count the score once, where it
was computed.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Sequence

from ...config import SegmentConfig, Variant
from ...runs import RunDir
from ..records import read_records


def _number(raw: str | None) -> float | None:
    try:
        v = float(raw) if raw not in (None, "") else None
    except ValueError:
        return None
    return v if v is not None and math.isfinite(v) else None


def score_key(model_id: str, cfg: SegmentConfig, bf16: bool) -> str:
    """12 hex digits naming the image-level score's inputs: the networks (``model_id``), ``score_num_t``,
    ``score_subsample_num_t``, the seed and whether the UNet ran in bf16; ``""`` without a model id."""
    if not model_id:
        return ""
    what = [model_id, cfg.score_num_t, cfg.score_subsample_num_t, cfg.seed, bool(bf16)]
    return hashlib.sha256(json.dumps(what).encode()).hexdigest()[:12]


@dataclass
class SharedImageScores:
    """Image-level scores of cases another variant of the run already wrote, by ``(set, case_id)``.

    ``lookup`` gives ``(score, subsample score or None)``; the score files are read once per set.
    """

    run: RunDir
    key: str  # :func:`score_key` of this segmentation; nothing is shared without one
    variants: Sequence[Variant]
    want_subsample: bool
    _by_set: dict[str, dict[str, tuple[float, float | None]]] = field(default_factory=dict)

    def _load(self, set_name: str) -> dict[str, tuple[float, float | None]]:
        found: dict[str, tuple[float, float | None]] = {}
        for variant in self.variants:
            for row in read_records(self.run.segment_scores_path(variant, set_name)):
                score, sub = _number(row.get("model_score")), _number(row.get("pred_score_subsample"))
                if not self.key or row.get("score_key") != self.key or score is None:
                    continue
                if self.want_subsample and sub is None:
                    continue
                found.setdefault(row["case_id"], (score, sub if self.want_subsample else None))
        return found

    def lookup(self, set_name: str, case_id: str) -> tuple[float, float | None] | None:
        if set_name not in self._by_set:
            self._by_set[set_name] = self._load(set_name)
        return self._by_set[set_name].get(case_id)
