"""The record saved with a stage's weights: typed, round-trips, and a broken one names the file and field."""

from __future__ import annotations

import json

import pytest

from ldm_ood.artifacts.stage_meta import FirstStageMeta, LDMMeta, TransformerMeta
from ldm_ood.errors import InputError

LDM = LDMMeta(spatial_dims=3, config={"seed": 1}, scale_factor=0.75, latent_multiple=4,
              latent_spatial_shape=(8, 8, 6), latent_channels=3)


def test_records_round_trip_through_config_json(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(LDM.to_json()))
    assert LDMMeta.read(tmp_path) == LDM
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["stage"] == "ldm" and saved["latent_spatial_shape"] == [8, 8, 6]
    tm = TransformerMeta(spatial_dims=2, config={}, num_tokens=33, seq_len=16, latent_spatial_shape=(4, 4),
                         ordering="raster_scan", ordering_seed=0)
    assert TransformerMeta.from_json(json.loads(json.dumps(tm.to_json()))) == tm
    assert FirstStageMeta.from_json({"stage": "first_stage", "spatial_dims": 2, "config": {}}).spatial_dims == 2


def test_a_record_without_the_stage_key_is_read_as_the_requested_stage():
    data = LDM.to_json()
    del data["stage"]
    assert LDMMeta.from_json(data) == LDM


@pytest.mark.parametrize("edit, message", [
    (lambda d: d.pop("latent_multiple"), "field 'latent_multiple' of the ldm model record is missing"),
    (lambda d: d.update(latent_channels="3"), "field 'latent_channels' of the ldm model record: expected an integer, got '3'"),
    (lambda d: d.update(latent_spatial_shape=[8, 8.5]), "field 'latent_spatial_shape' .*expected a list of integers"),
    (lambda d: d.update(scale_factor=None), "field 'scale_factor' .*expected a number, got None"),
    (lambda d: d.update(config=[1]), "field 'config' .*expected a mapping, got list"),
    (lambda d: d.update(stage="transformer"), "the record of stage 'transformer', not 'ldm'"),
])
def test_a_broken_record_names_the_file_and_the_field(tmp_path, edit, message):
    data = LDM.to_json()
    edit(data)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(data))
    with pytest.raises(InputError, match=message) as err:
        LDMMeta.read(tmp_path)
    assert str(err.value).startswith(str(path))


def test_a_missing_record_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="no trained model here"):
        FirstStageMeta.read(tmp_path)
