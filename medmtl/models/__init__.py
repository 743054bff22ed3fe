"""Encoders (ImageNet 2D backbones adapted to 3D), decoders, heads and the multi-task net.

Import from the submodules, e.g. ``from medmtl.models.registry import create_encoder``;
nothing heavy is imported here.
"""

from __future__ import annotations
