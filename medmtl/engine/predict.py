"""``predict_folder``: a folder of scans in, lesions in LPS mm out, never losing work.

The model is loaded once. While the current scan is on the accelerator, background threads
read and preprocess the next ones (``prefetch``) and another decodes and writes the previous one. Each finished scan is written as its own record
(``scans/<id>.json``, atomically, after its maps and previews); a rerun skips the scans whose
record is complete for the same weights. A scan that fails is recorded with its reason and
the batch goes on. At the end the records are merged into ``predictions.csv``,
``predictions.json`` and ``failures.json`` (see :mod:`medmtl.engine.predict_io`).

A rerun with nothing left to predict is decided from the records before the model is loaded
(:func:`_noop_rerun`): on ``device="cpu"`` it imports neither torch nor MONAI. This module
imports torch only when a scan is predicted.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medmtl.engine import predict_io as pio
from medmtl.errors import ConfigError, MedmtlError
from medmtl.io.types import ScanRef, Skipped

if TYPE_CHECKING:  # pragma: no cover
    from medmtl.engine.inference import Predictor, PreparedScan, ScanPrediction

log = logging.getLogger(__name__)

ADAPT_CHOICES = ("off", "auto")
STAGES = ("read", "preprocess", "infer", "decode", "write")


def shard_refs(refs: Sequence[ScanRef], shard: tuple[int, int] | None) -> list[ScanRef]:
    """Round-robin shard of the scans sorted by id: rank ``r`` of ``w`` gets ``sorted[r::w]``.

    Raises:
        ConfigError: an invalid ``(rank, world_size)``.
    """
    ordered = sorted(refs, key=lambda r: r.scan_id)
    if shard is None:
        return ordered
    rank, world = shard
    if world < 1 or not 0 <= rank < world:
        raise ConfigError(f"shard must be (rank, world_size) with 0 <= rank < world_size, got {shard}")
    return ordered[rank::world]


def discover(input_dir: Path, scan_ids: Sequence[str] | None = None) -> tuple[list[ScanRef], list[Skipped]]:
    """Scans of ``input_dir`` (optionally only ``scan_ids``) and the discovery notes.

    Raises:
        ScanReadError: the folder does not exist or holds no scan.
        ConfigError: a requested scan id is not in the folder.
    """
    from medmtl.io.discover import discover_scans

    refs, skipped = discover_scans(input_dir)
    seen: set[str] = set()
    unique: list[ScanRef] = []
    for ref in refs:
        if ref.scan_id in seen:
            skipped.append(Skipped(ref.paths[0], f"duplicate scan id '{ref.scan_id}'; only the first is predicted",
                                   failed=True))
            continue
        seen.add(ref.scan_id)
        unique.append(ref)
    if scan_ids is not None:
        wanted = set(scan_ids)
        unknown = sorted(wanted - seen)
        if unknown:
            raise ConfigError(f"scan_ids {unknown[:3]} are not in {input_dir}; allowed: ids found by discovery")
        unique = [r for r in unique if r.scan_id in wanted]
    return unique, skipped


def _discovery_failures(skipped: Sequence[Skipped]) -> list[dict[str, Any]]:
    return [{"seriesuid": Path(s.path).name, "path": str(s.path), "reason": s.reason, "stage": "discovery"}
            for s in skipped if getattr(s, "failed", False)]


#: The drift gate of ``adapt="auto"``: given the predictor and the scans still to predict, it
#: returns the predictor to use (e.g. with BN statistics adapted) and what it did. Supplied by
#: :func:`medmtl.api.predict_folder` (``medmtl.shift.gate``), so the engine never imports ``shift``.
Gate = Callable[["Predictor", Sequence[ScanRef]], tuple["Predictor", dict[str, Any]]]


def _check_options(adapt: str, prefetch: int | None, gate: Gate | None) -> None:
    if adapt not in ADAPT_CHOICES:
        raise ConfigError(f"--adapt '{adapt}' is not allowed; use one of {', '.join(ADAPT_CHOICES)}")
    if adapt == "auto" and gate is None:
        raise ConfigError("--adapt auto needs the drift gate: call medmtl.api.predict_folder (or pass gate=...)")
    if prefetch is not None and prefetch < 1:
        raise ConfigError(f"--prefetch must be at least 1 (scans read ahead), got {prefetch}")


def default_prefetch(device: str) -> int:
    """Scans to read ahead by default: 1 on the CPU; on an accelerator half the CPU cores, 2..8."""
    if not device.startswith("cuda"):
        return 1
    return max(2, min(8, (os.cpu_count() or 2) // 2))


def predict_folder(
    *,
    checkpoint: Path,
    input_dir: Path,
    out_dir: Path,
    device: str = "auto",
    amp: str = "auto",
    overlap: float = 0.5,
    sw_batch_size: int = 4,
    tta: bool = False,
    save_maps: bool = False,
    preview: bool = False,
    adapt: str = "off",
    gate: Gate | None = None,
    progress: bool = True,
    scan_ids: Sequence[str] | None = None,
    shard: tuple[int, int] | None = None,
    prefetch: int | None = None,
    threshold: float | None = None,
) -> dict[str, Any]:
    """Detect lesions in every scan of a folder (see :func:`medmtl.api.predict_folder`).

    Args:
        checkpoint: checkpoint folder.
        input_dir: scan folder.
        out_dir: output folder (complete scans there are skipped).
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        amp: ``auto``, ``bf16``, ``fp16`` or ``off``.
        overlap: sliding-window overlap in [0, 1).
        sw_batch_size: windows per forward pass.
        tta: flip test-time augmentation.
        save_maps: write the maps as NIfTI in each input's geometry.
        preview: write PNG previews through each lesion.
        adapt: ``off`` or ``auto`` (run ``gate`` on the scans to predict first).
        gate: the drift gate of ``adapt="auto"`` (:data:`Gate`).
        progress: tqdm progress bar (scans/s).
        scan_ids: predict only these scans of the folder.
        shard: ``(rank, world_size)``: predict only this rank's round-robin share and do not
            write the merged tables (rank 0 merges with :func:`merge_folder` afterwards).
        prefetch: scans read and preprocessed ahead, in that many threads, while the network
            runs (``None``: :func:`default_prefetch` — 1 on the CPU, where more threads would
            compete with the network, up to 8 on a GPU, where reading and decompressing the
            scans is the bottleneck). Decoding and writing run in one more thread, so the
            accelerator only waits for the network.
        threshold: detection threshold replacing the card's (``None``: the card's).

    Returns:
        Summary: ``n_scans``, ``n_done``, ``n_skipped`` (already complete), ``n_failed``,
        ``failures``, ``outputs``, ``timings`` (seconds per stage summed over the scans done,
        ``wall_s``, ``scans_per_s``), ``device``, ``amp``.

    Raises:
        MedmtlError: the checkpoint, the folder or an option is invalid (per-scan problems
            are recorded instead).
    """
    t_start = time.perf_counter()
    _check_options(adapt, prefetch, gate)
    pio.check_output_folder(Path(input_dir), Path(out_dir))
    all_refs, skipped = discover(Path(input_dir), scan_ids)
    refs = shard_refs(all_refs, shard)
    opts = _Options(checkpoint=Path(checkpoint), out_dir=Path(out_dir), device=device, amp=amp, overlap=overlap,
                    sw_batch_size=sw_batch_size, tta=tta, save_maps=save_maps, preview=preview, adapt=adapt,
                    threshold=threshold, shard=shard, stamp=pio.resume_stamp(Path(checkpoint), adapt, threshold, _window(overlap, tta)))
    done = _noop_rerun(opts, refs, skipped, t_start)
    if done is not None:
        return done
    return _predict(opts, refs, skipped, gate=gate, prefetch=prefetch, progress=progress, t_start=t_start)


@dataclass(frozen=True)
class _Options:
    """The options of one :func:`predict_folder` call that the records and the provenance depend on."""

    checkpoint: Path
    out_dir: Path
    device: str
    amp: str
    overlap: float
    sw_batch_size: int
    tta: bool
    save_maps: bool
    preview: bool
    adapt: str
    threshold: float | None
    shard: tuple[int, int] | None
    stamp: str | None  # :func:`medmtl.engine.predict_io.resume_stamp`; None when the card is unreadable

    def lock(self) -> contextlib.AbstractContextManager[None]:
        """One process per output folder (sharded ranks share theirs by design and skip the lock)."""
        return pio.output_lock(self.out_dir) if self.shard is None else contextlib.nullcontext()


@dataclass
class _Run:
    """What one call did, for its summary."""

    out_dir: Path
    provenance: dict[str, Any]
    device: str
    amp: str
    failures: list[dict[str, Any]] = field(default_factory=list)
    n_done: int = 0
    totals: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))


def _predict(opts: _Options, refs: Sequence[ScanRef], skipped: Sequence[Skipped], *, gate: Gate | None,
             prefetch: int | None, progress: bool, t_start: float) -> dict[str, Any]:
    """Load the model, skip the complete scans, predict the others and merge (see :func:`predict_folder`)."""
    from medmtl.engine.inference import Predictor

    predictor = Predictor.from_checkpoint(
        opts.checkpoint, device=opts.device, amp=opts.amp, overlap=opts.overlap, sw_batch_size=opts.sw_batch_size,
        tta=opts.tta, decode_overrides={"threshold": opts.threshold} if opts.threshold is not None else None,
    )
    out_dir = opts.out_dir
    with opts.lock():
        (out_dir / "scans").mkdir(parents=True, exist_ok=True)
        resume = pio.resume_key(predictor.card, opts.adapt, predictor.decode, _window(opts.overlap, opts.tta))
        pending = [r for r in refs if not pio.is_complete(out_dir, r.scan_id, predictor.weights_sha256,
                                                           need_maps=opts.save_maps, need_previews=opts.preview,
                                                           resume=resume)]
        shift_info = None
        if pending and opts.adapt == "auto" and gate is not None:
            predictor, shift_info = gate(predictor, pending)
        provenance = _provenance(predictor, opts, resume, shift_info)
        batch = _Batch(out_dir, predictor, provenance, save_maps=opts.save_maps, preview=opts.preview)
        batch.run(pending, prefetch if prefetch is not None else default_prefetch(str(predictor.device)), progress)
        return _summary(batch.outcome(), refs, skipped, opts.shard, n_skipped=len(refs) - len(pending),
                        t_start=t_start)


def cpu_amp(amp: str) -> str | None:
    """:func:`medmtl.engine.inference.resolve_amp` for inference on the CPU, without importing
    torch (a test holds the two together); ``None`` for an unknown value."""
    from medmtl.engine.cpu_caps import cpu_auto_amp

    if amp == "auto":
        return cpu_auto_amp(inference=True)
    return amp if amp in ("bf16", "fp16", "off") else None


def _window(overlap: float, tta: bool) -> dict[str, Any]:
    """The sliding-window settings that change a scan's lesions (part of the resume key)."""
    return {"overlap": float(overlap), "tta": bool(tta)}


