"""medmtl's MONAI-style transforms (array + ``...d`` dict pairs) and per-modality presets.

Submodules: :mod:`~medmtl.transforms.presets` (``InputSpec``, ``preprocess_transforms``),
:mod:`~medmtl.transforms.intensity` (CT windows, MRI normalisation, N4) and
:mod:`~medmtl.transforms.augment` (scanner-artifact augmentations). Nothing is imported here
so ``import medmtl.transforms`` stays cheap.
"""
