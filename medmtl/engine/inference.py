"""Sliding-window inference of the multi-task net over whole scans, and the per-scan predictor.

:func:`sliding_window_maps` runs MONAI's :class:`~monai.inferers.SlidingWindowInferer` with
gaussian blending over all three output maps at once (the network returns a dict), under
``torch.autocast`` (bf16 / fp16), optionally averaged over flips (test-time augmentation),
with the output stitched on the GPU and automatic fallbacks on out-of-memory: buffered
stitching (windows accumulated on the GPU, copied to CPU per slab), then CPU stitching, then
smaller window batches.

:class:`Predictor` holds one model (+ its input spec and decode settings) and turns a
:class:`~medmtl.io.types.Scan` into detections in LPS mm; :mod:`medmtl.engine.predict` runs it
over folders.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from medmtl.errors import ConfigError, MedmtlError

if TYPE_CHECKING:  # pragma: no cover
    from medmtl.engine.card import ModelCard
    from medmtl.io.types import Detection, Scan

log = logging.getLogger(__name__)

MAP_KEYS = ("heatmap", "log_diameter", "malignancy")
AMP_CHOICES = ("auto", "bf16", "fp16", "off")
#: Flip sets of the test-time augmentation (spatial dims of a ``(B, C, I, J, K)`` tensor).
TTA_FLIPS: tuple[tuple[int, ...], ...] = ((), (2,), (3,), (4,))

_OOM_ERRORS: tuple[type[BaseException], ...] = (torch.cuda.OutOfMemoryError,)
if hasattr(torch, "OutOfMemoryError"):
    _OOM_ERRORS = (*_OOM_ERRORS, torch.OutOfMemoryError)


def resolve_device(device: str) -> torch.device:
    """Turn ``auto|cpu|cuda|cuda:N`` into a :class:`torch.device`.

    Raises:
        ConfigError: an unknown value, or CUDA asked for on a machine without it.
    """
    d = device.strip().lower()
    if d == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if d == "cpu":
        return torch.device("cpu")
    if d == "cuda" or d.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {device}: no CUDA GPU is available here; use --device cpu or auto")
        dev = torch.device(d)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(
                f"--device {device}: only {torch.cuda.device_count()} GPU(s) (cuda:0…"
                f"cuda:{torch.cuda.device_count() - 1}); pick one of them"
            )
        return dev
    raise ConfigError(f"--device '{device}' is not allowed; use auto, cpu, cuda or cuda:N")


def resolve_amp(amp: str, device: torch.device, *, inference: bool = False) -> str:
    """Turn ``auto`` into a precision: ``bf16`` on CUDA (``fp16`` if bf16 is unsupported); on
    CPU ``off`` for training, and for inference ``bf16`` where the CPU has native bfloat16
    instructions (:func:`~medmtl.engine.cpu_caps.cpu_auto_amp`), ``off`` elsewhere.

    Args:
        amp: ``auto``, ``bf16``, ``fp16`` or ``off``.
        device: the device that runs the network.
        inference: resolve for prediction (:class:`Predictor`) rather than for training steps
            and their validation.

    Raises:
        ConfigError: an unknown value.
    """
    if amp not in AMP_CHOICES:
        raise ConfigError(f"--amp '{amp}' is not allowed; use one of {', '.join(AMP_CHOICES)}")
    if amp != "auto":
        return amp
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    from medmtl.engine.cpu_caps import cpu_auto_amp

    return cpu_auto_amp(inference=inference)


def autocast_dtype(amp: str) -> torch.dtype | None:
    """The autocast dtype of a resolved AMP mode (``bf16``, ``fp16``; ``None`` for ``off``)."""
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)


def _pad_to_roi(image: torch.Tensor, roi_size: Sequence[int]) -> tuple[torch.Tensor, list[slice]]:
    """Pad a ``(1, C, I, J, K)`` image symmetrically to at least ``roi_size`` with each channel's minimum.

    The minimum (air after CT windowing) is a better filler than 0, which is the ImageNet mean.

    Returns:
        The padded image and the slices that crop the original region back out.
    """
    spatial = image.shape[2:]
    pads = [max(int(r) - int(s), 0) for s, r in zip(spatial, roi_size)]
    crop = [slice(None), slice(None)] + [slice(p // 2, p // 2 + s) for p, s in zip(pads, spatial)]
    if not any(pads):
        return image, crop
    pad_arg: list[int] = []
    for p in reversed(pads):  # F.pad wants the last dim first
        pad_arg += [p // 2, p - p // 2]
    mins = image.amin(dim=(2, 3, 4), keepdim=True)
    padded = F.pad(image - mins, pad_arg, mode="constant", value=0.0) + mins
    return padded, crop


@dataclass(frozen=True)
class _WindowPlan:
    """One way to run the sliding window: window size and batch, overlap, forward device and
    where the maps are stitched (``device``, ``buffered`` or ``cpu``)."""

    roi_size: tuple[int, ...]
    sw_batch_size: int
    overlap: float
    device: torch.device
    stitch: str


def _run_inferer(
    predictor: Callable[[torch.Tensor], dict[str, torch.Tensor]], image: torch.Tensor, plan: _WindowPlan
) -> dict[str, torch.Tensor]:
    """MONAI's ``SlidingWindowInferer`` (gaussian blending) over ``image`` with ``plan``."""
    from monai.inferers import SlidingWindowInferer

    roi_size, sw_batch_size, overlap, device, stitch = (plan.roi_size, plan.sw_batch_size, plan.overlap,
                                                        plan.device, plan.stitch)
    if stitch == "device":
        inferer = SlidingWindowInferer(
            roi_size, sw_batch_size, overlap, mode="gaussian", sw_device=device, device=device
        )
    elif stitch == "buffered":
        inferer = SlidingWindowInferer(
            roi_size, sw_batch_size, overlap, mode="gaussian", sw_device=device, device="cpu", buffer_steps=1
        )
    else:
        inferer = SlidingWindowInferer(
            roi_size, sw_batch_size, overlap, mode="gaussian", sw_device=device, device="cpu"
        )
    out = inferer(image, predictor)
    if not isinstance(out, Mapping):
        raise TypeError(f"the model must return a dict of maps, got {type(out).__name__}")
    return {k: v for k, v in out.items()}  # noqa: C416 (a plain dict from a Mapping)


