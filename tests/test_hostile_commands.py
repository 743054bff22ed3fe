"""Hostile inputs to the commands that write (issue #13): predict, evaluate, train, adapt, diagnose,
sample-data and classical, tried as a new user would. Every case runs through the corpus's one
checker (``hostile``, tests/conftest.py): the exit code, exactly one ``Error:`` line naming the
file or value, what is allowed and the fix, no traceback, nothing on stdout, the input folder
unchanged and no output folder left behind (or an existing one unchanged); cases a user may
legitimately run (unicode names, a byte-order mark) must work."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

#: every case of this module runs under the hostile-input time limit (tests/conftest.py)
HOSTILE_CASES = True

REPO = Path(__file__).resolve().parents[1]
SITE_A = REPO / "sample_data" / "ct_site_a"
SITE_B = REPO / "sample_data" / "ct_site_b"
TINY = REPO / "configs" / "tiny.yaml"
P = ["--device", "cpu", "--no-progress"]
HEAD = "seriesuid,coordX,coordY,coordZ,probability"
#: a one-epoch, one-step tiny training (only the cases that must train use it)
QUICK = ["--set", "data.max_scans=3", "--set", "data.reference_scans=1", "--set", "train.epochs=1",
         "--set", "train.steps_per_epoch=1", "--set", "validation.every=1", "--set", "train.progress=false"]


@dataclass
class Env:
    """The folders of one case: ``inp`` is watched (must not change), ``out`` must not be left behind."""

    tmp: Path
    checkpoint: Path
    inp: Path = field(init=False)
    out: Path = field(init=False)

    def __post_init__(self) -> None:
        self.inp = self.tmp / "in"
        self.out = self.tmp / "out"

    def scans(self, n: int = 1, name: str | None = None) -> Path:
        folder = self.inp / "scans"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            shutil.copy(SITE_B / f"ct_b_000{i}.nii.gz", folder / (name or f"ct_b_000{i}.nii.gz"))
        return folder

    def ckpt(self, edit: Callable[[Path], None] | None = None) -> Path:
        folder = self.inp / "ckpt"
        shutil.copytree(self.checkpoint, folder)
        if edit is not None:
            edit(folder)
        return folder

    def file(self, name: str, data: str | bytes) -> Path:
        path = self.inp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
        return path

    def predict(self, *extra: object, ckpt: Path | None = None) -> list[object]:
        return ["predict", "--checkpoint", ckpt or self.ckpt(), self.scans(), "-o", self.out, *P, *extra]

    def evaluate(self, table: str | bytes, name: str = "p.csv") -> list[object]:
        return ["evaluate", "--predictions", self.file(name, table), "--annotations", SITE_B / "annotations.csv",
                "-o", self.out, "--n-bootstrap", "5"]

    def train(self, *extra: object, config: Path = TINY) -> list[object]:
        return ["train", "--config", config, "--out", self.out, *extra]

    def adapt(self, *extra: object) -> list[object]:
        return ["adapt", "--checkpoint", self.ckpt(), "--target", self.scans(2), "--method", "adabn", "-o", self.out,
                *extra]


@dataclass
class Case:
    """Builds the arguments in an :class:`Env`; the expected exit code and words of the one line."""

    build: Callable[[Env], list[object]]
    code: int
    words: list[str] = field(default_factory=list)
    stdout_words: list[str] = field(default_factory=list)
    out_made: bool = False  # a legitimate run writes the output folder


def _truncate(name: str, keep: int) -> Callable[[Path], None]:
    def edit(folder: Path) -> None:
        f = folder / name
        f.write_bytes(f.read_bytes()[:keep])
    return edit


def _bom_card(folder: Path) -> None:
    card = folder / "model_card.json"
    card.write_bytes(b"\xef\xbb\xbf" + card.read_bytes())


def _fifo(env: Env, name: str) -> Path:
    env.inp.mkdir(parents=True, exist_ok=True)
    os.mkfifo(env.inp / name)  # open() would block forever
    return env.inp / name


def _under_a_file(env: Env) -> Path:
    return env.file("notes.txt", "mine") / "out"


LONG = "x" * 300  # one path component over the 255-byte limit

CASES: dict[str, Case] = {
    # ------------------------------------------------------------------ predict: checkpoints
    "predict: checkpoint without its card": Case(
        lambda e: e.predict(ckpt=e.ckpt(lambda f: (f / "model_card.json").unlink())), 1,
        ["has no model_card.json", "re-save or re-train it"]),
    "predict: checkpoint without its weights": Case(
        lambda e: e.predict(ckpt=e.ckpt(lambda f: (f / "model.safetensors").unlink())), 1,
        ["has no model.safetensors", "re-save or re-train it"]),
    "predict: truncated weights": Case(
        lambda e: e.predict(ckpt=e.ckpt(_truncate("model.safetensors", 100_000))), 1,
        ["model.safetensors SHA-256", "does not match the card's", "corrupt or were replaced"]),
    "predict: card that is not JSON": Case(
        lambda e: e.predict(ckpt=e.ckpt(lambda f: (f / "model_card.json").write_text("{not json"))), 1,
        ["model_card.json is not valid JSON", "restore it or re-train"]),
    "predict: run folder instead of its checkpoint": Case(
        lambda e: e.predict(ckpt=_run_folder(e)), 1, ["is a run folder, not a checkpoint", "/checkpoint'"]),
    "predict: card with a byte-order mark works": Case(
        lambda e: e.predict("--overlap", "0", ckpt=e.ckpt(_bom_card)), 0, [], ["1 predicted"], out_made=True),
    # ------------------------------------------------------------------ predict: options
    "predict: --overlap 1.0": Case(lambda e: e.predict("--overlap", "1.0"), 2, ["--overlap", "1.0 is not in the range 0.0<=x<1.0"]),
    "predict: --threshold -1": Case(lambda e: e.predict("--threshold", "-1"), 2, ["--threshold", "-1.0 is not in the range"]),
    "predict: --threshold high": Case(lambda e: e.predict("--threshold", "high"), 2, ["--threshold", "'high' is not a valid"]),
    "predict: --device cuda:7 without a GPU": Case(
        lambda e: e.predict("--device", "cuda:7"), 1, ["--device cuda:7", "use --device cpu or auto"]),
    "predict: --device tpu": Case(lambda e: e.predict("--device", "tpu"), 2, ["'tpu' is not allowed", "auto, cpu, cuda or cuda:N"]),
    "predict: --sw-batch-size 0": Case(lambda e: e.predict("--sw-batch-size", "0"), 2, ["--sw-batch-size", "0 is not in the range x>=1"]),
    # ------------------------------------------------------------------ predict: output paths
    "predict: -o under a file": Case(
        lambda e: ["predict", "--checkpoint", e.ckpt(), e.scans(), "-o", _under_a_file(e), *P], 2,
        ["notes.txt' is a file", "no folder can be created under it"]),
    "predict: -o name too long": Case(
        lambda e: ["predict", "--checkpoint", e.ckpt(), e.scans(), "-o", e.tmp / LONG, *P], 2,
        ["is 300 bytes long", "at most 255 bytes", "choose a shorter name"]),
    "predict: -o with missing parents works": Case(
        lambda e: ["predict", "--checkpoint", e.ckpt(), e.scans(), "-o", e.out / "a" / "b", *P, "--overlap", "0"], 0,
        [], ["1 predicted"], out_made=True),
    "predict: -o holding the user's predictions.csv": Case(
        lambda e: e.predict(ckpt=e.ckpt()) if _foreign(e.out, "predictions.csv") else [], 1,
        ["already holds 'predictions.csv'", "medmtl did not write", "choose another -o"]),
    "predict: unicode scan and output names work": Case(
        lambda e: ["predict", "--checkpoint", e.ckpt(), e.scans(name="Müller 肺.nii.gz"), "-o", e.tmp / "ausgabe_ü", *P,
                   "--overlap", "0"], 0, [], ["1 predicted"], out_made=True),
    "predict: no scans in the folder": Case(
        lambda e: ["predict", "--checkpoint", e.ckpt(), e.file("docs/readme.txt", "x").parent, "-o", e.out, *P], 1,
        ["no scans found", "expected .nii/.nii.gz/.mha/.mhd/.nrrd"]),
    # ------------------------------------------------------------------ evaluate
    "evaluate: predictions for unknown scans": Case(
        lambda e: e.evaluate(f"{HEAD}\nnope_0000,1,2,3,0.5\n"), 1, ["share no scan id", "'nope_0000'", "the same scans"]),
    "evaluate: empty predictions file": Case(
        lambda e: e.evaluate(""), 1, ["p.csv lacks column(s)", "required: seriesuid, coordX, coordY, coordZ, probability"]),
    "evaluate: header but no prediction": Case(
        lambda e: e.evaluate(f"{HEAD}\n"), 1, ["has no prediction row", "with its predictions.json"]),
    "evaluate: extra columns are ignored": Case(
        lambda e: e.evaluate(f"{HEAD},note\nct_b_0000,1,2,3,0.5,mine\n"), 0, [], ["CPM"], out_made=True),
    "evaluate: byte-order mark works": Case(
        lambda e: e.evaluate(f"\ufeff{HEAD}\nct_b_0000,1,2,3,0.5\n".encode()), 0, [], ["CPM"], out_made=True),
    "evaluate: NaN probability": Case(
        lambda e: e.evaluate(f"{HEAD}\nct_b_0000,1,2,3,nan\n"), 1, ["row 2 column 'probability' has 'nan'", "finite number"]),
    "evaluate: text coordinate": Case(
        lambda e: e.evaluate(f"{HEAD}\nct_b_0000,a,2,3,0.5\n"), 1, ["row 2 column 'coordX' has 'a'", "not a number"]),
    "evaluate: negative diameter": Case(
        lambda e: e.evaluate(f"{HEAD},diameter_mm\nct_b_0000,1,2,3,0.5,-4\n"), 1,
        ["column 'diameter_mm' has -4.0", "allowed: >= 0.0"]),
    "evaluate: annotations given as predictions": Case(
        lambda e: ["evaluate", "--predictions", SITE_B / "annotations.csv", "--annotations", SITE_B / "annotations.csv",
                   "-o", e.out], 1, ["lacks column(s) ['probability']"]),
    "evaluate: predictions file is a FIFO": Case(
        lambda e: ["evaluate", "--predictions", _fifo(e, "p.csv"), "--annotations", SITE_B / "annotations.csv",
                   "-o", e.out], 2, ["--predictions", "is a FIFO (named pipe), not a regular file"]),
    "evaluate: -o holding the user's metrics.md": Case(
        lambda e: e.evaluate(f"{HEAD}\nct_b_0000,1,2,3,0.5\n") if _foreign(e.out, "metrics.md") else [], 1,
        ["already holds 'metrics.md'", "medmtl did not write"]),
    # ------------------------------------------------------------------ train
    "train: --set with an unknown key": Case(lambda e: e.train("--set", "train.epoch=3"), 1,
                                             ["unknown key 'train.epoch'", "did you mean 'train.epochs'"]),
    "train: --set with a bad type": Case(lambda e: e.train("--set", "train.epochs=many"), 1,
                                         ["'train.epochs'", "invalid value 'many'", "expected int"]),
    "train: --set without =": Case(lambda e: e.train("--set", "train.epochs"), 1, ["must look like key.sub=value"]),
    "train: --set with broken YAML": Case(lambda e: e.train("--set", "train.patch_size=[32,32"), 1,
                                          ["train.patch_size=[32,32", "not valid YAML"]),
    "train: --set out of range": Case(lambda e: e.train("--set", "train.learning_rate=-1"), 1,
                                      ["train.learning_rate = -1.0", "allowed: > 0"]),
    "train: config with an unknown top-level key": Case(
        lambda e: e.train(config=e.file("c.yaml", TINY.read_text(encoding="utf-8") + "\nextra_section: 1\n")), 1,
        ["unknown key 'extra_section'", "c.yaml"]),
    "train: config that is a list": Case(lambda e: e.train(config=e.file("c.yaml", "- a\n- b\n")), 1,
                                         ["must hold a mapping of sections, got list"]),
    "train: config indented with tabs": Case(lambda e: e.train(config=e.file("c.yaml", "train:\n\tepochs: 2\n")), 1,
                                             ["is not valid YAML", "fix the syntax"]),
    "train: config with a python tag": Case(
        lambda e: e.train(config=e.file("c.yaml", 'seed: !!python/object/apply:os.system ["echo pwned"]\n')), 1,
        ["is not valid YAML", "python/object/apply"]),
    "train: config is a device": Case(lambda e: e.train(config=Path("/dev/null")), 2,
                                      ["--config", "'/dev/null' is a device, not a regular file"]),
    "train: --out under a file": Case(lambda e: ["train", "--config", TINY, "--out", _under_a_file(e)], 2,
                                      ["is a file, so no folder can be created under it"]),
    "train: --resume with nothing to resume": Case(lambda e: e.train("--resume"), 1,
                                                   ["cannot resume", "start the run without --resume"]),
    # ------------------------------------------------------------------ adapt
    "adapt: --device cuda:7 without a GPU": Case(lambda e: e.adapt("--device", "cuda:7"), 1, ["--device cuda:7", "use --device cpu"]),
    "adapt: --steps -3": Case(lambda e: ["adapt", "--checkpoint", e.ckpt(), "--target", e.scans(2), "--method", "tent",
                                         "-o", e.out, "--device", "cpu", "--steps", "-3"], 1, ["--steps must be at least 1, got -3"]),
    "adapt: --lr nan": Case(lambda e: ["adapt", "--checkpoint", e.ckpt(), "--target", e.scans(2), "--method", "tent",
                                       "-o", e.out, "--device", "cpu", "--lr", "nan"], 1, ["--lr must be positive, got nan"]),
    "adapt: -o under a file": Case(lambda e: ["adapt", "--checkpoint", e.ckpt(), "--target", e.scans(2), "--method",
                                              "adabn", "-o", _under_a_file(e), "--device", "cpu"], 2,
                                   ["is a file, so no folder can be created under it"]),
    # ------------------------------------------------------------------ diagnose
    "diagnose: --n-permutations 0": Case(
        lambda e: ["diagnose", "--source", SITE_A, "--target", e.scans(2), "-o", e.out, "--n-permutations", "0"], 2,
        ["--n-permutations", "0 is not in the range x>=1"]),
    "diagnose: target folder without scans": Case(
        lambda e: ["diagnose", "--source", SITE_A, "--target", e.file("docs/readme.txt", "x").parent, "-o", e.out], 1,
        ["no scans found", "expected .nii/.nii.gz/.mha/.mhd/.nrrd"]),
    "diagnose: --device cuda:7 without a GPU": Case(
        lambda e: ["diagnose", "--source", SITE_A, "--target", SITE_B, "-o", e.out, "--device", "cuda:7"], 1,
        ["--device cuda:7", "use --device cpu or auto"]),
    "diagnose: --device tpu": Case(
        lambda e: ["diagnose", "--source", SITE_A, "--target", SITE_B, "-o", e.out, "--device", "tpu"], 2,
        ["'tpu' is not allowed", "auto, cpu, cuda or cuda:N"]),
    "diagnose: -o under a file": Case(
        lambda e: ["diagnose", "--source", SITE_A, "--target", SITE_B, "-o", _under_a_file(e)], 2,
        ["is a file, so no folder can be created under it"]),
    # ------------------------------------------------------------------ sample-data and classical
    "sample-data: --shape 8 8 8": Case(lambda e: ["sample-data", e.out, "--n", "1", "--shape", "8", "8", "8"], 1,
                                       ["shape values must each be in 16..512", "[8, 8, 8]", "e.g. --shape"]),
    "sample-data: OUT under a file": Case(lambda e: ["sample-data", _under_a_file(e), "--n", "1"], 2,
                                          ["is a file, so no folder can be created under it"]),
    "classical: -o name too long": Case(lambda e: ["classical", e.scans(), "-o", e.tmp / LONG, "--no-progress"], 2,
                                        ["is 300 bytes long", "choose a shorter name"]),
}


def _foreign(folder: Path, name: str) -> bool:
    """Put the user's own file ``name`` into ``folder`` (the output folder of the case)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text("the user's own file\n", encoding="utf-8")
    return True


