"""The LTM trains to convergence: the cpu preset's transformer early-stops on the validation loss and keeps
the weights of the best epoch; its curve (metrics.csv) is what the report draws."""

from __future__ import annotations

import json

import pytest
from safetensors.torch import load_file

from ldm_ood.config import load_config
from ldm_ood.report.html import _curves_section
from ldm_ood.runs import RunDir
from ldm_ood.training.loop import fit
from ldm_ood.training.metrics import read_metrics

from test_loop import ScriptedTask, _ds


class ScriptedTransformer(ScriptedTask):
    stage = "transformer"


def _curve() -> list[float]:
    """Hand-made validation loss: falls to its minimum 1.0 at epoch 20 (with a plateau and a bump), then rises."""
    down = [3.0 - 0.1 * e for e in range(1, 21)]  # epochs 1..20: 2.9 .. 1.0
    down[9] = 2.5  # a bump at epoch 10 that must not stop training
    return down + [1.0 + 0.01 * e for e in range(1, 60)]  # epochs 21..: never better than epoch 20


def test_cpu_ltm_early_stops_on_validation_and_keeps_the_best_epoch(tmp_path):
    optim = load_config(preset="cpu").transformer.optim.model_copy(update={"precision": "fp32", "batch_size": 2})
    assert (optim.val_every, optim.patience) == (1, 15) and optim.max_epochs >= 10 * optim.patience  # room to converge
    run = RunDir(tmp_path)
    res = fit(ScriptedTransformer(_curve()), _ds(4), _ds(2), optim, run)
    # best at epoch 20; 15 epochs without improvement -> stop after epoch 35, long before max_epochs
    assert (res.best_epoch, res.epochs, res.reason) == (20, 35, "early_stopping")
    assert res.best_val_loss == pytest.approx(1.0)
    assert load_file(str(run.model_path("transformer")))["weight"].item() == 20.0  # the weights of epoch 20
    rows = read_metrics(run.metrics_path("transformer"))
    assert [r["epoch"] for r in rows] == list(range(1, 36))
    assert [round(r["val_loss"], 6) for r in rows] == [round(v, 6) for v in _curve()[:35]]
    assert json.loads(run.done_path("transformer").read_text())["best_epoch"] == 20
    # the report shows this curve with the kept epoch
    notes: list[str] = []
    html = _curves_section({"l2": run}, notes)
    assert html.startswith("<img") and "epoch whose weights were kept" in html and notes == []


def test_report_says_when_no_ltm_was_trained(tmp_path):
    assert "No LTM trained" in _curves_section({"l2": RunDir(tmp_path)}, [])
