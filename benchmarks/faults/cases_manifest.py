"""Manifests: path traversal through case_id / set, and the manifest problems of issue 12 §1, §5 and more.

Path-traversal payloads are aimed at the case folder itself (``../../../../escaped`` from
``run/maps/<method>/<set>/`` is ``<case>/escaped``), at an absolute path inside the case folder, and
at an existing input scan (``../../../../data/id/test/head-test-001``), so any write they cause is
seen by the snapshot (outside_root) and any overwritten input by the data_loss check.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from .common import (
    LDM,
    LTM,
    SEG,
    M,
    Sandbox,
    Verdict,
    add,
    expect_error,
    expect_success,
    flat,
    good_row,
    judge_per_case,
    prepare,
    score,
)

HEADER = "case_id,path,mask,set,split"


def _second(m: M) -> tuple[str, str]:
    """A second good input of the method's kind (id, path relative to data/)."""
    if m.kind == "3d":
        return "head-test-001", "id/test/head-test-001.nii.gz"
    return "slice-test-000-1", "2d/test/id/slice-test-000-1.nii.gz"


# ----------------------------------------------------------------------------- traversal

def _traversal(m: M, what: str) -> Callable[[Sandbox], Verdict]:
    def fn(sb: Sandbox) -> Verdict:
        prepare(sb, m)
        sid, spath = _second(m)
        case_id, set_name = sid, m.set_name
        if what == "case_id_dotdot":
            case_id = "../../x/scan"
        elif what == "case_id_escape":
            case_id = "../../../../escaped"
        elif what == "case_id_absolute":
            case_id = str(sb.root / "elsewhere" / "q1")
        elif what == "case_id_is_input":
            case_id = f"../../../../data/{spath[: -len('.nii.gz')]}"
            sb.protected.add(f"data/{spath}")
        elif what == "set_escape":
            set_name = "../../../zzz"
        elif what == "set_absolute":
            set_name = str(sb.root / "elsewhere" / "q2")
        rows = [good_row(m), [case_id, spath, "", set_name, "test"]]
        call = score(sb, m, "--data", sb.write_manifest(rows))
        bad_value = case_id if what.startswith("case_id") else set_name
        return expect_error(call, ["score.csv"], r"case_id|set|path separator|plain name|outside")\
            .add(None, f"payload {bad_value!r}")
    return fn


TRAVERSALS = {LDM: ("case_id_dotdot", "case_id_escape", "case_id_absolute", "case_id_is_input", "set_escape",
                    "set_absolute"),
              LTM: ("case_id_is_input", "set_escape"), SEG: ("case_id_escape", "case_id_is_input")}
for _m, _ws in TRAVERSALS.items():
    for _w in _ws:
        add(f"traversal/{_m.name}/{_w}", "refused with the manifest line (nothing written outside the maps folder, "
            "no input overwritten)", _traversal(_m, _w), "traversal")


def _folder_in_place(m: M) -> Callable[[Sandbox], Verdict]:
    """--output is the --input folder: <case>.nii.gz (the map) is the input's own name."""
    def fn(sb: Sandbox) -> Verdict:
        prepare(sb, m)
        d = flat(sb)
        name = Path(m.good_path).name
        (d / name).write_bytes((sb.data / m.good_path).read_bytes())
        sb.allow(d)
        sb.protected.add(f"data/in/{name}")
        call = score(sb, m, "--input", d, "--output", d)
        if call.rc != 0:
            return expect_error(call, ["in"], r"input|same|overwrite|output")
        return Verdict().add(None, "rc 0; input checked by the data_loss check")
    return fn


for _m in (LDM, LTM, SEG):
    add(f"traversal/{_m.name}/folder_output_is_input", "--output == --input: refused, or outputs written without "
        "touching the input scan (a case_id equal to an input file's stem in the same folder)",
        _folder_in_place(_m), "traversal")


# ----------------------------------------------------------------------------- manifest problems