def _device_and_amp(device: str, amp: str) -> tuple[str, str] | None:
    """``(device, amp)`` as :class:`~medmtl.engine.inference.Predictor` resolves them; torch is
    imported only for a device other than ``cpu`` (to ask for CUDA). ``None``: an invalid ``amp``
    (loading the predictor reports it).

    Raises:
        ConfigError: CUDA asked for where there is none (as the predictor says).
    """
    if device.strip().lower() == "cpu":
        resolved = cpu_amp(amp)
        return None if resolved is None else ("cpu", resolved)
    # torch alone: no model, no MONAI
    from medmtl.engine.inference import AMP_CHOICES, resolve_amp, resolve_device

    if amp not in AMP_CHOICES:
        return None
    dev = resolve_device(device)
    return str(dev), resolve_amp(amp, dev, inference=True)


def _noop_rerun(opts: _Options, refs: Sequence[ScanRef], skipped: Sequence[Skipped],
                t_start: float) -> dict[str, Any] | None:
    """The summary of a rerun that has nothing to predict, decided from the records alone.

    A complete record written under the same :func:`~medmtl.engine.predict_io.resume_stamp`
    gives the weights hash and resume key that loading the card would give; when the weights
    file still has that hash and every scan is complete for them
    (:func:`~medmtl.engine.predict_io.is_complete`, unchanged), the tables are merged with the
    provenance a full call writes, and the model is never loaded. ``None`` when a scan must be
    predicted or the records cannot tell (no stamped record, e.g. one written by an older
    medmtl; a changed card, ``--adapt`` or ``--threshold``; changed weights; an invalid option):
    the full path then decides, and reports any error.
    """
    if opts.stamp is None or not refs or not (0.0 <= opts.overlap < 1.0 and opts.sw_batch_size >= 1):
        return None
    known = pio.stamped_provenance(opts.out_dir, [r.scan_id for r in refs], opts.stamp)
    if known is None or not pio.weights_match(opts.checkpoint, known["weights_sha256"]):
        return None
    resolved = _device_and_amp(opts.device, opts.amp)
    if resolved is None:
        return None
    with opts.lock():
        if not all(pio.is_complete(opts.out_dir, r.scan_id, known["weights_sha256"], need_maps=opts.save_maps,
                                   need_previews=opts.preview, resume=known["resume_key"]) for r in refs):
            return None
        provenance = _run_provenance(opts, weights_sha256=known["weights_sha256"], resume=known["resume_key"],
                                     device=resolved[0], amp=resolved[1], decode=known.get("decode"),
                                     adaptation=known.get("adaptation_in_card"), shift=None)
        run = _Run(opts.out_dir, provenance, device=resolved[0], amp=resolved[1])
        return _summary(run, refs, skipped, opts.shard, n_skipped=len(refs), t_start=t_start)


