"""Acquisition re-simulation: fine-tune on source scans re-rendered as the target scanner sees them.

Label-free adaptation to a scanner that is *worse* than the source one (thicker slices, a
smoother kernel, more noise) cannot be done by re-normalising features (AdaBN, TENT) or
intensities (histogram matching): the target images hold less information, and the network has
never seen images like them. The target acquisition, however, can be *measured* on the
unlabelled target scans — voxel spacing from the headers, the noise level and (CT) the HU
calibration offset from the fingerprints of :mod:`medmtl.shift.fingerprint` — and imposed on
the labelled source scans, whose lesion annotations (LPS world mm) stay valid. The network is
then fine-tuned on these re-simulated scans with its task losses (BatchNorm statistics follow
them). This is the physics-driven counterpart of style-transfer adaptation (cf. the
acquisition simulation of TorchIO's ``RandomAnisotropy``/``RandomBlur``/``RandomNoise``, Pérez-
García et al. 2021, and SynthSeg's resolution randomisation, Billot et al. 2023), written here
because it has to be driven by measured target values, not by random ranges alone.

The simulation of one source scan (array axes matched to world axes through its affine):

1. slice profile: along each axis whose target spacing ``t`` exceeds the source spacing ``s``,
   a Gaussian of FWHM ``sqrt(t² − s²)`` (the extra width of the target's slice profile);
2. kernel: a Gaussian of ``σ = blur_mm`` across the in-plane axes (the two finer target axes),
   drawn per realisation from ``[0, blur_max_mm]`` — the sharpness of a reconstruction kernel
   cannot be separated from noise and anatomy reliably on a handful of scans, so it is
   randomised instead of measured;
3. resampling to the target spacing (MONAI ``Spacing``, trilinear);
4. noise: white Gaussian noise raising the fingerprint noise estimate to the target's (its
   amplitude calibrated on the estimator's response to a first draw; relative to the median
   body intensity for MRI, whose units are arbitrary);
5. CT: the target − source difference of the median HU calibration offsets is added.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from medmtl.errors import ShiftError

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn

    from medmtl.io.types import Lesion, Scan
    from medmtl.shift.source_patches import SourceItem

logger = logging.getLogger(__name__)

FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))  # 2.3548


@dataclass(frozen=True)
class Acquisition:
    """What a cohort's scanner does to an image, measured without labels.

    Attributes:
        spacing_ras: median voxel size (mm) along the world R, A and S axes.
        noise: median noise sigma (:func:`~medmtl.shift.fingerprint.noise_estimate`; HU for CT).
        body_median: median intensity inside the body (HU for CT); scales ``noise`` for MRI.
        hu_offset: CT: median HU calibration offset (air/fat/water), ``None`` when not measurable
            or for MRI.
        modality: ``"CT"`` or ``"MR"``.
        n_scans: scans measured.
    """

    spacing_ras: tuple[float, float, float]
    noise: float
    body_median: float
    hu_offset: float | None
    modality: str
    n_scans: int

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (for the model card)."""
        d = asdict(self)
        d["spacing_ras"] = [round(float(v), 4) for v in self.spacing_ras]
        return d


def world_axes(affine: Any) -> tuple[list[int], list[float]]:
    """Per array axis: the world axis (0 = R/L, 1 = A/P, 2 = S/I) it runs along most, and its spacing (mm)."""
    a = np.asarray(affine, dtype=float)[:3, :3]
    return [int(np.argmax(np.abs(a[:, i]))) for i in range(3)], [float(np.linalg.norm(a[:, i])) for i in range(3)]


