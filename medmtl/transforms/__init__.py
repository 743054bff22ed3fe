"""medmtl's MONAI-style transforms (array + ``...d`` dict pairs) and per-modality presets.

Submodules: :mod:`~medmtl.transforms.presets` (``InputSpec``, ``preprocess_transforms``),
:mod:`~medmtl.transforms.intensity` (CT windows, MRI normalisation, N4),
:mod:`~medmtl.transforms.augment` (scanner-artifact augmentations),
:mod:`~medmtl.transforms.targets` (dense training targets) and :mod:`~medmtl.transforms.crops`
(training-patch croppers, hard-negative map). Nothing is imported here
so ``import medmtl.transforms`` stays cheap.
"""
