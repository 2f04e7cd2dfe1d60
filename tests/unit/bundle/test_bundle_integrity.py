"""``open_bundle`` refuses a bundle whose files are not the exported ones (naming the file), a format
newer than the code, and brings an older known format up to date through its migration."""

import json

import pytest
from typer.testing import CliRunner

from ldm_ood.bundle import FORMAT_VERSION, open_bundle
from ldm_ood.bundle import format as bundle_format
from ldm_ood.cli import app
from ldm_ood.errors import BundleError, IntegrityError


def _flip_byte(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def _edit_threshold(path):
    data = json.loads(path.read_text())
    data["threshold"] += 1.0  # still valid JSON, another operating point
    path.write_text(json.dumps(data, indent=2))


def _truncate(path):
    path.write_bytes(path.read_bytes()[:100])


TAMPERING = {
    "flipped byte in weights": ("ldm/model.safetensors", _flip_byte, "differs from"),
    "edited calibration": ("calibration/ood.json", _edit_threshold, "differs from"),
    "deleted calibration file": ("calibration/segment_thresholds.safetensors", lambda p: p.unlink(), "is missing"),
    "truncated weights": ("first_stage/model.safetensors", _truncate, "differs from"),
    "unlisted file added": ("calibration/ltm.json", lambda p: p.write_text("{}"), "not part of the bundle"),
}


@pytest.mark.parametrize("case", list(TAMPERING))
def test_a_tampered_bundle_is_refused_naming_the_file(bundle_copy, case):
    rel, tamper, problem = TAMPERING[case]
    tamper(bundle_copy / rel)
    with pytest.raises(IntegrityError) as err:
        open_bundle(bundle_copy)
    assert err.value.path == bundle_copy / rel and problem in str(err.value)


def test_score_with_a_tampered_bundle_fails_naming_the_file_and_scores_nothing(bundle_copy, exported, tmp_path):
    _flip_byte(bundle_copy / "ldm" / "model.safetensors")
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["score", "--model", str(bundle_copy), "--input", str(exported.scans),
                                      "--output", str(out)])
    text = "".join(result.output.split())  # rich wraps long lines, even inside words
    assert result.exit_code == 1
    assert f"{bundle_copy}/ldm/model.safetensors:" in text and "changedorcorrupted" in text
    assert not out.exists()


def test_an_edited_model_id_is_refused(bundle_copy):
    meta = json.loads((bundle_copy / "model.json").read_text())
    meta["model_id"] = "0" * 16
    (bundle_copy / "model.json").write_text(json.dumps(meta))
    with pytest.raises(IntegrityError, match="model_id") as err:
        open_bundle(bundle_copy)
    assert err.value.path == bundle_copy / "model.json"


def test_a_folder_without_model_json_is_not_a_bundle(exported):
    with pytest.raises(BundleError, match="is not a model bundle"):
        open_bundle(exported.run.root)


def _set_version(root, version):
    meta = json.loads((root / "model.json").read_text())
    meta["format_version"] = version
    (root / "model.json").write_text(json.dumps(meta))


def test_a_newer_format_is_refused_with_a_clear_message(bundle_copy):
    _set_version(bundle_copy, FORMAT_VERSION + 1)
    with pytest.raises(BundleError) as err:
        open_bundle(bundle_copy)
    message = str(err.value)
    assert err.value.path == bundle_copy / "model.json"
    assert f"format version {FORMAT_VERSION + 1}" in message and f"up to {FORMAT_VERSION}" in message
    assert "upgrade ldm-ood" in message


def test_an_older_known_format_is_migrated_and_one_without_a_migration_refused(bundle_copy, monkeypatch):
    # this code one format ahead of the bundle: the bundle's version is older, with a migration step
    monkeypatch.setattr(bundle_format, "FORMAT_VERSION", FORMAT_VERSION + 1)
    monkeypatch.setattr(bundle_format, "MIGRATIONS", {FORMAT_VERSION: lambda meta: {**meta, "migrated_from": 1}})
    bundle = open_bundle(bundle_copy)
    assert bundle.meta["format_version"] == FORMAT_VERSION + 1 and bundle.meta["migrated_from"] == 1
    assert json.loads((bundle_copy / "model.json").read_text())["format_version"] == FORMAT_VERSION  # not rewritten
    monkeypatch.setattr(bundle_format, "MIGRATIONS", {})
    with pytest.raises(BundleError, match=f"format version {FORMAT_VERSION} can no longer be read"):
        open_bundle(bundle_copy)
