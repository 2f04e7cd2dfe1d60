"""Score CSVs survive interrupted runs and older versions: a torn last row is cut, never appended to."""

from __future__ import annotations

import pytest

from ldm_ood.methods.records import RecordWriter, read_records

FIELDS = ["case_id", "set", "pred_score", "seconds"]


def test_a_torn_last_row_is_dropped_before_appending(tmp_path, capsys):
    path = tmp_path / "id.csv"
    w = RecordWriter(path, FIELDS)
    w.write({"case_id": "a", "set": "id", "pred_score": 1.5, "seconds": 0.1})
    with path.open("a") as fh:  # a process killed mid-row
        fh.write("b,id,2.")
    assert [r["case_id"] for r in read_records(path)] == ["a"]  # reading already skips it
    w = RecordWriter(path, FIELDS)
    assert "the last row (case 'b') was torn" in " ".join(capsys.readouterr().err.split())
    assert w.done_ids() == {"a"}
    w.write({"case_id": "b", "set": "id", "pred_score": 2.25, "seconds": 0.2})
    rows = read_records(path)
    assert [(r["case_id"], r["pred_score"]) for r in rows] == [("a", "1.5"), ("b", "2.25")]
    assert path.read_text().count("\n") == 3  # header + 2 rows, nothing merged


def test_a_row_with_missing_fields_is_torn_too(tmp_path):
    path = tmp_path / "id.csv"
    path.write_text("case_id,set,pred_score,seconds\r\na,id,1.0,0.1\r\nb,id\r\n")
    RecordWriter(path, FIELDS).write({"case_id": "b", "set": "id", "pred_score": 2.0, "seconds": 0.1})
    assert [r["case_id"] for r in read_records(path)] == ["a", "b"]


def test_an_older_file_gains_the_new_columns_and_a_foreign_one_is_refused(tmp_path, capsys):
    path = tmp_path / "id.csv"
    path.write_text("case_id,set,pred_score,seconds\r\na,id,1.0,0.1\r\n")
    new = ["case_id", "set", "pred_score", "qc_reason", "seconds"]
    w = RecordWriter(path, new)
    assert "columns qc_reason added (empty for its 1 rows)" in " ".join(capsys.readouterr().err.split())
    w.write({"case_id": "b", "set": "id", "pred_score": 2.0, "qc_reason": "", "seconds": 0.3})
    assert [list(r) for r in read_records(path)] == [new, new]
    assert read_records(path)[0]["pred_score"] == "1.0" and read_records(path)[0]["qc_reason"] == ""
    with pytest.raises(ValueError, match="existing columns .* differ"):
        RecordWriter(path, ["case_id", "set", "pred_score", "seconds"])  # has a column this writer lacks
    with pytest.raises(ValueError, match="existing columns .* differ"):
        RecordWriter(path, ["set", "case_id", "pred_score", "qc_reason", "seconds"])  # another order
