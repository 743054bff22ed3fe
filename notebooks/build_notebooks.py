"""Write the three medmtl notebooks (nbformat v4, outputs cleared) from the cells below.

Run ``python notebooks/build_notebooks.py`` after editing a cell; the ``.ipynb`` files are the
committed result. Every notebook reads its settings from environment variables with small
defaults, so ``tests/test_notebooks.py`` can execute them quickly:

- ``MEDMTL_NB_FAST=1``: tiny training / bootstrap / permutation settings (numbers meaningless);
- ``MEDMTL_NB_CHECKPOINT``: a checkpoint folder to use (01, 02); without it the model of ``make demo``
  (``demo_out/train/checkpoint``) when present, else a short training run;
- ``MEDMTL_NB_OUT``: where outputs go (default: ``nb_out/`` in the working directory);
- ``MEDMTL_REPO``: the repository (default: found from the installed ``medmtl`` package).
"""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent

SETUP = '''\
%matplotlib inline
import os
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

import medmtl
from medmtl import api

REPO = Path(os.environ.get("MEDMTL_REPO") or Path(medmtl.__file__).resolve().parents[1])
FAST = os.environ.get("MEDMTL_NB_FAST", "0") == "1"
OUT = Path(os.environ.get("MEDMTL_NB_OUT", "nb_out")).resolve()
OUT.mkdir(parents=True, exist_ok=True)
CHECKPOINT = os.environ.get("MEDMTL_NB_CHECKPOINT")  # reuse a trained checkpoint instead of training
SITE_A = REPO / "sample_data" / "ct_site_a"
SITE_B = REPO / "sample_data" / "ct_site_b"
CONFIG = REPO / "configs" / ("tiny.yaml" if (REPO / "configs" / "tiny.yaml").is_file() else "demo.yaml")
# --fast settings: a smoke test of the notebook, the numbers mean nothing
FAST_OVERRIDES = ["train.epochs=1", "train.steps_per_epoch=2", "train.patch_size=[32, 32, 32]",
                  "validation.calibrate=false", "data.reference_scans=1"] if FAST else []
print(f"medmtl {medmtl.__version__}  repo={REPO}  fast={FAST}  out={OUT}")'''

GET_CHECKPOINT = '''\
DEMO_CHECKPOINT = REPO / "demo_out" / "train" / "checkpoint"  # written by `make demo`


def get_checkpoint(name: str = "run") -> Path:
    """The checkpoint to use, best first: MEDMTL_NB_CHECKPOINT; the model `make demo` trained
    (on generated phantoms, so every sample scan is held out); else a short run on site A,
    which detects little — run `make demo` first to see real findings."""
    if CHECKPOINT:
        return Path(CHECKPOINT)
    if not FAST and (DEMO_CHECKPOINT / "model_card.json").is_file():
        return DEMO_CHECKPOINT
    run = OUT / name
    if (run / "checkpoint" / "model_card.json").is_file():
        return run / "checkpoint"
    print("no demo checkpoint: training a short model (run `make demo` first for one that detects)")
    return api.train(config=CONFIG, out_dir=run, overrides=[f"data.root={SITE_A}", *FAST_OVERRIDES])

ckpt = get_checkpoint()
print("checkpoint:", ckpt)'''