def _rows_check(sb: Sandbox, m: M, want: dict[str, str], set_name: str | None = None) -> Callable[[], str | None]:
    """Check: the set's CSV holds exactly the case ids ``want`` (id → set name), with their map files."""
    def check() -> str | None:
        st = sb.csv(m.csv_rel(set_name))
        if not st.exists:
            return f"no {m.csv_rel(set_name)} written"
        if st.problem():
            return st.problem()
        if sorted(st.ids) != sorted(want):
            return f"rows {st.ids} instead of {sorted(want)}"
        for r in st.rows:
            if r.get("set") != want[r["case_id"]]:
                return f"{r['case_id']}: set {r.get('set')!r} instead of {want[r['case_id']]!r}"
            p = r.get("map_path", "")
            if p and not (sb.root / p).exists():
                return f"{r['case_id']}: map {p} missing"
        return None
    return check


def _manifest_case(m: M, kind: str) -> Callable[[Sandbox], Verdict]:
    def fn(sb: Sandbox) -> Verdict:
        prepare(sb, m)
        sid, spath = _second(m)
        gpath, s = m.good_path, m.set_name
        name = "score.csv"
        text_rows = [f"goodcase,{gpath},,{s},test", f"second,{spath},,{s},test"]
        text = "\n".join([HEADER, *text_rows]) + "\n"
        enc = "utf-8"
        args: list[str] = []
        expect = "ok"
        want = {"goodcase": s, "second": s}
        names, problem = ["score.csv"], None
        set_name = None
        if kind == "bom":
            enc = "utf-8-sig"
        elif kind == "split_Test":
            text = text.replace(",test", ",Test")
        elif kind == "split_VAL_TEST_mixed_case":
            text = text.replace(",test\n", ",TEST\n", 1)
        elif kind == "crlf":
            text = text.replace("\n", "\r\n")
        elif kind == "extra_columns":
            text = "case_id,path,mask,set,split,age,site\n" + "\n".join(r + ",54,A" for r in text_rows) + "\n"
        elif kind == "no_mask_column":
            text = "case_id,path,set,split\n" + "\n".join(r.replace(",,", ",") for r in text_rows) + "\n"
        elif kind == "whitespace_cells":
            text = HEADER + "\n" + "\n".join(" " + r.replace(",", " , ") + " " for r in text_rows) + "\n"
        elif kind == "quoted_comma_id":
            text = f'{HEADER}\n"good,case",{gpath},,{s},test\n'
            want = {"good,case": s}
        elif kind == "unicode_space_id":
            text = f"{HEADER}\nscan é 1,{gpath},,{s},test\n"
            want = {"scan é 1": s}
        elif kind == "set_with_space":
            text = f"{HEADER}\ngoodcase,{gpath},,my set,test\n"
            want, set_name = {"goodcase": "my set"}, "my set"
        elif kind == "no_trailing_newline":
            text = text.rstrip("\n")
        elif kind == "other_cwd":
            pass
        elif kind == "short_row":
            text = f"{HEADER}\ngoodcase,{gpath},,{s},test\nshort,{spath}\n"
            expect, problem = "error", r"line 3"
        elif kind == "latin1":
            text, enc = f"{HEADER}\ncafé,{gpath},,{s},test\n", "latin-1"
            expect, problem = "error", r"utf-?8|encod|decode"
        elif kind == "empty_file":
            text, expect, problem = "", "error", r"empty|header|no rows|no cases"
        elif kind == "header_only":
            text, expect, problem = HEADER + "\n", "error", r"no rows|empty|no cases"
        elif kind == "no_path_column":
            text = "case_id,file,set,split\n" + "\n".join(r.replace(",,", ",") for r in text_rows) + "\n"
            expect, problem = "error", r"path"
        elif kind == "tab_separated":
            text = HEADER.replace(",", "\t") + "\n" + "\n".join(r.replace(",", "\t") for r in text_rows) + "\n"
            expect, problem = "error", r"path|column|header|delimit"
        elif kind == "unknown_split":
            text = text.replace(",test\n", ",testing\n", 1)
            expect, problem = "error", r"split"
        elif kind == "control_char_id":
            text = f"{HEADER}\n\"bad\tid\",{gpath},,{s},test\n"
            expect, problem = "error", r"control|case_id"
        elif kind == "duplicate_ids":
            text = f"{HEADER}\ndup,{gpath},,{s},test\ndup,{spath},,{s},test\n"
            expect, problem = "error", r"duplicate|twice|dup"
        elif kind == "only_train_rows":
            text = text.replace(",test", ",train")
            expect, problem = "error", r"test"
        elif kind == "nii_as_data":
            name = None
            args = ["--data", f"data/{gpath}"]
            names, expect, problem = [Path(gpath).name], "error", r"manifest|csv|utf|text|folder"
        elif kind == "missing_manifest":
            name = None
            args = ["--data", "data/nosuch.csv"]
            names, expect, problem = ["nosuch.csv"], "error", r"not found|no such|does not exist|missing"
        elif kind == "unknown_set":
            args = ["--set", "nosuchset"]
            names, expect, problem = ["nosuchset"], "error", r"set"
        elif kind == "missing_file_among_good":
            text = f"{HEADER}\ngoodcase,{gpath},,{s},test\ngone,in/gone.nii.gz,,{s},test\nsecond,{spath},,{s},test\n"
            path = sb.write_manifest(text, "score.csv")
            call = score(sb, m, "--data", path)
            return judge_per_case(sb, call, m, "gone", "gone.nii.gz", r"not exist|not found|missing|no such",
                                  good_ids=["goodcase", "second"])
        if name is not None:
            path = sb.write_manifest(text, name, encoding=enc)
            args = ["--data", str(path) if kind == "other_cwd" else path.relative_to(sb.root), *args]
        if kind == "other_cwd":  # every path absolute, run from another folder
            call = sb.cli(*m.command(str(sb.run)), *args, cwd=sb.tmp)
        else:
            call = score(sb, m, *args)
        if expect == "error":
            return expect_error(call, names, problem)
        return expect_success(call, _rows_check(sb, m, want, set_name))
    return fn