def _stitch_plans(device_type: str, stitch_device: str, sw_batch_size: int) -> list[tuple[str, int]]:
    """Ordered ``(stitching, sw_batch_size)`` attempts: the first that fits in memory wins.

    On an accelerator with ``stitch_device="auto"``: stitch on the device, then buffered
    (windows accumulated on the device, slabs copied to CPU), then CPU stitching, then CPU
    stitching with halved window batches down to 1.
    """
    if device_type == "cpu" or stitch_device == "cpu":
        return [("cpu", sw_batch_size)]
    if stitch_device == "device":
        return [("device", sw_batch_size)]
    plans = [("device", sw_batch_size), ("buffered", sw_batch_size), ("cpu", sw_batch_size)]
    bs = sw_batch_size // 2
    while bs >= 1:
        plans.append(("cpu", bs))
        bs //= 2
    return plans


def _check_window_args(
    image: torch.Tensor, *, overlap: float, sw_batch_size: int, amp: str, stitch_device: str
) -> None:
    """Validate the :func:`sliding_window_maps` settings.

    Raises:
        ValueError: ``image`` is not ``(1, C, I, J, K)``.
        ConfigError: a setting is out of range.
    """
    if image.ndim != 5 or image.shape[0] != 1:
        raise ValueError(f"image must be (1, C, I, J, K), got {tuple(image.shape)}")
    if not 0.0 <= overlap < 1.0:
        raise ConfigError(f"--overlap must be in [0, 1), got {overlap}")
    if sw_batch_size < 1:
        raise ConfigError(f"--sw-batch-size must be >= 1, got {sw_batch_size}")
    if amp not in ("bf16", "fp16", "off"):
        raise ConfigError(f"amp '{amp}' is not allowed here; use bf16, fp16 or off")
    if stitch_device not in ("auto", "device", "cpu"):
        raise ConfigError(f"stitch_device '{stitch_device}' is not allowed; use auto, device or cpu")


