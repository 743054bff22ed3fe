"""CLI commands, one module per topic; :mod:`medmtl.cli` registers their ``COMMANDS``.

Each module keeps ``import torch``/``monai`` inside the command functions so ``--help`` stays fast.
"""
