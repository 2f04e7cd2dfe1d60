"""The precision policy: fixed choices, the measured ``auto`` decision, its cache and its record."""

import json
import math
import time

import pytest
import torch

from ldm_ood import precision_policy as pp


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LDM_OOD_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(pp, "bf16_supported", lambda device="cpu": (True, "test CPU"))
    return tmp_path / "precision.json"


def _probe(fp32_s, bf16_s, bf16_value=1.0, calls=None):
    """Outputs [1, 1] in fp32 and [1, bf16_value] in bf16, taking the given seconds."""
    def probe(bf16):
        if calls is not None:
            calls.append(bf16)
        time.sleep(bf16_s if bf16 else fp32_s)
        return [torch.ones(3), torch.full((3,), bf16_value if bf16 else 1.0)]
    return probe


def test_fixed_precisions_are_taken_as_given_without_measuring(cache):
    calls = []
    assert pp.choose_precision("fp32", "net", _probe(0, 0, calls=calls), "sig").bf16 is False
    assert pp.choose_precision("bf16", "net", _probe(0, 0, calls=calls), "sig").bf16 is True
    assert calls == [] and not cache.exists()
    with pytest.raises(ValueError, match="auto, fp32 or bf16"):
        pp.choose_precision("fp16", "net", _probe(0, 0), "sig")


def test_auto_picks_bf16_only_when_finite_close_and_faster(cache):
    fast = pp.choose_precision("auto", "a", _probe(0.02, 0.002), "s1", repeats=1)
    assert fast.bf16 and fast.speedup > 1.15 and fast.rel_error == 0 and "as fast as fp32" in fast.reason
    slow = pp.choose_precision("auto", "b", _probe(0.002, 0.02), "s2", repeats=1)
    assert not slow.bf16 and slow.speedup < 1.15 and "needs 1.15x" in slow.reason
    nan = pp.choose_precision("auto", "c", _probe(0.02, 0.002, bf16_value=math.nan), "s3", repeats=1)
    assert not nan.bf16 and "non-finite" in nan.reason
    # one tensor off by 60 %: the total error over both tensors is 0.6/sqrt(2) ≈ 42 %
    off = pp.choose_precision("auto", "d", _probe(0.02, 0.002, bf16_value=1.6), "s4", repeats=1,
                              tolerance=0.5, tensor_tolerance=0.5)
    assert not off.bf16 and off.max_rel_error == pytest.approx(0.6) and off.rel_error == pytest.approx(0.6 / math.sqrt(2), abs=1e-4)
    assert "worst tensor" in off.reason


def test_auto_is_measured_once_per_machine_and_network_then_cached(cache):
    calls = []
    first = pp.choose_precision("auto", "net", _probe(0.02, 0.002, calls=calls), "sig", repeats=1)
    n = len(calls)
    assert n == 4 and not first.cached  # warm-up + 1 timed call, each precision
    again = pp.choose_precision("auto", "net", _probe(0.02, 0.002, calls=calls), "sig", repeats=1)
    assert len(calls) == n and again.cached and again.bf16 == first.bf16 and again.speedup == first.speedup
    other = pp.choose_precision("auto", "net", _probe(0.02, 0.002, calls=calls), "other-shapes", repeats=1)
    assert len(calls) == 2 * n and not other.cached
    assert len(json.loads(cache.read_text())) == 2


def test_without_native_bf16_auto_is_fp32_and_says_why(monkeypatch, tmp_path):
    monkeypatch.setenv("LDM_OOD_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(pp, "bf16_supported", lambda device="cpu": (False, "this CPU has no native bf16"))
    c = pp.choose_precision("auto", "net", _probe(0, 0), "sig")
    assert not c.bf16 and c.reason == "this CPU has no native bf16" and "net: fp32 (auto: this CPU" in c.line()


def test_relative_errors_per_tensor_and_total():
    a, b = [torch.tensor([1.0, 2.0]), torch.tensor([0.0])], [torch.tensor([1.0, 1.0]), torch.tensor([0.0])]
    assert pp.relative_errors(a, b) == [pytest.approx(1 / math.sqrt(2)), 0.0]
    assert pp.total_relative_error(a, b) == pytest.approx(1 / math.sqrt(2))
    assert pp.relative_errors([torch.tensor([math.inf])], [torch.tensor([1.0])]) == [math.inf]


def test_choice_record_is_json():
    c = pp.PrecisionChoice("ldm (training)", "auto", True, "bf16 2x", speedup=2.0, rel_error=0.004)
    d = json.loads(json.dumps(c.as_dict()))
    assert d["precision"] == "bf16" and d["speedup"] == 2.0 and d["network"] == "ldm (training)"