def estimate_acquisition(scans: Sequence[Scan]) -> Acquisition:
    """Measure a cohort's acquisition (spacing, noise, body intensity, CT calibration offset).

    Args:
        scans: loaded scans of one site and one modality (HU for CT).

    Returns:
        The cohort's medians as an :class:`Acquisition`.

    Raises:
        ShiftError: no scans, mixed modalities, or no scan with a measurable noise level.
    """
    from medmtl.shift.fingerprint import body_mask, hu_calibration, image_array, noise_estimate

    if not scans:
        raise ShiftError("cannot measure the acquisition of an empty cohort; pass a folder with scans")
    modality = scans[0].modality
    if any(s.modality != modality for s in scans):
        raise ShiftError(f"the cohort mixes modalities ({sorted({s.modality for s in scans})}); use one modality")
    spacings: list[list[float]] = [[], [], []]
    noises, medians, offsets = [], [], []
    for s in scans:
        axes, sp = world_axes(s.image.affine)
        for w, v in zip(axes, sp):
            spacings[w].append(v)
        arr = image_array(s)
        mask = body_mask(arr, modality)
        if mask.any():
            noises.append(noise_estimate(arr, mask))
            medians.append(float(np.median(arr[mask])))
        if modality == "CT":
            off = hu_calibration(arr, mask).get("offset_hu")
            if off is not None:
                offsets.append(float(off))
    noises = [n for n in noises if math.isfinite(n)]
    if not noises:
        raise ShiftError("no scan of the cohort has a measurable noise level (no body found); check the scans")
    ras = tuple(float(np.median(v)) if v else float("nan") for v in spacings)
    return Acquisition(spacing_ras=(ras[0], ras[1], ras[2]), noise=float(np.median(noises)),
                       body_median=float(np.median(medians)), hu_offset=float(np.median(offsets)) if offsets else None,
                       modality=modality, n_scans=len(scans))


def simulate_acquisition(scan: Scan, *, source: Acquisition, target: Acquisition, blur_mm: float,
                         rng: np.random.Generator) -> tuple[Scan, dict[str, Any]]:
    """Re-render one source scan as acquired by the ``target`` scanner (module docstring, steps 1–5).

    Args:
        scan: a source scan (``image`` ``(1, I, J, K)``, HU for CT).
        source: the source cohort's acquisition (for the calibration offset and MRI noise scale).
        target: the target cohort's acquisition.
        blur_mm: in-plane Gaussian sigma of the simulated kernel (mm).
        rng: noise generator.

    Returns:
        The simulated scan (new affine at the target spacing) and a record of what was applied
        (``blur_mm``, ``slice_fwhm_mm``, ``spacing_mm``, ``noise_added``, ``offset_added``).
    """
    from monai.data import MetaTensor
    from monai.transforms import Spacing
    from scipy.ndimage import gaussian_filter

    from medmtl.io.types import Scan
    from medmtl.shift.fingerprint import body_mask, noise_estimate

    arr = np.asarray(scan.image[0].detach().cpu().numpy(), dtype=np.float32)
    axes, own = world_axes(scan.image.affine)
    tgt = [float(target.spacing_ras[w]) if math.isfinite(target.spacing_ras[w]) else own[i] for i, w in enumerate(axes)]
    thick = int(np.argmax(tgt)) if max(tgt) > 1.5 * min(tgt) else None  # the slice axis, when there is one
    sigma_vox, fwhm = [], []
    for i in range(3):
        extra = math.sqrt(max(tgt[i] ** 2 - own[i] ** 2, 0.0))
        fwhm.append(round(extra, 3))
        s2 = (extra / FWHM_PER_SIGMA) ** 2 + (blur_mm ** 2 if i != thick else 0.0)
        sigma_vox.append(math.sqrt(s2) / own[i])
    if any(s > 0 for s in sigma_vox):
        arr = gaussian_filter(arr, sigma=sigma_vox, mode="nearest").astype(np.float32)
    img: Any = MetaTensor(arr[None], affine=scan.image.affine)
    if any(abs(t - o) > 1e-3 * o for t, o in zip(tgt, own)):
        img = Spacing(pixdim=tgt, mode="bilinear", padding_mode="border")(img)
    out = np.asarray(img[0].detach().cpu().numpy(), dtype=np.float32)
    mask = body_mask(out, scan.modality)
    now = noise_estimate(out, mask) if mask.any() else float("nan")
    want = target.noise if scan.modality == "CT" else (
        target.noise / max(abs(target.body_median), 1e-6) * abs(source.body_median))
    add = math.sqrt(max(want ** 2 - now ** 2, 0.0)) if math.isfinite(now) else 0.0
    if add > 0:
        # the estimator does not read added white noise at face value (anatomy and the
        # homogeneous-region selection bias it): measure its response to a first draw,
        # measured² ≈ now² + c·add², and redraw with the noise that reaches the target's reading
        noise = rng.normal(0.0, 1.0, size=out.shape).astype(np.float32)
        measured = noise_estimate(out + add * noise, mask)
        c = (measured ** 2 - now ** 2) / add ** 2 if math.isfinite(measured) else 1.0
        if c > 0.1:
            add = math.sqrt(max(want ** 2 - now ** 2, 0.0) / c)
        out = out + add * noise
    offset = 0.0
    if scan.modality == "CT" and source.hu_offset is not None and target.hu_offset is not None:
        offset = float(target.hu_offset - source.hu_offset)
        out = out + np.float32(offset)
    sim = Scan(ref=scan.ref, image=MetaTensor(out[None], affine=img.affine), modality=scan.modality,
               acquisition=dict(scan.acquisition))
    return sim, {"blur_mm": round(float(blur_mm), 3), "slice_fwhm_mm": fwhm, "spacing_mm": [round(t, 3) for t in tgt],
                 "noise_added": round(add, 3), "offset_added": round(offset, 3)}