def _summary(batch: _Run, refs: Sequence[ScanRef], skipped: Sequence[Skipped], shard: tuple[int, int] | None,
             *, n_skipped: int, t_start: float) -> dict[str, Any]:
    """Merge the records into the final tables (unless sharded) and summarise the call."""
    failures = list(batch.failures)
    if shard is not None and shard[0] == 0:
        failures.extend(_discovery_failures(skipped))
    outputs: dict[str, Any] = {"scans_dir": str(batch.out_dir / "scans")}
    if shard is None:
        merged = pio.merge_outputs(batch.out_dir, [r.scan_id for r in refs],
                                   extra_failures=_discovery_failures(skipped), run_info=batch.provenance)
        outputs.update(merged["outputs"])
        failures = merged["failures"]
    wall = time.perf_counter() - t_start
    n_done = batch.n_done
    return {
        "n_scans": len(refs), "n_done": n_done, "n_skipped": n_skipped, "n_failed": len(failures),
        "failures": failures, "outputs": outputs,
        "timings": {**batch.totals, "wall_s": wall, "scans_per_s": n_done / wall if wall > 0 and n_done else 0.0},
        "device": batch.device, "amp": batch.amp,
    }


def _provenance(predictor: Predictor, opts: _Options, resume: str, shift_info: dict[str, Any] | None) -> dict[str, Any]:
    """The call record written into every scan record and ``predictions.json``."""
    return _run_provenance(opts, weights_sha256=predictor.weights_sha256, resume=resume, device=str(predictor.device),
                           amp=predictor.amp, decode=predictor.decode.to_dict(),
                           adaptation=[a.to_dict() for a in predictor.card.adaptation], shift=shift_info)


