"""Typed training configuration loaded from YAML.

A config is a tree of dataclasses (:class:`TrainConfig` at the root). :func:`load_config`
reads a YAML file, applies ``--set key.sub=value`` overrides (values parsed as YAML scalars,
so ``1e-3``, ``true``, ``[32, 32, 32]`` and ``null`` work), rejects unknown keys at every
level with a did-you-mean, type-checks every value and validates the ranges and the names
(weighting, strategy, encoder) against their registries.

**Paths.** A relative ``data.root`` / ``data.annotations`` / ``model.weights`` is resolved
against the current working directory first; if nothing exists there, against the repository
root (the parent of the folder that holds the config, e.g. ``configs/..``), then against the
config's own folder. The resolved, absolute paths are what the run folder's ``config.yaml``
records. Every key is documented in ``configs/README.md``.

The package has one module per job; import from ``medmtl.config`` itself:

- :mod:`medmtl.config.schema`: the section dataclasses, their defaults and allowed names;
- :mod:`medmtl.config.loading`: YAML files, ``key.sub=value`` overrides, type checks and
  unknown keys with a did-you-mean;
- :mod:`medmtl.config.validation`: ranges, registry names and path resolution.

Example:
    >>> cfg = load_config("configs/tiny.yaml", ["train.epochs=2"])  # doctest: +SKIP
    >>> cfg.train.learning_rate  # doctest: +SKIP
"""

from __future__ import annotations

from medmtl.config.loading import (
    apply_overrides,
    config_from_dict,
    load_config,
    parse_override,
    save_resolved_config,
)

# The allowed-value tuples stay importable from here but, as before, are not in __all__.
from medmtl.config.schema import (
    AMP_MODES,  # noqa: F401
    AUGMENT_STRENGTHS,  # noqa: F401
    MODALITIES,  # noqa: F401
    MONITORS,  # noqa: F401
    OPTIMIZERS,  # noqa: F401
    SAMPLING_MODES,  # noqa: F401
    SCHEDULERS,  # noqa: F401
    DataConfig,
    DecodeConfig,
    ModelConfig,
    PreprocessConfig,
    StrategyConfig,
    TrainConfig,
    TrainSection,
    ValidationConfig,
    WeightingConfig,
)
from medmtl.config.validation import validate_config
from medmtl.errors import ConfigError, MedmtlError

__all__ = [
    "ConfigError",
    "DataConfig",
    "DecodeConfig",
    "MedmtlError",
    "ModelConfig",
    "PreprocessConfig",
    "StrategyConfig",
    "TrainConfig",
    "TrainSection",
    "ValidationConfig",
    "WeightingConfig",
    "apply_overrides",
    "config_from_dict",
    "load_config",
    "parse_override",
    "save_resolved_config",
    "validate_config",
]