SUCCESS_KINDS = ("bom", "split_Test", "crlf", "extra_columns", "whitespace_cells", "unicode_space_id", "set_with_space",
                 "other_cwd")
ERROR_KINDS = ("short_row", "latin1", "empty_file", "header_only", "no_path_column", "tab_separated", "unknown_split",
               "duplicate_ids", "only_train_rows", "nii_as_data", "missing_manifest", "unknown_set",
               "missing_file_among_good")
for _k in SUCCESS_KINDS + ERROR_KINDS:
    _what = ("scored correctly (case ids, sets, maps as written in the manifest)" if _k in SUCCESS_KINDS else
             "non-zero exit, error names the manifest (line) and the problem")
    add(f"manifest/ldm/{_k}", _what, _manifest_case(LDM, _k), "manifest")
for _m in (LTM, SEG):
    for _k in ("bom", "crlf", "missing_file_among_good"):
        _what = ("scored correctly" if _k in SUCCESS_KINDS else "non-zero exit naming the manifest and the problem")
        add(f"manifest/{_m.name}/{_k}", _what, _manifest_case(_m, _k), "manifest")


# ----------------------------------------------------------------------------- calibrate reads manifests too

def _calibrate_manifest(kind: str) -> Callable[[Sandbox], Verdict]:
    def fn(sb: Sandbox) -> Verdict:
        prepare(sb, LDM)
        sb.release("run/calibration")
        rows = [f"head-val-00{i},id/val/head-val-00{i}.nii.gz,,id,val" for i in range(3)]
        text = HEADER + "\n" + "\n".join(rows) + "\n"
        enc = "utf-8"
        if kind == "bom":
            enc = "utf-8-sig"
        elif kind == "split_VAL":
            text = text.replace(",val", ",VAL")
        elif kind == "no_val_rows":
            text = text.replace(",val", ",test")
        path = sb.write_manifest(text, "cal.csv", encoding=enc)
        call = sb.cli("calibrate", "--run", "run", "--method", "ldm", "--data", path.relative_to(sb.root))
        if kind == "no_val_rows":
            return expect_error(call, [], r"val")

        def check() -> str | None:
            import json

            ids = json.loads((sb.root / "run/calibration/ood.json").read_text()).get("case_ids")
            return None if ids == [f"head-val-00{i}" for i in range(3)] else f"calibrated on {ids}"
        return expect_success(call, check)
    return fn


for _k in ("bom", "no_val_rows"):
    add(f"manifest/calibrate/{_k}", "calibration reads the same manifest rules (BOM, case-insensitive split, "
        "no val rows is an error)", _calibrate_manifest(_k), "manifest")
