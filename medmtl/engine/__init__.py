"""Training, inference, decoding, checkpoints and the model card.

Imports run one way (DESIGN.md → Layout): ``engine`` never imports ``medmtl.shift``; where
prediction needs a shift step (the drift gate) :mod:`medmtl.api` composes them, and intensity
harmonisation is a transform (:mod:`medmtl.transforms.harmonise`). Modules above ``engine``
(``shift``) use only its public predictor/card API, :data:`PUBLIC_API` — a test enforces it.
Nothing is imported here, so ``import medmtl.engine`` stays cheap.
"""

from __future__ import annotations

#: What ``medmtl.shift`` may import from the engine: ``module → names``.
PUBLIC_API: dict[str, tuple[str, ...]] = {
    "medmtl.engine.card": ("AdaptationRecord", "ModelCard", "ReferenceStats", "REFERENCE_FORMAT"),
    "medmtl.engine.checkpoint": ("load_checkpoint", "read_card", "save_checkpoint"),
    "medmtl.engine.inference": ("Predictor",),
}

__all__ = ["PUBLIC_API"]
