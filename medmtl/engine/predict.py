"""``predict_folder``: a folder of scans in, lesions in LPS mm out, never losing work.

The model is loaded once. While the current scan is on the accelerator, background threads
read and preprocess the next ones (``prefetch``) and another decodes and writes the previous one. Each finished scan is written as its own record
(``scans/<id>.json``, atomically, after its maps and previews); a rerun skips the scans whose
record is complete for the same weights. A scan that fails is recorded with its reason and
the batch goes on. At the end the records are merged into ``predictions.csv``,
``predictions.json`` and ``failures.json`` (see :mod:`medmtl.engine.predict_io`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from medmtl.engine import predict_io as pio
from medmtl.engine.inference import Predictor, PreparedScan, ScanPrediction
from medmtl.errors import ConfigError, MedmtlError
from medmtl.io.types import ScanRef, Skipped

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
Gate = Callable[[Predictor, Sequence[ScanRef]], tuple[Predictor, dict[str, Any]]]


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
    predictor = Predictor.from_checkpoint(
        checkpoint, device=device, amp=amp, overlap=overlap, sw_batch_size=sw_batch_size, tta=tta,
        decode_overrides={"threshold": threshold} if threshold is not None else None,
    )
    out_dir = Path(out_dir)
    # one process per output folder (sharded ranks share theirs by design and skip the lock)
    with pio.output_lock(out_dir) if shard is None else contextlib.nullcontext():
        (out_dir / "scans").mkdir(parents=True, exist_ok=True)
        resume = pio.resume_key(predictor.card, adapt, predictor.decode)  # adaptation, harmonisation, --threshold
        pending = [r for r in refs if not pio.is_complete(out_dir, r.scan_id, predictor.weights_sha256,
                                                           need_maps=save_maps, need_previews=preview, resume=resume)]
        shift_info = None
        if pending and adapt == "auto" and gate is not None:
            predictor, shift_info = gate(predictor, pending)
        provenance = _provenance(predictor, checkpoint, resume, shift_info, shard)
        batch = _Batch(out_dir, predictor, provenance, save_maps=save_maps, preview=preview)
        batch.run(pending, prefetch if prefetch is not None else default_prefetch(str(predictor.device)), progress)
        return _summary(batch, refs, skipped, shard, n_skipped=len(refs) - len(pending), t_start=t_start)


def _summary(batch: _Batch, refs: Sequence[ScanRef], skipped: Sequence[Skipped], shard: tuple[int, int] | None,
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
        "device": str(batch.predictor.device), "amp": batch.predictor.amp,
    }


def _provenance(predictor: Predictor, checkpoint: Path, resume: str, shift_info: dict[str, Any] | None,
                shard: tuple[int, int] | None) -> dict[str, Any]:
    """The call record written into every scan record and ``predictions.json``."""
    from medmtl import __version__

    return {
        "medmtl_version": __version__,
        "checkpoint": str(checkpoint),
        "weights_sha256": predictor.weights_sha256,
        "resume_key": resume,
        "device": str(predictor.device),
        "amp": predictor.amp,
        "tta": predictor.tta,
        "overlap": predictor.overlap,
        "sw_batch_size": predictor.sw_batch_size,
        "decode": predictor.decode.to_dict(),
        "adaptation_in_card": [a.to_dict() for a in predictor.card.adaptation],
        "shift": shift_info,
        "shard": list(shard) if shard is not None else None,
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
        from tqdm import tqdm

        bar = tqdm(total=len(pending), unit="scan", desc="predict", disable=not progress)
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
                             temperature=predictor.decode.temperature)
    if preview:
        from medmtl.engine.preview import save_lesion_previews

        previews = save_lesion_previews(out_dir, ref.scan_id, result.prepared.image, result.affine_ras,
                                        result.detections)
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