def quickstart() -> nbformat.NotebookNode:
    cells = [
        new_markdown_cell(
            "# 01 — Quickstart: scans, lesions, predictions\n\n"
            "From a folder of CT scans to lesion overlays and a table of predictions, with the public API "
            "(`medmtl.api`). Lesion tables use **LPS world millimetres**; `medmtl.io.coords.lps_to_voxel` "
            "converts them to voxel indices of a loaded scan (whose affine maps voxels to RAS mm).\n\n"
            "Settings come from environment variables (see the first cell): set `MEDMTL_NB_CHECKPOINT` to "
            "use your own checkpoint; without it the notebook uses the model `make demo` trained "
            "(`demo_out/train/checkpoint`, trained on generated phantoms so every sample scan is held out), "
            "and only without that one trains a small model that detects little."
        ),
        new_code_cell(SETUP),
        new_markdown_cell("## 1. Load a scan folder\n\n`api.load_scans` finds NIfTI / MHA / NRRD files and "
                          "DICOM series and returns the scans plus anything it skipped (with the reason)."),
        new_code_cell(
            'scans, skipped = api.load_scans(folder=SITE_A)\n'
            'if FAST:\n'
            '    scans = scans[:3]\n'
            'from medmtl.io.coords import spacing_from_affine\n'
            'pd.DataFrame([{"scan": s.scan_id, "modality": s.modality, "shape (I, J, K)": tuple(s.image.shape[-3:]),\n'
            '               "spacing (mm)": tuple(round(v, 2) for v in spacing_from_affine(s.image.affine)),\n'
            '               "HU min": float(s.image.min()), "HU max": float(s.image.max())} for s in scans])'
        ),
        new_markdown_cell("## 2. Lesions from `annotations.csv` on axial and coronal slices\n\n"
                          "Centres are LPS mm; `lps_to_voxel(center, scan.image.affine)` gives fractional "
                          "`(i, j, k)`. Site A is stored in RAS axis order, so `k` is the axial (superior) "
                          "axis and `j` the anterior–posterior one."),
        new_code_cell(
            'from medmtl.io.coords import lps_to_voxel\n'
            'from matplotlib.patches import Ellipse\n\n'
            'ann = pd.read_csv(SITE_A / "annotations.csv")\n'
            'scan = next(s for s in scans if s.scan_id in set(ann["seriesuid"]))\n'
            'lesions = ann[ann["seriesuid"] == scan.scan_id].reset_index(drop=True)\n'
            'vol = scan.image[0].numpy()                      # (I, J, K), HU\n'
            'spacing = spacing_from_affine(scan.image.affine)\n'
            'centers = lps_to_voxel(lesions[["coordX", "coordY", "coordZ"]].to_numpy(), scan.image.affine)\n'
            'lesions[["i", "j", "k"]] = centers.round(1)\n'
            'lesions[["lesion_id", "coordX", "coordY", "coordZ", "diameter_mm", "malignancy", "i", "j", "k"]]'
        ),
        new_code_cell(
            'def show_lesion(vol, spacing, center, diameter_mm, title="", extra=()):\n'
            '    """Axial (k) and coronal (j) slices through a voxel centre, lesion circle in red; the\n'
            '    patient\'s right on the image left (radiological, as in `medmtl predict --preview`)."""\n'
            '    i, j, k = (int(round(c)) for c in center)\n'
            '    fig, axes = plt.subplots(1, 2, figsize=(9, 4.2))\n'
            '    views = [("axial, k=%d" % k, vol[:, :, k].T, (i, j), (spacing[0], spacing[1])),\n'
            '             ("coronal, j=%d" % j, vol[:, j, :].T, (i, k), (spacing[0], spacing[2]))]\n'
            '    for ax, (name, img, (x, y), (sx, sy)) in zip(axes, views):\n'
            '        ax.imshow(img, cmap="gray", vmin=-1000, vmax=400, origin="lower", aspect=sy / sx)\n'
            '        ax.invert_xaxis()  # radiological convention, as in the previews: patient\'s right on the image left\n'
            '        top, bottom = ("A", "P") if name.startswith("axial") else ("S", "I")\n'
            '        for lx, ly, letter in ((0.02, 0.5, "R"), (0.98, 0.5, "L"), (0.5, 0.97, top), (0.5, 0.03, bottom)):\n'
            '            ax.text(lx, ly, letter, color="yellow", ha="center", va="center", transform=ax.transAxes)\n'
            '        ax.add_patch(Ellipse((x, y), width=diameter_mm / sx, height=diameter_mm / sy, fill=False, color="red", lw=1.5))\n'
            '        for (px, py, pz), label in extra:\n'
            '            pos = (px, py) if name.startswith("axial") else (px, pz)\n'
            '            ax.plot(*pos, "+", color="yellow", ms=12, mew=2)\n'
            '            ax.annotate(label, pos, color="yellow", fontsize=8, xytext=(4, 4), textcoords="offset points")\n'
            '        ax.set_title(f"{title} {name} (W 1400 / L -300 HU)")\n'
            '        ax.set_xlabel("i (voxel)")\n'
            '        ax.set_ylabel("j (voxel)" if name.startswith("axial") else "k (voxel)")\n'
            '    fig.tight_layout()\n'
            '    return fig\n\n'
            'first = lesions.iloc[0]\n'
            'show_lesion(vol, spacing, centers[0], first["diameter_mm"], title=first["lesion_id"]);\n'
            'plt.show()'
        ),
        new_markdown_cell("## 3. A checkpoint's predictions as a DataFrame\n\n"
                          "`api.predict_folder` runs sliding-window inference over the scans and writes "
                          "`predictions.csv` (LUNA16 columns + `diameter_mm`, `malignancy_prob`, LPS mm) and "
                          "`predictions.json` (provenance, timings)."),
        new_code_cell(GET_CHECKPOINT),
        new_code_cell(
            'ids = [scan.scan_id] + [s.scan_id for s in scans if s.scan_id != scan.scan_id][: (0 if FAST else 2)]\n'
            'summary = api.predict_folder(checkpoint=ckpt, input_dir=SITE_A, out_dir=OUT / "predictions_01",\n'
            '                             scan_ids=ids, progress=False)\n'
            'pred = pd.read_csv(OUT / "predictions_01" / "predictions.csv")\n'
            'print({k: summary[k] for k in ("n_scans", "n_done", "n_failed")}, len(pred), "detections")\n'
            'if pred.empty:\n'
            '    print("no detection above the threshold: this checkpoint does not detect; run `make demo` first")\n'
            'pred.sort_values("probability", ascending=False).head(10)'
        ),
        new_markdown_cell("The top predictions of the scan above, on the same slices (yellow +: predicted "
                          "centre, red circle: annotated lesion)."),
        new_code_cell(
            'mine = pred[pred["seriesuid"] == scan.scan_id].sort_values("probability", ascending=False).head(3)\n'
            'marks = []\n'
            'if len(mine):\n'
            '    vox = lps_to_voxel(mine[["coordX", "coordY", "coordZ"]].to_numpy(), scan.image.affine)\n'
            '    marks = [(tuple(v), f"p={p:.2f}") for v, p in zip(vox, mine["probability"])]\n'
            'show_lesion(vol, spacing, centers[0], first["diameter_mm"], title="predictions:", extra=marks);\n'
            'plt.show()'
        ),
        new_markdown_cell("Score them against the annotations with `api.evaluate` (LUNA16 CPM, diameter MAE, "
                          "malignancy AUC) — see notebook 02 for a full comparison."),
    ]
    return new_notebook(cells=cells, metadata=_metadata())


