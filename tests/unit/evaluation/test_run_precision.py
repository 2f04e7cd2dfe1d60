"""summary.json records the precision every network of a run trained and scored in."""

import json

from ldm_ood.evaluation.inputs import run_precision
from ldm_ood.evaluation.summary import Summary
from ldm_ood.methods.inference_precision import report
from ldm_ood.precision_policy import PrecisionChoice
from ldm_ood.runs import RunDir


def test_training_and_scoring_precision_are_collected_and_round_trip(tmp_path):
    run = RunDir(tmp_path / "run")
    run.stage_dir("ldm").mkdir(parents=True)
    trained = PrecisionChoice("ldm (training)", "auto", False, "bf16 only 0.95x as fast as fp32", speedup=0.95)
    run.precision_path("ldm").write_text(json.dumps(trained.as_dict()))
    report({"unet": PrecisionChoice("unet (ldm scoring)", "auto", True, "bf16 1.8x", speedup=1.8)}, run)
    report({"transformer": PrecisionChoice("transformer (ltm scoring)", "fp32", False, "set in the configuration")}, run)
    got = run_precision(run)
    assert set(got) == {"ldm (training)", "unet (ldm scoring)", "transformer (ltm scoring)"}
    assert got["ldm (training)"]["precision"] == "fp32" and got["ldm (training)"]["speedup"] == 0.95
    assert got["unet (ldm scoring)"]["precision"] == "bf16"
    s = Summary(precision={"run": got})
    assert Summary.from_dict(json.loads(json.dumps(s.to_dict()))).precision == {"run": got}
