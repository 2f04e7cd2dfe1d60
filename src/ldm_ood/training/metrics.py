"""``<stage>/metrics.csv``: one row per epoch (epoch, train losses, val_loss, seconds, lr, bf16, the
stage's validation metrics), and TensorBoard.

A term a step did not compute (the adversarial terms during warm-up) is a blank cell, never NaN.
Resume truncates the file to the last completed epoch, so a half-recorded epoch leaves no row.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any, Sequence

from ..artifacts.atomic import atomic_write_text


def metrics_header(loss_names: Sequence[str], val_metric_names: Sequence[str] = ()) -> list[str]:
    """The columns of ``metrics.csv`` for a stage that logs ``loss_names`` (and validation ``val_metric_names``)."""
    return ["epoch", *loss_names, "val_loss", "seconds", "lr", "bf16", *val_metric_names]


def truncate_metrics(path: Path, header: list[str], last_epoch: int) -> None:
    """Keep the header and rows of epochs ``<= last_epoch`` (drops a half-recorded epoch)."""
    rows: list[dict[str, str]] = []
    if path.exists():
        with path.open(newline="") as fh:
            rows = [r for r in csv.DictReader(fh) if r.get("epoch", "").isdigit() and int(r["epoch"]) <= last_epoch]
    text = ",".join(header) + "\n" + "".join(",".join(r.get(h, "") for h in header) + "\n" for r in rows)
    atomic_write_text(path, text)


def append_metrics(path: Path, header: list[str], row: dict[str, Any]) -> None:
    """Append one epoch's row (None -> blank cell)."""
    with path.open("a", newline="") as fh:
        csv.writer(fh).writerow(["" if row.get(h) is None else row[h] for h in header])
        fh.flush()


def read_metrics(path: str | Path) -> list[dict[str, float]]:
    """Rows of a ``metrics.csv`` as floats (empty cells -> NaN)."""
    with Path(path).open(newline="") as fh:
        return [{k: (float(v) if v not in ("", None) else math.nan) for k, v in r.items()} for r in csv.DictReader(fh)]


def tensorboard_writer(stage_dir: Path):
    """A TensorBoard ``SummaryWriter`` into ``<stage>/tensorboard``, or None when tensorboard is not installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception:  # tensorboard not installed: CSV only
        return None
    return SummaryWriter(log_dir=str(stage_dir / "tensorboard"))