def resim_items(scans: Sequence[Scan], lesions: Sequence[Lesion], spec: Any, *, source: Acquisition,
                target: Acquisition, realisations: int = 2, blur_max_mm: float = 3.0,
                seed: int = 0) -> tuple[list[SourceItem], list[dict[str, Any]]]:
    """Re-simulate every labelled source scan ``realisations`` times and preprocess it.

    Args:
        scans: labelled source scans.
        lesions: their lesions (LPS world mm; unchanged by the simulation).
        spec: the checkpoint's input spec.
        source: acquisition of the source cohort.
        target: acquisition of the target cohort.
        realisations: simulations per scan (each with its own kernel and noise).
        blur_max_mm: kernel sigmas are drawn from ``[0, blur_max_mm]`` mm.
        seed: seed of the kernel draws and the noise.

    Returns:
        The :data:`~medmtl.shift.source_patches.SourceItem` list and one record per simulation.
    """
    from medmtl.shift.source_patches import group_lesions, labelled_item

    if realisations < 1:
        raise ShiftError(f"realisations must be at least 1, got {realisations}")
    rng = np.random.default_rng(seed)
    by_scan = group_lesions(scans, lesions)
    items, records = [], []
    for s in scans:
        for r in range(realisations):
            sim, rec = simulate_acquisition(s, source=source, target=target,
                                            blur_mm=float(rng.uniform(0.0, blur_max_mm)), rng=rng)
            items.append(labelled_item(sim, by_scan[s.scan_id], spec))
            records.append({"scan_id": s.scan_id, "realisation": r, **rec})
    logger.info("resim: %d simulated scans from %d source scans", len(items), len(scans))
    return items, records


def resim_finetune(model: nn.Module, items: Sequence[SourceItem], patch_size: Sequence[int], *, steps: int = 100,
                   lr: float = 1e-4, batch_size: int = 4, seed: int = 0, progress: bool = False) -> list[float]:
    """Fine-tune ``model`` (in place, all parameters, BatchNorm in training mode) on re-simulated scans.

    Args:
        model: ``MultiTaskNet``.
        items: :func:`resim_items` output.
        patch_size: patch size in voxels.
        steps: optimisation steps of ``batch_size`` patches (half lesion-centred).
        lr: Adam learning rate.
        batch_size: patches per step (at least 2: BatchNorm of a 1×1×1 deepest level needs 2).
        seed: sampling seed.
        progress: a progress bar over the steps with the loss (:func:`medmtl.progress.bar`).

    Returns:
        The summed task loss per step.
    """
    import torch

    from medmtl.mtl.losses import task_losses
    from medmtl.progress import bar
    from medmtl.shift.source_patches import LabelledPatches

    if batch_size < 2:
        raise ShiftError(f"resim batch_size must be at least 2 (BatchNorm), got {batch_size}")
    gen = torch.Generator().manual_seed(seed)
    dev = next(model.parameters()).device
    patches = LabelledPatches(items, patch_size)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    history: list[float] = []
    model.train()
    try:
        for _ in (steps_bar := bar(range(steps), desc="resim", unit="step", enabled=progress)):
            x, t = patches.sample(gen, batch_size)
            out = model(x.to(dev))
            loss = torch.stack(list(task_losses(out, {k: v.to(dev) for k, v in t.items()}).values())).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            history.append(float(loss.detach()))
            steps_bar.set_postfix(loss=f"{history[-1]:.4f}", refresh=False)
    finally:
        model.eval()
    logger.info("resim: %d steps, task loss %.4f -> %.4f", steps, history[0] if history else 0, history[-1] if history else 0)
    return history
