"""Regenerate the committed ``sample_data/`` folder exactly (public API only).

Usage::

    python -m pipelines.make_sample_data --out sample_data

Writes ``ct_site_a/`` (8 CT scans, site a), ``ct_site_b/`` (8 CT scans, site b), ``mri/``
(6 MRI scans), ``dicom_example/`` (one CT site-a scan as a DICOM series) with its NIfTI twin
``dicom_example_nifti/``, and ``README.md`` with the seeds and the Bayes-optimal malignancy
AUC of every set, recomputed from the written ``annotations.csv`` files. A set folder is
replaced only if it was made by the generator (it holds ``generation.json``); any other
non-empty set folder is refused.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

from medmtl import api
from medmtl.errors import MedmtlError

#: (folder, kind, site, n, seed, dicom, description) of every committed set.
#: ``(folder, kind, site, n, seed, dicom, shape or None for the site's default, description)``.
SETS: tuple[tuple[str, str, str, int, int, bool, tuple[int, int, int] | None, str], ...] = (
    # 8 scans so even/odd halves (4 vs 4) can be tested for shift; a 164×144×80 slab through the
    # mid-thorax (148×130×100 mm) keeps the folder under the 30 MB cap. Against default-shape
    # phantoms (150 mm along the body) it is a measured shift, so the demo trains at this shape.
    ("ct_site_a", "ct", "a", 8, 1002, False, (164, 144, 80),
     "CT chest, site a (thin-slice nodule CT): 0.9×0.9×1.25 mm voxels, a 164×144×80 mid-thorax slab "
     "(the site's default is 176×144×120), sharp kernel, noise σ 20 HU, RAS axis order"),
    ("ct_site_b", "ct", "b", 8, 2000, False, None,
     "CT chest, site b (older scanner): 1.4×1.4×5.0 mm voxels, 128×104×32, smooth kernel, noise σ 30 HU, "
     "+40 HU offset, LPS axis order"),
    ("mri", "mri", "a", 6, 3000, False, None,
     "MRI T1-like brain with tumours: 3 mm isotropic, 64×64×56, bias field, arbitrary scale, Rician noise "
     "(uint16)"),
    ("dicom_example", "ct", "a", 1, 4004, True, (128, 112, 64),
     "one CT site-a scan (a 128×112×64 crop) as a DICOM series (folder ct_a_0000/, one file per slice); "
     "seriesuid = SeriesInstanceUID; the same scan as NIfTI (named by that UID) is in dicom_example_nifti/"),
)

COMMAND = "python -m pipelines.make_sample_data --out sample_data"


def set_auc(folder: Path) -> tuple[float, tuple[float, float], int, int]:
    """Bayes-optimal AUC, its 95 % bootstrap interval, lesion and labelled counts of a set."""
    with open(folder / "annotations.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    labelled = sum(1 for r in rows if r["malignancy"].strip() != "")
    return api.bayes_auc(rows=rows), api.bayes_auc_interval(rows=rows), len(rows), labelled


def _may_replace(folder: Path) -> bool:
    if not folder.exists() or not any(folder.iterdir()):
        return False
    if (folder / "generation.json").exists():
        return True
    raise MedmtlError(
        f"{folder} is not empty and was not made by the phantom generator (no generation.json); "
        "refusing to replace it; choose another --out"
    )


def readme(out: Path) -> str:
    """The README text of a generated ``sample_data`` folder (AUCs recomputed from the files)."""
    lines = [
        "# sample_data",
        "",
        "Small synthetic phantoms with known ground truth, made by medmtl's generator",
        "(`medmtl/data/`). Regenerate exactly (byte for byte) with:",
        "",
        "```",
        COMMAND,
        "```",
        "",
        "Every set folder holds the scans, `masks/<scan_id>_lesions.nii.gz` (int16 instance labels,",
        "label n = lesion `<scan_id>_L<n>`), `generation.json` (parameters and per-scan seeds) and",
        "`annotations.csv`: `seriesuid,coordX,coordY,coordZ,diameter_mm,malignancy,lesion_id,site,",
        "bayes_malignancy_prob,margin,texture,calcification` with centres in **LPS world mm**.",
        "About 15 % of the malignancy labels are deliberately empty (partial labels).",
        "",
        "Malignancy labels are drawn from the documented logistic model in",
        "`medmtl/data/malignancy.py` (size, margin, texture, calcification) with 5 % label noise;",
        "`bayes_malignancy_prob` is the Bayes-optimal (calibrated) probability of the recorded label,",
        "so the **Bayes AUC** below (AUC of `bayes_malignancy_prob` against the non-empty labels) is",
        "the best AUC any model can reach on the set. Its 95 % interval (bootstrap over the",
        "labelled lesions) shows how little a set this small can rank malignancy models: claims",
        "need test sets of hundreds of labelled lesions (`medmtl sample-data --n ...`).",
        "",
        "| folder | kind | site | scans | seed | lesions | labelled | Bayes AUC [95 % CI] | contents |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, kind, site, n, seed, _dicom, _shape, desc in SETS:
        auc, (lo, hi), n_les, n_lab = set_auc(out / name)
        auc_text = f"{auc:.3f} [{lo:.2f}, {hi:.2f}]" if auc == auc else "n/a (one class)"
        lines.append(f"| `{name}/` | {kind} | {site} | {n} | {seed} | {n_les} | {n_lab} | {auc_text} | {desc} |")
    lines += [
        "",
        "`dicom_example_nifti/` is the NIfTI twin of `dicom_example/` (same voxels, same geometry,",
        "same `annotations.csv`), so readers and predictions can be compared scan by scan.",
        "",
        "Equivalent CLI for one set: `medmtl sample-data OUT --kind ct --site a --n 8 --seed 1002 --shape 164 144 80`.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Generate every set under ``--out``, print their Bayes AUCs and write ``README.md``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("sample_data"), help="output folder")
    args = parser.parse_args(argv)
    out: Path = args.out
    try:
        for name, kind, site, n, seed, dicom, shape, _desc in SETS:
            folder = out / name
            replace = _may_replace(folder)
            if dicom:
                replace = _may_replace(folder.with_name(name + "_nifti")) or replace
            api.generate_sample_data(out=folder, kind=kind, site=site, n=n, seed=seed, dicom=dicom,
                                     shape=shape, overwrite=replace, progress=True)
            auc, _ci, n_les, n_lab = set_auc(folder)
            print(f"{name}: {n} scans, {n_les} lesions ({n_lab} labelled), Bayes AUC {auc:.3f}")
        api.write_text(path=out / "README.md", text=readme(out))
    except MedmtlError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"sample data in {out}: {size / 1e6:.2f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