def _run_provenance(opts: _Options, *, weights_sha256: str, resume: str, device: str, amp: str, decode: Any,
                    adaptation: Any, shift: dict[str, Any] | None) -> dict[str, Any]:
    """The call record from plain values (a full call and :func:`_noop_rerun` write the same one)."""
    from medmtl import __version__

    return {
        "medmtl_version": __version__,
        "checkpoint": str(opts.checkpoint),
        "weights_sha256": weights_sha256,
        "resume_key": resume,
        "resume_stamp": opts.stamp,
        "device": device,
        "amp": amp,
        "tta": bool(opts.tta),
        "overlap": float(opts.overlap),
        "sw_batch_size": int(opts.sw_batch_size),
        "decode": decode,
        "adaptation_in_card": adaptation,
        "shift": shift,
        "shard": list(opts.shard) if opts.shard is not None else None,
    }


class _Batch:
    """The scans of one call, through a pipeline: ``workers`` threads read + preprocess ahead,
    the calling thread runs the network, one thread decodes and writes. A failing scan is
    recorded at whichever stage it fails and the batch goes on."""

    def __init__(self, out_dir: Path, predictor: Predictor, provenance: dict[str, Any], *, save_maps: bool,
                 preview: bool) -> None:
        self.out_dir, self.predictor, self.provenance = out_dir, predictor, provenance
        self.save_maps, self.preview = save_maps, preview
        self.totals = dict.fromkeys(STAGES, 0.0)
        self.failures: list[dict[str, Any]] = []
        self.n_done = 0
        self._posts: deque[tuple[ScanRef, Future[dict[str, float]]]] = deque()

    def outcome(self) -> _Run:
        """What the batch did, for the call's summary."""
        return _Run(self.out_dir, self.provenance, str(self.predictor.device), self.predictor.amp,
                    self.failures, self.n_done, self.totals)

    def load(self, ref: ScanRef) -> PreparedScan:
        """Read and preprocess one scan (prefetch thread)."""
        from medmtl.io.read import read_scan

        t0 = time.perf_counter()
        scan = read_scan(ref)
        t_read = time.perf_counter() - t0
        prepared = self.predictor.preprocess(scan)
        prepared.timings["read"] = t_read
        return prepared

    def fail(self, ref: ScanRef, exc: BaseException) -> None:
        """Record a failed scan (its record file and the failure list)."""
        reason = str(exc) if isinstance(exc, MedmtlError) else f"{type(exc).__name__}: {exc}"
        log.warning("scan %s failed: %s", ref.scan_id, reason)
        log.debug("scan %s failed", ref.scan_id, exc_info=exc)
        pio.write_failure(self.out_dir, ref.scan_id, str(ref.paths[0] if ref.format != "dicom" else ref.folder),
                          reason)
        self.failures.append({"seriesuid": ref.scan_id, "path": str(ref.paths[0]), "reason": reason,
                              "stage": "predict"})

    def post(self, ref: ScanRef, prepared: PreparedScan, maps: dict[str, Any], infer_s: float) -> dict[str, float]:
        """Decode and write one scan (writer thread)."""
        result = self.predictor.decode_maps(prepared, maps, infer_s)
        return _write_scan(self.out_dir, ref, result, self.predictor, self.provenance, self.save_maps, self.preview)

    def drain(self, keep: int, bar: Any) -> None:
        """Collect finished decode/write jobs until at most ``keep`` are outstanding (bounds memory)."""
        while len(self._posts) > keep:
            ref, fut = self._posts.popleft()
            try:
                timings = fut.result()
                for k in STAGES:
                    self.totals[k] += timings.get(k, 0.0)
                self.n_done += 1
            except Exception as exc:  # a failing scan is recorded; the batch goes on
                self.fail(ref, exc)
            bar.update(1)

    def run(self, pending: Sequence[ScanRef], workers: int, progress: bool) -> None:
        """Predict every scan of ``pending``."""
        from medmtl.progress import bar as progress_bar

        bar = progress_bar(total=len(pending), unit="scan", desc="predict", enabled=progress)
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="medmtl-prefetch") as loader, \
                ThreadPoolExecutor(max_workers=1, thread_name_prefix="medmtl-write") as writer:
            loads: deque[Future[PreparedScan]] = deque(loader.submit(self.load, r) for r in pending[:workers])
            nxt = len(loads)
            for ref in pending:
                current = loads.popleft()
                if nxt < len(pending):
                    loads.append(loader.submit(self.load, pending[nxt]))
                    nxt += 1
                try:
                    prepared = current.result()
                    maps, infer_s = self.predictor.run_network(prepared)
                except Exception as exc:  # a failing scan is recorded; the batch goes on
                    self.fail(ref, exc)
                    bar.update(1)
                    continue
                self._posts.append((ref, writer.submit(self.post, ref, prepared, maps, infer_s)))
                self.drain(workers, bar)
            self.drain(0, bar)
        bar.close()


