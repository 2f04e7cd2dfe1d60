"""The pieces of sharded scoring that need no second process: how batches are cut and dealt, how
part files are merged, and which commands run under ``torchrun`` (the 2-rank runs are in
``tests/integration/test_sharded_scoring.py``)."""

from __future__ import annotations

import pickle

import pytest

from ldm_ood.config import ConfigError
from ldm_ood.errors import BatchError, BatchFailures, InputError, NonFiniteTrainingError, StaleArtifactError
from ldm_ood.data.manifest import Case
from ldm_ood.methods import sharding
from ldm_ood.methods.context import writes_run
from ldm_ood.methods.records import RecordWriter, merge_parts, part_path, part_paths, parts_dir, read_records
from ldm_ood.methods.runner import pending_batches
from ldm_ood.training.distributed import DistContext

CASES = [Case(f"c{i}", f"c{i}.nii.gz") for i in range(7)]


def _ids(batches):
    return [[c.case_id for c in b] for b in batches]


def test_batches_are_cut_from_the_whole_set_and_resumed_cases_keep_their_batch_mates():
    assert _ids(pending_batches(CASES, set(), 3)) == [["c0", "c1", "c2"], ["c3", "c4", "c5"], ["c6"]]
    # c1 and the whole second batch were done: c0 and c2 stay together, c6 is not pulled forward
    assert _ids(pending_batches(CASES, {"c1", "c3", "c4", "c5"}, 3)) == [["c0", "c2"], ["c6"]]


def test_pending_batches_are_dealt_in_turn_and_every_batch_goes_to_exactly_one_rank():
    batches = pending_batches(CASES, set(), 2)  # c0 c1 | c2 c3 | c4 c5 | c6
    dealt = [_ids(sharding.my_batches(batches, DistContext(rank=r, world_size=3))) for r in range(3)]
    assert dealt == [[["c0", "c1"], ["c6"]], [["c2", "c3"]], [["c4", "c5"]]]
    assert _ids(sharding.my_batches(batches, DistContext())) == _ids(batches)
    # a later set goes on where the earlier ones stopped: 5 batches dealt before, so this one starts at rank 1
    assert _ids(sharding.my_batches(batches, DistContext(rank=1, world_size=2), start=5)) == [["c0", "c1"], ["c4", "c5"]]


FIELDS = ["case_id", "set", "pred_score", "seconds"]


def _row(cid, score):
    return {"case_id": cid, "set": "id", "pred_score": score, "seconds": 0.5}


def test_merge_appends_part_rows_in_case_order_after_the_existing_rows_and_deletes_the_parts(tmp_path):
    path = tmp_path / "scores" / "id.csv"
    RecordWriter(path, FIELDS).write_rows([_row("c5", 0.25)])  # from an earlier run: stays first
    RecordWriter(part_path(path, 0), FIELDS).write_rows([_row("c0", 1 / 3), _row("c4", 2.0)])
    RecordWriter(part_path(path, 1), FIELDS).write_rows([_row("c2", -1.5), _row("c5", 9.0)])  # c5: already in
    RecordWriter(part_path(path, 3), FIELDS).write_rows([_row("zz", 7.0), _row("c1", 0.1)])  # a wider launch's part
    with part_path(path, 3).open("a") as fh:
        fh.write("c6,id,0.")  # torn by a kill: not a row
    order = {c.case_id: i for i, c in enumerate(CASES)}
    assert merge_parts(path, FIELDS, order) == 5
    rows = read_records(path)
    assert [r["case_id"] for r in rows] == ["c5", "c0", "c1", "c2", "c4", "zz"]  # zz: not in the set, last
    assert [r["pred_score"] for r in rows[:2]] == ["0.25", repr(1 / 3)]  # c5 kept its own row; floats exact
    assert part_paths(path) == [] and not parts_dir(path).exists()
    assert merge_parts(path, FIELDS, order) == 0 and len(read_records(path)) == 6


def test_a_merge_interrupted_before_the_parts_were_deleted_adds_nothing_twice(tmp_path):
    path = tmp_path / "id.csv"
    RecordWriter(part_path(path, 0), FIELDS).write_rows([_row("c1", 1.0), _row("c0", 2.0)])
    RecordWriter(path, FIELDS).write_rows([_row("c0", 2.0)])  # the append of the killed merge, partly
    assert merge_parts(path, FIELDS, {"c0": 0, "c1": 1}) == 1
    assert [r["case_id"] for r in read_records(path)] == ["c0", "c1"]


def test_outside_torchrun_every_helper_is_one_process():
    assert not sharding.joined() and sharding.world() == DistContext()
    assert sharding.on_main(lambda a, b=0: a + b, 2, b=3) == 5
    assert sharding.sum_over_ranks([3, 1]) == [3, 1] and sharding.gather([("c0", "bad")]) == [("c0", "bad")]
    sharding.barrier()


def test_under_torchrun_only_scoring_commands_run_and_others_are_refused(tmp_path, monkeypatch):
    calls = []

    @writes_run("calibrate x")
    def calibrate_x(run_dir):
        calls.append(run_dir)

    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="`calibrate x` runs in one process: start it without torchrun"):
        calibrate_x(tmp_path)
    assert calls == []
    monkeypatch.setenv("WORLD_SIZE", "1")
    calibrate_x(tmp_path)
    assert calls == [tmp_path] and (tmp_path / ".lock").exists()


def test_errors_reach_the_other_ranks_with_their_class_and_message():
    failures = BatchFailures([("c1", "unreadable")])
    sent = [StaleArtifactError("/run/scores/ldm/id.csv", "made under calibration abc"), InputError("/x.nii", "empty"),
            NonFiniteTrainingError("ldm", 2, 1, "loss", float("nan")), BatchError("1 failed", failures),
            ConfigError("bad field")]
    for err in sent:
        got = sharding._portable(err)
        assert got is err  # survives pickling as itself
        back = pickle.loads(pickle.dumps(err))
        assert type(back) is type(err) and str(back) == str(err)
    assert pickle.loads(pickle.dumps(sent[0])).path == sent[0].path
    assert pickle.loads(pickle.dumps(sent[3])).failures.items == [("c1", "unreadable")]

    class Odd(Exception):
        def __init__(self, a, b):
            super().__init__(f"{a}/{b}")

    odd = sharding._portable(Odd(1, 2))
    assert type(odd) is RuntimeError and str(odd) == "Odd: 1/2"
