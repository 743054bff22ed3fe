"""The record of what a pretrained-weight load did to every tensor of an encoder."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Any

logger = logging.getLogger(__name__)


@dataclass
class LoadReport:
    """Which tensors of an encoder were copied, inflated, channel-adapted or newly initialised.

    Attributes:
        encoder: encoder name, e.g. ``"efficientnet-lite0"``.
        source: weight file path, or ``"random init"`` for ``pretrained=False``.
        sha256: SHA256 of the weight file (``""`` when there is none).
        copied: target state-dict keys filled from the source file as is (shape unchanged).
        inflated: keys whose 2D kernel became a 3D kernel (I3D inflation, divided by depth).
        channel_adapted: keys whose input channels were adapted (first convolution).
        newly_initialised: keys that received no pretrained value (random init).
        unused_source: source keys that were not used (e.g. a classifier not in the model).
    """

    encoder: str
    source: str
    sha256: str = ""
    copied: list[str] = field(default_factory=list)
    inflated: list[str] = field(default_factory=list)
    channel_adapted: list[str] = field(default_factory=list)
    newly_initialised: list[str] = field(default_factory=list)
    unused_source: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line: counts per category, source and short hash."""
        sha = f" (sha256 {self.sha256[:12]})" if self.sha256 else ""
        return (
            f"{self.encoder} <- {self.source}{sha}: {len(self.copied)} tensors copied, "
            f"{len(self.inflated)} inflated, {len(self.channel_adapted)} channel-adapted, "
            f"{len(self.newly_initialised)} newly initialised, {len(self.unused_source)} source tensors unused"
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (lists of keys plus the summary line)."""
        out = asdict(self)
        out["summary"] = self.summary()
        return out

    def log(self) -> None:
        """Log :meth:`summary` at INFO level."""
        logger.info("%s", self.summary())
