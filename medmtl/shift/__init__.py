"""Domain shift: data fingerprints, feature-space two-sample tests, BatchNorm and prediction
shift, transferability (LogME), the diagnose report, and label-free adaptation (histogram
matching, N4, AdaBN, TENT, DANN) with a drift gate for prediction time.

Submodules import torch lazily; nothing runs at import time.
"""
