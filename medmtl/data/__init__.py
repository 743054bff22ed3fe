"""Synthetic data with known ground truth, datasets and training targets.

* :mod:`medmtl.data.phantom` — CT chest / MRI brain phantoms and phantom sets on disk
  (``generate_ct``, ``generate_mri``, ``write_phantom_set``);
* :mod:`medmtl.data.malignancy` — the documented malignancy model and the Bayes AUC;
* :mod:`medmtl.data.dataset` — training and validation datasets (their target building and
  patch croppers are transforms: :mod:`medmtl.transforms.targets`, :mod:`medmtl.transforms.crops`).

Nothing is imported here, so ``import medmtl.data`` stays cheap.
"""