def domain_shift() -> nbformat.NotebookNode:
    cells = [
        new_markdown_cell(
            "# 02 — Domain shift: diagnose two sites, adapt with AdaBN\n\n"
            "Site A (`sample_data/ct_site_a`) and site B (`sample_data/ct_site_b`) are simulated scanners that "
            "differ in slice thickness, in-plane spacing, reconstruction kernel, noise and HU calibration. "
            "`api.diagnose` measures the shift (fingerprints, feature-space two-sample tests with p-values, "
            "BatchNorm-statistics shift); `api.adapt` re-estimates the BatchNorm statistics on unlabelled site B "
            "scans (AdaBN, Li et al. 2016); we then compare predictions before and after."
        ),
        new_code_cell(SETUP),
        new_code_cell(GET_CHECKPOINT),
        new_code_cell(
            'import shutil\n\n'
            'def first_scans(src: Path, n: int, dst: Path) -> Path:\n'
            '    """A copy of the first n scans of a folder with their annotations (for the quick test run)."""\n'
            '    dst.mkdir(parents=True, exist_ok=True)\n'
            '    ids = sorted(p.name[: -len(".nii.gz")] for p in src.glob("*.nii.gz"))[:n]\n'
            '    for i in ids:\n'
            '        shutil.copy2(src / f"{i}.nii.gz", dst / f"{i}.nii.gz")\n'
            '    ann = pd.read_csv(src / "annotations.csv")\n'
            '    ann[ann["seriesuid"].isin(ids)].to_csv(dst / "annotations.csv", index=False)\n'
            '    return dst\n\n'
            'if FAST:  # smoke test: 4 scans per site, the smallest split the shift test can decide\n'
            '    SITE_A, SITE_B = first_scans(SITE_A, 4, OUT / "site_a"), first_scans(SITE_B, 4, OUT / "site_b")\n'
            'print(SITE_A, SITE_B)'
        ),
        new_markdown_cell("## 1. Diagnose site A vs site B"),
        new_code_cell(
            'report = api.diagnose(source=SITE_A, target=SITE_B, out_dir=OUT / "shift", checkpoint=ckpt,\n'
            '                      n_permutations=50 if FAST else 1000, seed=0)\n'
            'print("verdict:", report.get("verdict"))\n'
            'print("report:", OUT / "shift" / "report.html")\n'
            'sorted(report)'
        ),
        new_markdown_cell("The tests with their p-values (small p: the cohorts differ):"),
        new_code_cell(
            'def as_frame(obj):\n'
            '    """A DataFrame from a list of records or a dict of records."""\n'
            '    if isinstance(obj, list):\n'
            '        return pd.DataFrame(obj)\n'
            '    if isinstance(obj, dict):\n'
            '        if all(isinstance(v, dict) for v in obj.values()):\n'
            '            return pd.DataFrame.from_dict(obj, orient="index")\n'
            '        return pd.DataFrame([obj])\n'
            '    return pd.DataFrame({"value": [obj]})\n\n'
            'as_frame(report.get("tests", []))'
        ),
        new_markdown_cell("The report's plots (also inlined in `report.html`):"),
        new_code_cell(
            'import base64\nimport re\n\nfrom IPython.display import Image, display\n\n'
            '# report.html is self-contained: its figures are inline base64 PNGs\n'
            'html = (OUT / "shift" / "report.html").read_text(encoding="utf-8")\n'
            'pngs = re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", html)\n'
            'for data in pngs[:6]:\n'
            '    display(Image(data=base64.b64decode(data), width=520))\n'
            'print(len(pngs), "figure(s) in the report")'
        ),
        new_markdown_cell("## 2. Adapt to site B without labels (AdaBN) and compare"),
        new_code_cell(
            'adapted = OUT / "adabn"\n'
            'if not (adapted / "model_card.json").is_file():\n'
            '    adapted = api.adapt(checkpoint=ckpt, target=SITE_B, method="adabn", out=adapted, seed=0)\n'
            'ids_b = sorted(pd.read_csv(SITE_B / "annotations.csv")["seriesuid"].unique())[: 2 if FAST else None]\n'
            'ann_b = pd.read_csv(SITE_B / "annotations.csv")\n'
            'ann_b[ann_b["seriesuid"].isin(ids_b)].to_csv(OUT / "site_b_annotations.csv", index=False)\n\n'
            'rows = {}\n'
            'for name, c in [("no adaptation", ckpt), ("AdaBN", adapted)]:\n'
            '    pdir = OUT / f"pred_b_{name.replace(\' \', \'_\')}"\n'
            '    api.predict_folder(checkpoint=c, input_dir=SITE_B, out_dir=pdir, scan_ids=ids_b, progress=False)\n'
            '    m = api.evaluate(predictions=pdir / "predictions.csv", annotations=OUT / "site_b_annotations.csv",\n'
            '                     out_dir=pdir / "metrics", n_bootstrap=20 if FAST else 500)\n'
            '    rows[name] = {k: m["overall"][k]["value"] for k in ("cpm", "diameter_mae_mm", "malignancy_auc")}\n'
            'pd.DataFrame(rows).T'
        ),
        new_markdown_cell("How the predicted detection scores and diameters move with adaptation:"),
        new_code_cell(
            'fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))\n'
            'for name in rows:\n'
            '    p = pd.read_csv(OUT / f"pred_b_{name.replace(\' \', \'_\')}" / "predictions.csv")\n'
            '    axes[0].hist(p["probability"], bins=20, range=(0, 1), alpha=0.5, label=name)\n'
            '    axes[1].hist(p["diameter_mm"].dropna(), bins=20, alpha=0.5, label=name)\n'
            'axes[0].set_xlabel("detection probability"); axes[1].set_xlabel("predicted diameter (mm)")\n'
            'axes[0].legend(); fig.tight_layout(); plt.show()'
        ),
        new_markdown_cell("With a few phantoms the intervals are wide; `python -m pipelines.adaptation_study` "
                          "compares every method (AdaBN, TENT, histogram matching, DANN) over seeds."),
    ]
    return new_notebook(cells=cells, metadata=_metadata())


