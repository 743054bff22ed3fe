"""CLI command ``medmtl export``: a prediction folder in the field's formats (thin wrapper over :mod:`medmtl.api`).

Nothing heavy is imported at module level: highdicom and pydicom are imported by the call.
"""

from __future__ import annotations

from pathlib import Path

import click

from medmtl.commands._common import check_out_path, echo_json, handle_errors, json_option

_FORMATS = ("dicom-seg", "dicom-sr", "monai-json")  # medmtl.engine.export.FORMATS (not imported: --help stays instant)


@click.command("export")
@click.argument("pred_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--format", "formats", required=True, multiple=True, type=click.Choice(_FORMATS),
              help="What to write (repeat for several): dicom-seg = one DICOM Segmentation per series (a sphere "
                   "per lesion), dicom-sr = one TID 1500 measurement report per series, monai-json = MONAI "
                   "detection JSON (cccwhd boxes, LPS mm).")
@click.option("-o", "--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              callback=check_out_path, help="Output folder (files medmtl did not write are never replaced).")
@click.option("--scans", "scans_dir", type=click.Path(exists=True, path_type=Path), default=None,
              help="Folder (or file) holding the scans the predictions were made from [default: the paths the "
                   "prediction records name].")
@json_option
@handle_errors
def export_cmd(pred_dir: Path, formats: tuple[str, ...], out_dir: Path, scans_dir: Path | None, as_json: bool) -> None:
    """Convert the lesions of a `medmtl predict` output folder PRED_DIR into DICOM SEG, DICOM SR or
    MONAI detection JSON, without running the model again.

    \b
    DICOM SEG and SR reference the source DICOM series (scans read from NIfTI, MHA or NRRD are
    refused: there are no DICOM instances to reference) and need `pip install 'medmtl[dicom]'`.
    Series without a predicted lesion get no SEG/SR and are listed as skipped.

    \b
    Examples:
      medmtl export preds --format dicom-seg --format dicom-sr -o preds_dicom
      medmtl export preds --format monai-json -o preds_monai --scans data/site_b
    """
    from medmtl import api

    summary = api.export_predictions(pred_dir=pred_dir, out_dir=out_dir, formats=list(formats), scans_dir=scans_dir)
    if as_json:
        echo_json(summary)
        return
    skipped = {s["seriesuid"] for s in summary["skipped"]}
    note = f"; {len(skipped)} series without a lesion got no SEG/SR" if skipped else ""
    click.echo(f"{len(summary['files'])} file(s) written into {out_dir} ({', '.join(summary['formats'])}) for "
               f"{summary['n_scans']} scan(s), {summary['n_lesions']} lesion(s){note}")


@click.command("export-bundle")
@click.argument("checkpoint", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("-o", "--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              callback=check_out_path, help="Bundle folder to write (files medmtl did not write are never replaced).")
@json_option
@handle_errors
def export_bundle_cmd(checkpoint: Path, out_dir: Path, as_json: bool) -> None:
    """Write CHECKPOINT as a MONAI bundle that `python -m monai.bundle run` executes.

    \b
    OUT/configs/metadata.json, OUT/configs/inference.json, OUT/configs/model_card.json,
    OUT/models/model.pt (a state dict) and OUT/docs/README.md. Running it (medmtl installed)
    writes the same predictions.csv as `medmtl predict` with the checkpoint:
      python -m monai.bundle run --config_file OUT/configs/inference.json --bundle_root OUT \\
          --dataset_dir SCANS --output_dir PREDS

    \b
    Example:
      medmtl export-bundle runs/tiny/checkpoint -o bundles/tiny
    """
    from medmtl import api

    summary = api.export_bundle(checkpoint=checkpoint, out_dir=out_dir)
    if as_json:
        echo_json(summary)
        return
    click.echo(f"MONAI bundle of {checkpoint} ({summary['n_tensors']} tensors, weights {summary['weights_sha256'][:12]}) "
               f"written into {out_dir}; run it with: python -m monai.bundle run --config_file "
               f"{Path(out_dir) / 'configs' / 'inference.json'} --bundle_root {out_dir} --dataset_dir SCANS --output_dir OUT")


COMMANDS: list[click.Command] = [export_cmd, export_bundle_cmd]
