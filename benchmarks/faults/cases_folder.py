"""Folder mode (``--input DIR --output DIR``, the MOOD layout): entries that must not be skipped silently
(symlink loop, dangling symlink; a directory named ``x.nii.gz`` is in :mod:`.cases_inputs`), and entries
that must work (a symlink to a scan, upper-case suffixes, other files ignored), and two files that
would write the same ``<case>`` outputs.
"""

from __future__ import annotations

import shutil
from typing import Callable

from .common import LDM, SEG, M, Sandbox, Verdict, add, expect_error, expect_success, flat, folder_score, prepare, score
from .harness import gzip_ok


def _folder(m: M, kind: str) -> Callable[[Sandbox], Verdict]:
    def fn(sb: Sandbox) -> Verdict:
        prepare(sb, m)
        d = flat(sb)
        good = d / f"{m.good_id}.nii.gz"
        shutil.copy(sb.data / m.good_path, good)
        if kind == "symlink_loop":
            (d / "entry_a.nii.gz").symlink_to("entry_b.nii.gz")
            (d / "entry_b.nii.gz").symlink_to("entry_a.nii.gz")
            names, problem = ["entry_a.nii.gz"], r"symlink|loop|link|not found|does not exist"
        elif kind == "dangling_symlink":
            (d / "entry_c.nii.gz").symlink_to("/nonexistent/scan.nii.gz")
            names, problem = ["entry_c.nii.gz"], r"symlink|link|not found|does not exist|dangling|broken"
        elif kind == "same_stem_nii_and_niigz":
            import nibabel as nib

            img = nib.load(str(good))
            nib.save(nib.Nifti1Image(img.get_fdata().astype("float32") * 0.5, img.affine), str(d / f"{m.good_id}.nii"))
            call = score(sb, m, "--input", d, "--output", sb.out)
            if call.rc != 0:
                return expect_error(call, [f"{m.good_id}.nii"], r"same|duplicate|both|collid|twice")
            outs = sorted(p.name for p in sb.out.iterdir())
            return Verdict().add("silent", f"rc 0: {m.good_id}.nii and {m.good_id}.nii.gz both write "
                                           f"{m.good_id}.txt (outputs: {outs[:4]}); one result silently lost")
        if kind in ("symlink_to_scan", "uppercase_suffix", "other_files_ignored"):
            if kind == "symlink_to_scan":
                (d / "linked.nii.gz").symlink_to(good.name)
                want = ["linked", m.good_id]
            elif kind == "uppercase_suffix":
                good.rename(d / f"{m.good_id}.NII.GZ")
                want = [m.good_id]
            else:
                (d / "README.txt").write_text("notes\n")
                (d / "table.csv").write_text("a,b\n")
                want = [m.good_id]
            call = score(sb, m, "--input", d, "--output", sb.out)

            def check() -> str | None:
                missing = [w for w in want if folder_score(sb, w) is None]
                if missing:
                    return f"no score for {missing}"
                if m.name != "segment":
                    broken = [w for w in want if gzip_ok(sb.out / f"{w}.nii.gz")]
                    if broken:
                        return f"no/torn map for {broken}"
                return None
            return expect_success(call, check)
        call = score(sb, m, "--input", d, "--output", sb.out)
        if call.rc == 0:
            s = folder_score(sb, m.good_id)
            return Verdict().add("silent", f"rc 0, {names[0]} silently skipped (good case scored: {s is not None})")
        v = expect_error(call, names, problem)
        if folder_score(sb, m.good_id) is None and not call.traceback:
            v.add("misleading", "the good scan was not scored")
        return v
    return fn


for _m in (LDM, SEG):
    for _k, _e in (("symlink_loop", "reported per case with the file name, not skipped silently"),
                   ("dangling_symlink", "reported per case with the file name, not skipped silently"),
                   ("same_stem_nii_and_niigz", "two files with one case id: refused naming both, not one lost"),
                   ("symlink_to_scan", "a symlink to a scan is scored"),
                   ("uppercase_suffix", "X.NII.GZ is scored"),
                   ("other_files_ignored", "README.txt / table.csv in the folder are ignored")):
        if _m is SEG and _k != "dangling_symlink":
            continue
        add(f"folder/{_m.name}/{_k}", _e, _folder(_m, _k), "folder")
