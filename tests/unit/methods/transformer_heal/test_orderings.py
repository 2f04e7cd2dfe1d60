"""The transposed / reflected orderings of the ensemble (models.transformer): permutations, inverses, by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ldm_ood.config.schema import ENSEMBLE_ORDERINGS
from ldm_ood.models.transformer import (
    ORDERING_KINDS,
    build_ordering,
    ordering_names,
    parse_ordering,
    sequence_to_latent,
    tokens_to_sequence,
)


@pytest.mark.parametrize("shape", [(3, 4), (2, 3, 4)])
@pytest.mark.parametrize("name", ordering_names())
def test_every_ordering_is_a_permutation_and_its_inverse_maps_back(name, shape):
    o = build_ordering(name, shape)
    n = int(np.prod(shape))
    assert sorted(o.sequence.tolist()) == list(range(n)) and o.kind == name
    flat = torch.randperm(n).unsqueeze(0)
    assert torch.equal(flat[:, o.sequence][:, o.inverse], flat)
    assert torch.equal(o.inverse[o.sequence], torch.arange(n))
    idx = torch.randint(0, 7, (2, *shape))
    seq = tokens_to_sequence(idx, o, bos=7)
    assert torch.equal(sequence_to_latent(seq[:, 1:], o), idx)


def test_the_new_orderings_of_a_2x3_grid_by_hand():
    # grid [[0, 1, 2], [3, 4, 5]] (C-order flat indices)
    expected = {
        "raster_scan": [0, 1, 2, 3, 4, 5],
        "raster_scan_transposed": [0, 3, 1, 4, 2, 5],  # column-major
        "raster_scan_reflected": [5, 4, 3, 2, 1, 0],  # read backwards
        "raster_scan_transposed_reflected": [5, 2, 4, 1, 3, 0],
        "s_curve": [0, 1, 2, 5, 4, 3],
        "s_curve_transposed": [0, 3, 4, 1, 2, 5],  # snake down the columns
        "s_curve_reflected": [5, 4, 3, 0, 1, 2],
        "s_curve_transposed_reflected": [5, 2, 1, 4, 3, 0],
    }
    for name, seq in expected.items():
        assert build_ordering(name, (2, 3)).sequence.tolist() == seq, name
    # 3D: transposed reverses the axis order, so the first axis varies fastest
    o = build_ordering("raster_scan_transposed", (2, 2, 2))
    assert o.sequence.tolist() == [0, 4, 2, 6, 1, 5, 3, 7]


def test_names_parse_and_the_default_ensemble_is_eight_distinct_views():
    assert parse_ordering("s_curve_transposed_reflected") == ("s_curve", True, True)
    assert parse_ordering("hilbert_curve") == ("hilbert_curve", False, False)
    assert len(ordering_names()) == 4 * len(ORDERING_KINDS)
    with pytest.raises(ValueError, match="unknown ordering 'raster_scan_reflected_transposed'"):
        parse_ordering("raster_scan_reflected_transposed")
    assert len(ENSEMBLE_ORDERINGS) == 8 and set(ENSEMBLE_ORDERINGS) <= set(ordering_names())
    sequences = {tuple(build_ordering(n, (4, 4)).sequence.tolist()) for n in ENSEMBLE_ORDERINGS}
    assert len(sequences) == 8