def _run_folder(env: Env) -> Path:
    run = env.inp / "run"
    shutil.copytree(env.checkpoint, run / "checkpoint")
    return run


@pytest.mark.parametrize("name", list(CASES))
def test_hostile_command(tmp_path: Path, tiny_checkpoint: Path, hostile, name: str) -> None:
    case = CASES[name]
    env = Env(tmp_path, tiny_checkpoint)
    args = case.build(env)
    existed = os.path.lexists(env.out)  # an output folder with the user's file must stay as it is
    watch = [tmp_path / "in"] + ([env.out] if existed else [])
    absent = [] if case.out_made or existed else [env.out, tmp_path / LONG]
    hostile(args, code=case.code, words=case.words, stdout_words=case.stdout_words, watch=watch, absent=absent)


def test_a_full_disk_is_one_error_line(tmp_path: Path, hostile, monkeypatch: pytest.MonkeyPatch) -> None:
    """An OSError while writing (here: no space left) is one ``Error:`` line naming the file and the fix."""
    import errno

    from medmtl import api

    def full(**kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "out" / "metrics.json"))

    monkeypatch.setattr(api, "evaluate", full)
    table = tmp_path / "in" / "p.csv"
    table.parent.mkdir()
    table.write_text(f"{HEAD}\nct_b_0000,1,2,3,0.5\n", encoding="utf-8")
    hostile(["evaluate", "--predictions", table, "--annotations", SITE_B / "annotations.csv", "-o", tmp_path / "out"],
            words=["metrics.json", "No space left on device", "free disk space"], watch=[tmp_path / "in"])


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into any folder")
def test_an_unwritable_output_parent_is_refused_before_any_work(tmp_path: Path, hostile) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    os.chmod(locked, 0o555)
    try:
        hostile(["sample-data", locked / "set", "--n", "1"], code=2, words=["is not writable (permission denied)"],
                watch=[locked], absent=[locked / "set"])
    finally:
        os.chmod(locked, 0o755)
