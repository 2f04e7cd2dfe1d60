"""``python -m ldm_ood.training.distributed_entry STAGE --run DIR [...]``: training without the CLI.

Meant for ``torchrun --nproc_per_node=N -m ldm_ood.training.distributed_entry first-stage --run DIR``
(the ``ldm-ood train`` CLI command calls the same :func:`ldm_ood.training.api.train`).
"""

from __future__ import annotations

import argparse
import sys

from .api import train


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="ldm_ood.training.distributed_entry", description=__doc__)
    p.add_argument("stage", choices=["first-stage", "first_stage", "ldm", "transformer"])
    p.add_argument("--run", required=True)
    p.add_argument("--config", default=None)
    p.add_argument("--preset", default=None)
    p.add_argument("--data", default=None, help="manifest CSV (default: data.manifest of the config)")
    p.add_argument("--resume", action="store_true")
    a = p.parse_args(argv)
    result = train(a.run, a.stage, config_path=a.config, preset=a.preset, manifest=a.data, resume=a.resume)
    print(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
