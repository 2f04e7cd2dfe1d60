"""Configuration of a run: the schema, the presets shipped as YAML, loading and overriding.

* :mod:`.schema` — one pydantic model per stage (:class:`Config` and its sections);
* :mod:`.presets` — ``presets/*.yaml`` (``tiny``, ``demo``, ``cpu``, ``paper`` and their ``-2d``);
* :mod:`.io` — :func:`load_config` (preset < YAML < overrides), :func:`override_config` (a YAML
  on top of an existing run's configuration), :func:`save_config`;
* :mod:`.stages` — the trained stages and calibrations of a run, one line each;
* :mod:`.changes` — which finished stages and calibrations a change of fields makes stale.
"""

from ..errors import ConfigError
from .changes import ARTIFACTS, SECTION_ARTIFACTS, changed_fields, invalidated_artifacts
from .io import build_config, load_config, override_config, read_yaml, save_config
from .presets import PAPER_CODEBOOK_SIZE, PRESETS, deep_merge, preset_dict
from .schema import (
                     Config,
                     DataConfig,
                     DiffusionConfig,
                     FirstStageConfig,
                     OptimConfig,
                     Precision,
                     SCORE_SETTINGS,
                     ScoreConfig,
                     SegmentConfig,
                     SynthConfig,
                     TransformerConfig,
                     Variant,
)

__all__ = [
    "ARTIFACTS", "Config", "ConfigError", "DataConfig", "DiffusionConfig", "FirstStageConfig", "OptimConfig",
    "PAPER_CODEBOOK_SIZE", "PRESETS", "Precision", "SCORE_SETTINGS", "SECTION_ARTIFACTS", "ScoreConfig", "SegmentConfig",
    "SynthConfig", "TransformerConfig", "Variant", "build_config", "changed_fields", "deep_merge", "invalidated_artifacts",
    "load_config", "override_config", "preset_dict", "read_yaml", "save_config",
]
