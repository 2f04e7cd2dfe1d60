"""The method registry is the one list of methods: the CLI, evaluation and the runner contract read it."""

from __future__ import annotations

import inspect

import pytest
from test_runner_contract import METHODS as CONTRACT_METHODS

from ldm_ood.cli import Method
from ldm_ood.errors import ConfigError
from ldm_ood.evaluation.summary import DETECTION_METHODS, METHOD_LABELS
from ldm_ood.methods.registry import METHODS, detection_methods, method

RUNNER_ARGS = ("manifest", "sets", "input_dir", "output_dir", "progress")


def test_cli_choices_and_the_runner_contract_cover_every_registered_method():
    assert [m.value for m in Method] == list(METHODS)
    assert set(CONTRACT_METHODS) == set(METHODS)  # a new method must be run through the contract test


@pytest.mark.parametrize("name", list(METHODS))
def test_each_method_resolves_to_functions_taking_the_runner_arguments(name):
    info = method(name)
    calibrate, score = info.calibrate(), info.score()
    assert calibrate.__name__ == info.calibrate_fn and score.__name__ == info.score_fn
    assert list(inspect.signature(calibrate).parameters)[:2] == ["run_dir", "manifest"]
    params = inspect.signature(score).parameters
    assert all(p in params for p in (*RUNNER_ARGS, *info.score_options)), sorted(params)


def test_evaluated_columns_come_from_the_detection_methods():
    assert [m.name for m in detection_methods()] == ["ldm", "ltm"]
    assert DETECTION_METHODS == {"ldm": ("ldm", "pred_score"), "ldm_mse": ("ldm", "score_mse"),
                                 "ldm_lpips": ("ldm", "score_lpips"), "ldm_one_sided": ("ldm", "signed_score"),
                                  "ltm": ("ltm", "pred_score")}
    assert METHOD_LABELS["ldm_mse"] == "LDM (MSE)" and METHOD_LABELS["ltm"] == "LTM"
    assert all(m.columns and next(iter(m.columns.values()))[0] == "pred_score" for m in detection_methods())


def test_an_unknown_method_names_the_known_ones():
    with pytest.raises(ConfigError, match="unknown method 'nope'; known: ldm, ltm, segment"):
        method("nope")
