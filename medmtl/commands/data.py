"""Data commands: ``medmtl inspect`` (and ``medmtl sample-data``, added alongside).

Each command keeps its heavy imports (torch, monai, SimpleITK) inside its body.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from medmtl.commands._common import (
    check_in_file,
    check_out_path,
    echo_json,
    handle_errors,
    json_option,
    progress_options,
)


@click.command("inspect")
@click.argument("folder", type=click.Path(exists=True, path_type=Path))
@click.option(
    "--resample-nonuniform",
    is_flag=True,
    help="Resample DICOM series with non-uniform slice spacing or gantry tilt onto a regular grid "
    "(default: refuse them).",
)
@click.option(
    "--annotations",
    type=click.Path(exists=True, dir_okay=False, path_type=Path), callback=check_in_file,
    default=None,
    help="Annotation CSV or MONAI datalist JSON to validate against the scans (LPS mm).",
)
@progress_options
@json_option
@handle_errors
def inspect_cmd(folder: Path, as_json: bool, resample_nonuniform: bool, annotations: Path | None,
                progress: bool) -> None:
    """Describe every scan in FOLDER (a folder, or one scan file): id, format, shape, spacing (mm), orientation, origin
    (LPS mm of voxel 0,0,0), direction cosines (LPS), modality, intensity percentiles
    (0.5, 50, 99.5), and what was skipped and why.

    Exit status 1 if any scan could not be read (the others are still listed).

    \b
    Example:
      medmtl inspect sample_data/ct_site_a
      medmtl inspect sample_data/ct_site_b/ct_b_0000.nii.gz
      medmtl inspect sample_data/ct_site_a --json --annotations sample_data/ct_site_a/annotations.csv
    """
    from medmtl.errors import ScanReadError
    from medmtl.io.inspect import format_table, inspect_folder

    result = inspect_folder(
        folder, resample_nonuniform=resample_nonuniform, annotations=annotations, progress=progress
    )
    if as_json:
        echo_json(result)
    else:
        click.echo(format_table(result))
    failed = [s for s in result["skipped"] if s["failed"]]
    if failed:
        first = failed[0]
        err = ScanReadError(
            f"{len(failed)} scan(s) in {folder} could not be read; first: {first['path']}: {first['reason']}"
        )
        click.echo(f"Error: {err}", err=True)
        sys.exit(1)



@click.command("sample-data")
@click.argument("out", type=click.Path(file_okay=False, path_type=Path), callback=check_out_path, required=False)
@click.option("-o", "--out", "out_opt", type=click.Path(file_okay=False, path_type=Path), callback=check_out_path,
              default=None, help="The output folder, as with the other commands (instead of OUT).")
@click.option("--kind", type=click.Choice(["ct", "mri"]), default="ct", show_default=True,
              help="ct: chest phantoms with lung nodules; mri: brain phantoms with tumours.")
@click.option("--site", type=click.Choice(["a", "b"]), default="a", show_default=True,
              help="Simulated scanner (spacing, kernel, noise, HU offset, field of view).")
@click.option("--n", "n", type=click.IntRange(min=1), default=4, show_default=True, help="Number of scans.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Random seed of the set.")
@click.option("--shape", type=(int, int, int), default=None, metavar="I J K",
              help="Volume shape in voxels (each 16..512); default: the site's (CT a 176 144 120, CT b 128 104 32, MRI 64 64 56).")
@click.option("--dicom", is_flag=True,
              help="Write DICOM series (scan id = SeriesInstanceUID) plus a NIfTI twin in OUT_nifti/.")
@click.option("--overwrite", is_flag=True, help="Replace a set already in OUT (default: refuse).")
@progress_options
@handle_errors
def sample_data_cmd(
    out: Path | None, out_opt: Path | None, kind: str, site: str, n: int, seed: int,
    shape: tuple[int, int, int] | None, dicom: bool, overwrite: bool, progress: bool,
) -> None:
    """Write N synthetic phantoms with known ground truth to OUT: scans, masks/ and
    annotations.csv (LPS mm, diameters, malignancy with its Bayes-optimal probability).

    \b
    Example:
      medmtl sample-data data/site_a --kind ct --site a --n 12 --seed 0
      medmtl sample-data -o data/site_b --kind ct --site b --n 4
      medmtl sample-data data/dicom --kind ct --site a --n 1 --dicom
    """
    import csv

    from medmtl import api
    from medmtl.data.malignancy import bayes_auc

    given = [p for p in (out, out_opt) if p is not None]
    if len(given) != 1:
        raise click.UsageError("give the output folder once: as OUT or as -o/--out")
    folder = api.generate_sample_data(
        out=given[0], kind=kind, site=site, n=n, seed=seed, shape=shape, dicom=dicom,
        overwrite=overwrite, progress=progress,
    )
    folders = [folder] + ([folder.with_name(folder.name + "_nifti")] if dicom else [])
    with open(folder / "annotations.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    auc = bayes_auc(rows)
    for f in folders:
        click.echo(f"wrote {n} {kind.upper()} site-{site} scan(s), masks/ and annotations.csv to {f}")
    n_lab = sum(1 for r in rows if r["malignancy"] != "")
    click.echo(f"{len(rows)} lesions ({n_lab} with a malignancy label); Bayes-optimal malignancy AUC "
               f"{auc:.3f}" if auc == auc else f"{len(rows)} lesions; Bayes AUC undefined (one class)")


COMMANDS: list[click.Command] = [inspect_cmd, sample_data_cmd]