def _tta_maps(
    predictor: Callable[[torch.Tensor], dict[str, torch.Tensor]], image: torch.Tensor, plan: _WindowPlan, *, tta: bool
) -> dict[str, torch.Tensor]:
    """Padded-grid maps of one stitching plan, averaged over :data:`TTA_FLIPS` when ``tta``.

    Heatmap probabilities are averaged and returned as logits; the other maps are averaged
    as they are. Without ``tta`` the maps of the single unflipped pass are returned.
    """
    flips = TTA_FLIPS if tta else ((),)
    acc: dict[str, torch.Tensor] = {}
    with torch.inference_mode():
        for axes in flips:
            x = torch.flip(image, axes) if axes else image
            maps = _run_inferer(predictor, x, plan)
            for k in MAP_KEYS:
                v = maps[k].float()
                v = torch.flip(v, axes) if axes else v
                if tta and k == "heatmap":
                    v = torch.sigmoid(v)  # average probabilities, not logits
                acc[k] = v if k not in acc else acc[k] + v
    result: dict[str, torch.Tensor] = {}
    for k in MAP_KEYS:
        mean = acc[k] / len(flips) if tta else acc[k]
        if tta and k == "heatmap":
            mean = torch.logit(mean.clamp(1e-7, 1.0 - 1e-7))
        result[k] = mean
    return result


def sliding_window_maps(
    model: torch.nn.Module,
    image: torch.Tensor,
    *,
    roi_size: Sequence[int],
    sw_batch_size: int = 4,
    overlap: float = 0.25,
    device: str | torch.device = "cpu",
    amp: str = "off",
    tta: bool = False,
    stitch_device: str = "auto",
) -> dict[str, torch.Tensor]:
    """Whole-volume maps of the multi-task net by gaussian-blended sliding windows.

    Args:
        model: network whose ``forward(x (B, C, i, j, k))`` returns a dict with ``"heatmap"``
            (logits), ``"log_diameter"`` (log mm) and ``"malignancy"`` (logits), each
            ``(B, 1, i, j, k)``; it is put in ``eval()`` mode by the caller.
        image: ``(1, C, I, J, K)`` preprocessed volume (any device; not modified).
        roi_size: window size ``(i, j, k)`` in voxels (the training patch size).
        sw_batch_size: windows per forward pass.
        overlap: overlap of neighbouring windows in [0, 1).
        device: device of the forward passes.
        amp: ``"bf16"``, ``"fp16"`` or ``"off"`` (``torch.autocast``; bf16 works on CPU too).
        tta: average over the identity and the three single-axis flips: heatmap
            probabilities are averaged (and returned as logits again), log-diameter and
            malignancy logits are averaged.
        stitch_device: ``"auto"`` (stitch on the forward device; on out-of-memory fall back to
            buffered, then CPU stitching, then halved window batches), ``"device"`` or ``"cpu"``.

    Returns:
        ``{"heatmap", "log_diameter", "malignancy"}`` → float32 CPU tensors ``(1, 1, I, J, K)``.

    Raises:
        ConfigError: a setting is out of range.
        MedmtlError: even the most frugal fallback ran out of memory.
    """
    _check_window_args(image, overlap=overlap, sw_batch_size=sw_batch_size, amp=amp, stitch_device=stitch_device)
    dev = torch.device(device)
    roi = [int(r) for r in roi_size]
    padded, crop = _pad_to_roi(image.detach().as_subclass(torch.Tensor).float(), roi)
    cast = autocast_dtype(amp)

    def predictor(x: torch.Tensor) -> dict[str, torch.Tensor]:
        with torch.autocast(device_type=dev.type, dtype=cast or torch.float32, enabled=cast is not None):
            out = model(x)
        return {k: out[k].float() for k in MAP_KEYS}

    plans = _stitch_plans(dev.type, stitch_device, sw_batch_size)
    x_dev = padded.to(dev)
    for n, (stitch, bs) in enumerate(plans):
        try:
            maps = _tta_maps(predictor, x_dev, _WindowPlan(tuple(roi), bs, overlap, dev, stitch), tta=tta)
            return {k: v[tuple(crop)].to("cpu", torch.float32).contiguous() for k, v in maps.items()}
        except _OOM_ERRORS:
            if n == len(plans) - 1:
                raise MedmtlError(
                    f"out of GPU memory on a {tuple(image.shape[2:])} volume even with CPU stitching and"
                    " --sw-batch-size 1; use --device cpu or a GPU with more memory"
                ) from None
            log.warning("out of GPU memory with %s stitching, sw_batch_size=%d; retrying with %s, %d",
                        stitch, bs, *plans[n + 1])
            if dev.type == "cuda":
                torch.cuda.empty_cache()
    raise AssertionError("unreachable")  # pragma: no cover