def transfer_mtl() -> nbformat.NotebookNode:
    cells = [
        new_markdown_cell(
            "# 03 — Transfer learning and multi-task learning, side by side\n\n"
            "A small comparison on site A: ImageNet-initialised vs from-scratch encoder, and fixed vs "
            "uncertainty task weighting (Kendall et al. 2018), one short run each, evaluated on held-out scans. "
            "Then the gradient-conflict statistics the trainer records (`gradient_conflict.csv`: per task pair, "
            "the cosine of the task gradients on the shared encoder and the share of steps where they conflict).\n\n"
            "For real numbers with intervals over seeds use `python -m pipelines.transfer_study`."
        ),
        new_code_cell(SETUP),
        new_code_cell(
            'EPOCHS = int(os.environ.get("MEDMTL_NB_EPOCHS", "1"))\n'
            'CONDITIONS = {\n'
            '    "ImageNet, fixed": ["model.pretrained=true", "weighting.name=fixed"],\n'
            '    "scratch, fixed": ["model.pretrained=false", "weighting.name=fixed"],\n'
            '    "ImageNet, uncertainty": ["model.pretrained=true", "weighting.name=uncertainty"],\n'
            '}\n'
            'ids = sorted(p.name.removesuffix(".nii.gz") for p in SITE_A.glob("*.nii.gz"))  # every scan, with or without lesions\n'
            'train_ids, val_ids, test_ids = ids[:-3], ids[-3:-2], ids[-2:]\n'
            'if FAST:  # smoke test: 2 training scans, 1 validation and 1 test scan\n'
            '    train_ids, val_ids, test_ids = train_ids[:2], val_ids[:1], test_ids[:1]\n'
            'ann = pd.read_csv(SITE_A / "annotations.csv")\n'
            'ann[ann["seriesuid"].isin(test_ids)].to_csv(OUT / "test_annotations.csv", index=False)\n'
            'common = [f"data.root={SITE_A}", "data.max_scans=null", f"data.train_ids={train_ids}", f"data.val_ids={val_ids}",\n'
            '          f"train.epochs={EPOCHS}", "train.conflict_every=1", *FAST_OVERRIDES]\n'
            'print("train", len(train_ids), "val", val_ids, "test", test_ids)'
        ),
        new_code_cell(
            'results, runs = {}, {}\n'
            'for name, extra in CONDITIONS.items():\n'
            '    run = OUT / ("run_" + name.replace(", ", "_").replace(" ", "_"))\n'
            '    ck = run / "checkpoint"\n'
            '    if not (ck / "model_card.json").is_file():\n'
            '        ck = api.train(config=CONFIG, out_dir=run, overrides=[*common, *extra])\n'
            '    api.predict_folder(checkpoint=ck, input_dir=SITE_A, out_dir=run / "pred", scan_ids=test_ids,\n'
            '                       progress=False)\n'
            '    m = api.evaluate(predictions=run / "pred" / "predictions.csv", annotations=OUT / "test_annotations.csv",\n'
            '                     out_dir=run / "eval", n_bootstrap=20 if FAST else 500)\n'
            '    results[name] = {k: m["overall"][k]["value"] for k in ("cpm", "diameter_mae_mm", "malignancy_auc")}\n'
            '    runs[name] = run\n'
            'pd.DataFrame(results).T'
        ),
        new_markdown_cell("## Training curves per task (`metrics.csv`)"),
        new_code_cell(
            'fig, axes = plt.subplots(1, 3, figsize=(12, 3.3), sharex=True)\n'
            'for name, run in runs.items():\n'
            '    h = pd.read_csv(run / "metrics.csv")\n'
            '    for ax, col in zip(axes, ("loss_det", "loss_size", "loss_malig")):\n'
            '        ax.plot(h["epoch"], h[col], marker="o", label=name)\n'
            '        ax.set_title(col); ax.set_xlabel("epoch")\n'
            'axes[0].legend(fontsize=7); fig.tight_layout(); plt.show()'
        ),
        new_markdown_cell("## Gradient conflict between tasks (`gradient_conflict.csv`)\n\n"
                          "A negative cosine means two tasks pull the shared encoder in opposite directions "
                          "(task interference; PCGrad / UPGrad weightings address it)."),
        new_code_cell(
            'gc = {name: pd.read_csv(run / "gradient_conflict.csv") for name, run in runs.items()\n'
            '      if (run / "gradient_conflict.csv").is_file()}\n'
            'fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))\n'
            'for name, df in gc.items():\n'
            '    cos_cols = [c for c in df.columns if c.startswith("cos_mean/")]\n'
            '    share_cols = [c for c in df.columns if c.startswith("conflict_share/")]\n'
            '    axes[0].bar([f"{name}\\n{c.split(\'/\')[1]}" for c in cos_cols], df[cos_cols].mean().to_numpy())\n'
            '    axes[1].bar([f"{name}\\n{c.split(\'/\')[1]}" for c in share_cols], df[share_cols].mean().to_numpy())\n'
            'axes[0].axhline(0, color="grey", lw=0.8)\n'
            'axes[0].set_title("mean task-gradient cosine"); axes[1].set_title("share of conflicting steps")\n'
            'for ax in axes:\n'
            '    ax.tick_params(axis="x", labelsize=6, rotation=60)\n'
            'fig.tight_layout(); plt.show()\n'
            'pd.concat({name: df.mean(numeric_only=True) for name, df in gc.items()}, axis=1)'
        ),
        new_markdown_cell("Reading it: with one short epoch the differences are noise; the same code over "
                          "seeds and label fractions is `pipelines/transfer_study.py`."),
    ]
    return new_notebook(cells=cells, metadata=_metadata())


def _metadata() -> dict:
    return {
        "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
    }


def main() -> None:
    """Write the notebooks next to this script (outputs cleared, validated)."""
    for name, build in (("01_quickstart", quickstart), ("02_domain_shift", domain_shift),
                        ("03_transfer_and_mtl", transfer_mtl)):
        nb = build()
        for i, cell in enumerate(nb.cells):
            cell["id"] = f"{name[:2]}-{i:02d}"  # stable ids: rebuilding gives the same file
        nbformat.validate(nb)
        path = HERE / f"{name}.ipynb"
        nbformat.write(nb, str(path))
        print("wrote", path)


if __name__ == "__main__":
    main()