def _write_scan(
    out_dir: Path,
    ref: ScanRef,
    result: ScanPrediction,
    predictor: Predictor,
    provenance: dict[str, Any],
    save_maps: bool,
    preview: bool,
) -> dict[str, float]:
    """Write a scan's maps, previews and (last) its record; returns its timings incl. ``write``."""
    import numpy as np

    t0 = time.perf_counter()
    scan = result.prepared.scan
    affine_in = np.asarray(scan.image.affine.detach().cpu().numpy(), dtype=np.float64)
    shape_in = tuple(int(s) for s in scan.image.shape[-3:])
    maps: list[str] = []
    previews: list[str] | None = None
    if save_maps:
        maps = pio.save_maps(out_dir, ref.scan_id, result.maps, affine_pre=result.affine_ras,
                             affine_input=affine_in, shape_input=shape_in,
                             decode=predictor.decode)
    if preview:
        from medmtl.engine.preview import save_lesion_previews

        previews = save_lesion_previews(out_dir, scan, result.detections, threshold=predictor.decode.threshold)
    timings = dict(result.timings)
    timings["write"] = time.perf_counter() - t0
    record = {
        "format": pio.RECORD_FORMAT,
        "status": "complete",
        "seriesuid": ref.scan_id,
        "weights_sha256": predictor.weights_sha256,
        "input": {"format": ref.format, "path": str(ref.paths[0] if ref.format != "dicom" else ref.folder),
                  "n_files": len(ref.paths)},
        "lesions": [pio.detection_to_dict(d) for d in result.detections],
        "provenance": {**provenance, "scan_warnings": list(scan.warnings)},
        "timings": timings,
        "geometry": {
            "input_shape": list(shape_in),
            "input_affine_ras": affine_in.tolist(),
            "preprocessed_shape": [int(s) for s in result.prepared.image.shape[-3:]],
            "preprocessed_affine_ras": np.asarray(result.affine_ras).tolist(),
        },
        "outputs": {"maps": maps, "previews": previews},
    }
    pio.write_record(out_dir, record)
    return timings


def merge_folder(*, input_dir: Path, out_dir: Path) -> dict[str, Any]:
    """Merge the per-scan records of a (sharded) run into the final tables.

    Discovers ``input_dir`` again so that scans no rank finished show up as missing.

    Returns:
        ``{"n_scans", "n_complete", "n_failed", "n_missing", "failures", "outputs"}``.
    """
    refs, skipped = discover(Path(input_dir))
    merged = pio.merge_outputs(Path(out_dir), [r.scan_id for r in refs],
                               extra_failures=_discovery_failures(skipped),
                               run_info={"merged_from": "per-scan records", "input_dir": str(input_dir)})
    return {"n_scans": len(refs), **merged}