@dataclass
class PreparedScan:
    """A scan after preprocessing, ready for the network.

    Attributes:
        scan: the scan as read (input geometry, HU).
        image: ``(C, I, J, K)`` preprocessed volume (CPU, float32).
        affine_ras: 4×4 voxel→RAS affine of the preprocessed grid (the maps' grid).
        timings: seconds spent (``preprocess``; the reader adds ``read``).
    """

    scan: Scan
    image: torch.Tensor
    affine_ras: np.ndarray
    timings: dict[str, float] = field(default_factory=dict)


@dataclass
class ScanPrediction:
    """Everything predicted for one scan.

    Attributes:
        scan_id: the scan's id.
        detections: lesions in LPS mm, by decreasing probability.
        maps: ``heatmap`` / ``log_diameter`` / ``malignancy``, float32 CPU ``(1, 1, I, J, K)``
            on the preprocessed grid.
        affine_ras: the maps' voxel→RAS affine.
        prepared: the preprocessed input (kept for previews and map export).
        timings: seconds per stage (``preprocess``, ``infer``, ``decode``).
    """

    scan_id: str
    detections: list[Detection]
    maps: dict[str, torch.Tensor]
    affine_ras: np.ndarray
    prepared: PreparedScan
    timings: dict[str, float]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Predictor:
    """One model, its input spec and decode settings: scans in, detections out.

    Args:
        model: the multi-task net (moved to ``device`` and put in ``eval()`` mode here).
        card: its :class:`~medmtl.engine.card.ModelCard` (input spec, harmonisation, patch size, decode).
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        amp: ``auto``, ``bf16``, ``fp16`` or ``off``.
        overlap: sliding-window overlap in [0, 1).
        sw_batch_size: windows per forward pass.
        tta: flip test-time augmentation.
        decode_overrides: values replacing the card's decode settings (``threshold``,
            ``nms_radius_mm``, ``max_lesions``, ``temperature``).

    Example:
        >>> pred = Predictor.from_checkpoint("runs/tiny/checkpoint", device="cpu")  # doctest: +SKIP
        >>> detections, maps, timings = pred.predict_scan(scan)  # doctest: +SKIP
    """

    def __init__(
        self,
        model: torch.nn.Module,
        card: ModelCard,
        *,
        device: str = "auto",
        amp: str = "auto",
        overlap: float = 0.5,
        sw_batch_size: int = 4,
        tta: bool = False,
        decode_overrides: Mapping[str, Any] | None = None,
    ) -> None:
        from medmtl.models.spec import check_patch_divisible
        from medmtl.transforms.presets import preprocess_transforms

        self.device = resolve_device(device)
        self.amp = resolve_amp(amp, self.device, inference=True)
        if not 0.0 <= overlap < 1.0:
            raise ConfigError(f"--overlap must be in [0, 1), got {overlap}")
        if sw_batch_size < 1:
            raise ConfigError(f"--sw-batch-size must be >= 1, got {sw_batch_size}")
        self.overlap = float(overlap)
        self.sw_batch_size = int(sw_batch_size)
        self.tta = bool(tta)
        self.card = card
        self.spec = card.input_spec
        self.roi_size = card.patch_size
        self.decode = card.decode.replace(**dict(decode_overrides or {}))
        divisor = tuple(int(d) for d in getattr(model, "divisor", (1, 1, 1)))
        check_patch_divisible(self.roi_size, divisor, "model card patch_size")
        self.model = model.to(self.device).eval()
        # the card's intensity harmonisation (``medmtl adapt --method histmatch|n4``) comes first
        self._transforms = preprocess_transforms(self.spec, card.harmonisation)

    @classmethod
    def from_checkpoint(cls, folder: Any, **kwargs: Any) -> Predictor:
        """Load a checkpoint folder (once) and build the predictor; ``kwargs`` as in the class."""
        from medmtl.engine.checkpoint import load_checkpoint

        model, card = load_checkpoint(folder, device="cpu")
        return cls(model, card, **kwargs)

    @property
    def weights_sha256(self) -> str:
        """SHA-256 of the checkpoint's weights (provenance, resume checks)."""
        return self.card.weights_sha256

    def with_model(self, model: torch.nn.Module, card: ModelCard | None = None) -> Predictor:
        """A predictor with the same settings around another network (e.g. BN-adapted by the drift gate)."""
        out = copy.copy(self)
        out.model = model.to(self.device).eval()
        if card is not None:
            out.card = card
        return out

    def preprocess(self, scan: Scan) -> PreparedScan:
        """Harmonise (per the card) and preprocess a scan (orientation, spacing, windows, normalisation).

        Thread-safe: it touches no model state, so it can run in a prefetch thread.

        Raises:
            MedmtlError: the scan's modality does not match the model's input spec.
        """
        if scan.modality.upper() != self.spec.modality:
            raise MedmtlError(
                f"scan '{scan.scan_id}' is {scan.modality} but the checkpoint expects {self.spec.modality};"
                " use a checkpoint trained on that modality"
            )
        t0 = time.perf_counter()
        out = self._transforms({"image": scan.image})["image"]
        affine = np.asarray(out.affine.detach().cpu().numpy() if hasattr(out, "affine") else scan.image.affine,
                            dtype=np.float64)
        image = out.detach().as_subclass(torch.Tensor).float().contiguous()
        return PreparedScan(scan=scan, image=image, affine_ras=affine,
                            timings={"preprocess": time.perf_counter() - t0})

    def run_network(self, prepared: PreparedScan) -> tuple[dict[str, torch.Tensor], float]:
        """Sliding-window maps of a preprocessed scan (the accelerator part of :meth:`infer`).

        Returns:
            ``(maps, seconds)``: maps ``{name: (1, C, I, J, K)}`` float32 on the CPU, on the
            preprocessed grid; the wall time of the network, synchronised with the device.
        """
        t0 = time.perf_counter()
        maps = sliding_window_maps(
            self.model,
            prepared.image[None],
            roi_size=self.roi_size,
            sw_batch_size=self.sw_batch_size,
            overlap=self.overlap,
            device=self.device,
            amp=self.amp,
            tta=self.tta,
        )
        _sync(self.device)
        return maps, time.perf_counter() - t0

    def decode_maps(self, prepared: PreparedScan, maps: dict[str, torch.Tensor], infer_s: float) -> ScanPrediction:
        """Lesions (LPS mm) from the maps of :meth:`run_network` (the CPU part of :meth:`infer`).

        Size and malignancy: the card's per-lesion readout on the scan's HU where it has one, else the heads.
        """
        from medmtl.engine.decode import decode_lesions

        t1 = time.perf_counter()
        detections = decode_lesions(maps, prepared.affine_ras, seriesuid=prepared.scan.scan_id, settings=self.decode)
        readout = self.card.lesion_readout
        if readout is not None and detections:  # the card's per-lesion readout re-measures size / malignancy
            from medmtl.engine.lesion_readout import score_detections

            image = prepared.scan.image
            detections = score_detections(readout, image.detach().cpu().numpy(), np.asarray(image.affine),
                                          detections)
        timings = dict(prepared.timings)
        timings.update({"infer": infer_s, "decode": time.perf_counter() - t1})
        return ScanPrediction(prepared.scan.scan_id, detections, maps, prepared.affine_ras, prepared, timings)

    def infer(self, prepared: PreparedScan) -> ScanPrediction:
        """Sliding-window maps and decoding of a preprocessed scan."""
        maps, infer_s = self.run_network(prepared)
        return self.decode_maps(prepared, maps, infer_s)

    def predict_scan(self, scan: Scan) -> tuple[list[Detection], dict[str, torch.Tensor], dict[str, float]]:
        """Preprocess, infer and decode one scan.

        Returns:
            ``(detections, maps, timings)``: detections in LPS mm; maps float32 CPU
            ``(1, 1, I, J, K)`` on the preprocessed grid; seconds per stage.
        """
        result = self.infer(self.preprocess(scan))
        return result.detections, result.maps, result.timings
