"""medmtl: ImageNet encoders adapted to 3D CT/MRI, multi-task lesion heads, domain-shift tools.

Nothing runs at import time; heavy modules (torch, monai) are imported by the submodules
that need them.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
