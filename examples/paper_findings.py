"""The paper's comparisons (docs/method.md: LAD, soft labels, co-learning) on the embedded dataset, over several seeds.

    python examples/paper_findings.py --out findings [--quick] [--resume | --overwrite]

Two teachers (ResNet-18 and ResNet-50, seed 0, trained longer than the students) are trained,
scored and cached once; then, for every seed, each student of RUNS is trained with the same
schedule (the demo preset: width 64, head depth 2, 160/256 px, anchor scale 4, batch 8, lr 0.02)
and scored on the val split. Writes OUT/findings.md (the table, also printed on stdout),
OUT/findings.json (per-seed values), OUT/findings.png (bar chart, error bars = std over seeds);
every run is a lad run folder under OUT (teachers in OUT/teacher-*, students in OUT/seed*/).
Each run's result line goes to stderr. --resume reuses the runs already scored (their
scores.json) and continues interrupted ones from their last.pt.

Full (48 min measured on an idle 2-core CPU: teachers and caches about 8 min, 24 students
40 min; about 8 GB of run folders): 200 train / 100 val images, teachers 12 epochs (300
iterations), students 5 epochs (125 iterations, warm-up 20, lr x0.1 in the last epoch), seeds
0, 1, 2. --quick (4 min 16 s measured; it checks the pipeline, its numbers mean nothing): 40
train / 30 val images, teachers 4 epochs, students 2 epochs, seeds 0, 1.

Soft-label weights (lad_cli.losses.SoftLabelWeights; --soft-label-weight sets the class term,
IoU 10 and box 1.3 are fixed): soft label alone uses class 10, LAD + soft label class 2, as
the released configs. "Soft label" keeps the student's own PAA assignment for its GT losses
(student-train --assign-from student). GIoU weighting: lad's defaults (IoU-weighted for own
assignments, plain mean for LAD and co-learning).
"""
import argparse
import json
import statistics
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from lad_cli.data.make import synthesize  # noqa: E402
from lad_cli.demo import SCHEDULE, evaluate_run, student_config  # noqa: E402
from lad_cli.distill.cache.build import run_assign  # noqa: E402
from lad_cli.distill.config import AssignConfig  # noqa: E402
from lad_cli.engine.loop import train  # noqa: E402
from lad_cli.errors import LadError, one_line  # noqa: E402
from lad_cli.runtime import console  # noqa: E402

# The input size these findings were measured at, pinned: the demo preset may change for speed.
FINDINGS_INPUT = {"size": 160, "max_size": 256}


def findings_config(data, seed: int, epochs: int, **changes):
    """The demo's student config at the findings' input size."""
    return student_config(data, seed, epochs, **{**FINDINGS_INPUT, **changes})



@dataclass(frozen=True)
class Scale:
    train: int
    val: int
    seeds: tuple[int, ...]
    teacher_epochs: int
    student_epochs: int
    teacher_warmup: int
    student_warmup: int

    def describe(self, name: str) -> str:
        return (f"{name}: {self.train} train / {self.val} val images of the embedded dataset, teachers {self.teacher_epochs} "
                f"epochs (seed 0), students {self.student_epochs} epochs (warm-up {self.student_warmup} iterations), "
                f"seeds {', '.join(map(str, self.seeds))}")


FULL = Scale(train=200, val=100, seeds=(0, 1, 2), teacher_epochs=12, student_epochs=5, teacher_warmup=50, student_warmup=20)
QUICK = Scale(train=40, val=30, seeds=(0, 1), teacher_epochs=4, student_epochs=2, teacher_warmup=8, student_warmup=3)
TEACHERS = {"R18": "resnet18", "R50": "resnet50"}

# Student runs per seed: backbone and assignment source (teacher/cache name a teacher of TEACHERS).
RUNS = {
    "r18-baseline": ("resnet18", {}),
    "r18-soft": ("resnet18", {"teacher": "R18", "assign_from": "student", "soft_label_weight": 10.0}),
    "r18-lad": ("resnet18", {"cache": "R18"}),
    "r18-lad-soft": ("resnet18", {"teacher": "R18", "soft_label_weight": 2.0}),
    "r18-lad-r50": ("resnet18", {"cache": "R50"}),
    "r50-baseline": ("resnet50", {}),
    "r50-lad-r18": ("resnet50", {"cache": "R18"}),
    "colearn": ("resnet18", {"colearn": True, "peer_arch": "resnet50"}),
}


@dataclass(frozen=True)
class Row:
    label: str
    run: str  # a RUNS key
    checkpoint: str  # which network of the run folder
    baseline: str | None  # the row it is compared with
    finding: str


ROWS = [
    Row("R18 baseline", "r18-baseline", "last.pt", None, "reference: own PAA assignment"),
    Row("R18 soft label (T: R18)", "r18-soft", "last.pt", "R18 baseline", "soft labels help, less than LAD (sec. 3-4)"),
    Row("R18 LAD (T: R18, cache)", "r18-lad", "last.pt", "R18 baseline", "the teacher's assignment alone beats the baseline (sec. 3)"),
    Row("R18 LAD + soft label (T: R18)", "r18-lad-soft", "last.pt", "R18 baseline", "LAD and soft labels add up (sec. 4, SoLAD)"),
    Row("R18 LAD (T: R50, cache)", "r18-lad-r50", "last.pt", "R18 baseline", "a larger teacher's assignment helps (sec. 3)"),
    Row("R50 baseline", "r50-baseline", "last.pt", None, "reference: own PAA assignment"),
    Row("R50 LAD (T: R18, cache)", "r50-lad-r18", "last.pt", "R50 baseline", "a smaller teacher lifts a larger student (sec. 3)"),
    Row("R18 co-learned with R50", "colearn", "last.pt", "R18 baseline", "co-learning from scratch beats training alone (sec. 5)"),
    Row("R50 co-learned with R18", "colearn", "peer_last.pt", "R50 baseline", "co-learning from scratch beats training alone (sec. 5)"),
]


class Experiment:
    def __init__(self, out: Path, scale: Scale, resume: bool, overwrite: bool):
        self.out, self.scale, self.resume, self.overwrite = out, scale, resume, overwrite
        self.data = out / "data"
        self.done = 0
        self.total = len(TEACHERS) + len(scale.seeds) * len(RUNS)

    def prepare_folder(self) -> None:
        """Refuse an existing folder unless --resume (of the same scale) or --overwrite."""
        stamp, scale = self.out / "experiment.json", json.dumps(asdict(self.scale))
        if self.out.exists() and any(self.out.iterdir()):
            if not (self.resume or self.overwrite):
                raise LadError(f"{self.out}: not empty; pass --resume to reuse its finished runs or --overwrite to redo them")
            if self.resume and (not stamp.exists() or stamp.read_text().strip() != scale):
                raise LadError(f"{self.out}: was not made by this script at this scale (--quick or not); nothing to resume")
        self.out.mkdir(parents=True, exist_ok=True)
        stamp.write_text(scale + "\n")

    def synth(self) -> None:
        if self.resume and (self.data / "annotations" / "val.json").exists():  # written last
            return
        synthesize(self.data, self.scale.train, self.scale.val, 0, overwrite=True)

    def run(self, folder: Path, config, name: str, checkpoints: tuple[str, ...] = ("last.pt",)) -> dict:
        """Train one lad run folder (or reuse it) and score its networks; cached in folder/scores.json."""
        scores = folder / "scores.json"
        start = time.perf_counter()
        if self.resume and scores.exists():
            result, note = json.loads(scores.read_text()), "reused"
        else:
            interrupted = self.resume and (folder / "last.pt").exists()
            train(replace(config, out=str(folder)), resume=interrupted, overwrite=not interrupted)
            result = {c: {k: evaluate_run(folder, self.data, c)[k] for k in ("AP", "AP50")} for c in checkpoints}
            result["seconds"] = round(time.perf_counter() - start, 1)
            scores.write_text(json.dumps(result, indent=2) + "\n")
            note = f"{result['seconds']:.0f} s"
        self.done += 1
        metrics = "  ".join(f"{c.removesuffix('.pt')}: AP {result[c]['AP']:.3f} AP50 {result[c]['AP50']:.3f}" for c in checkpoints)
        console.print(f"[{self.done}/{self.total}] {name}: {metrics} ({note})", markup=False, highlight=False, soft_wrap=True)
        return result

    def teachers(self) -> dict:
        found = {}
        for short, arch in TEACHERS.items():
            folder, cache = self.teacher_dir(short), self.cache_path(short)
            config = findings_config(self.data, 0, self.scale.teacher_epochs, arch=arch, warmup=self.scale.teacher_warmup)
            found[short] = self.run(folder, config, f"teacher {short}")["last.pt"]
            run_assign(AssignConfig(str(folder / "last.pt"), str(self.data), cache=str(cache), batch=SCHEDULE["batch"],
                                    device=SCHEDULE["device"], resume=self.resume and cache.exists(), overwrite=self.overwrite))
        return found

    def students(self, seed: int) -> dict:
        found = {}
        for key, (arch, source) in RUNS.items():
            config = findings_config(self.data, seed, self.scale.student_epochs, arch=arch, warmup=self.scale.student_warmup,
                                    **self.with_paths(source))
            checkpoints = ("last.pt", "peer_last.pt") if source.get("colearn") else ("last.pt",)
            found[key] = self.run(self.out / f"seed{seed}" / key, config, f"seed {seed} {key}", checkpoints)
        return found

    def with_paths(self, source: dict) -> dict:
        """A RUNS source with its teacher names turned into the teacher's checkpoint or cache."""
        paths = {"teacher": lambda t: str(self.teacher_dir(t) / "last.pt"), "cache": lambda t: str(self.cache_path(t))}
        return {k: paths[k](v) if k in paths else v for k, v in source.items()}

    def teacher_dir(self, short: str) -> Path:
        return self.out / f"teacher-{short.lower()}"

    def cache_path(self, short: str) -> Path:
        return self.out / f"teacher-{short.lower()}.zarr"


def aggregate(teachers: dict, per_seed: dict[int, dict], specs: list[Row] = ROWS) -> dict:
    rows = {f"{short} teacher": {"seeds": [0], "AP": [m["AP"]], "AP50": [m["AP50"]]} for short, m in teachers.items()}
    for row in specs:
        seeds = sorted(per_seed)
        rows[row.label] = {"seeds": seeds, **{k: [per_seed[s][row.run][row.checkpoint][k] for s in seeds] for k in ("AP", "AP50")}}
    for values in rows.values():
        for k in ("AP", "AP50"):
            values[f"{k}_mean"] = statistics.mean(values[k])
            values[f"{k}_std"] = statistics.stdev(values[k]) if len(values[k]) > 1 else 0.0
    return rows


def render_table(rows: dict, header: str, specs: list[Row] = ROWS) -> str:
    def cell(r: dict, k: str) -> str:
        return f"{r[f'{k}_mean']:.3f}" + (f" ± {r[f'{k}_std']:.3f}" if len(r[k]) > 1 else "")

    lines = [header, "", "| model | AP | AP50 | ΔAP vs baseline | finding tested |", "|---|---|---|---|---|"]
    by_label = {row.label: row for row in specs}
    for label, r in rows.items():
        row = by_label.get(label)
        delta, finding = "", "teacher (one run)"
        if row is not None:
            finding = row.finding
            if row.baseline:
                base = rows[row.baseline]
                gain = r["AP_mean"] - base["AP_mean"]
                beyond = abs(gain) > max(r["AP_std"], base["AP_std"])
                delta = f"{gain:+.3f}" + (" *" if beyond else "")
        lines.append(f"| {label} | {cell(r, 'AP')} | {cell(r, 'AP50')} | {delta} | {finding} |")
    lines += ["", "mean ± std over the seeds; * = the gain exceeds both rows' std."]
    return "\n".join(lines)


def render_chart(rows: dict, title: str, path: Path) -> None:
    labels = list(rows)
    fig, ax = plt.subplots(figsize=(11, 4.8))
    width = 0.38
    for offset, key in ((-width / 2, "AP"), (width / 2, "AP50")):
        xs = [i + offset for i in range(len(labels))]
        ax.bar(xs, [rows[n][f"{key}_mean"] for n in labels], width, yerr=[rows[n][f"{key}_std"] for n in labels],
               capsize=3, label=key)
    ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("val split")
    ax.set_title(title, fontsize=9)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_findings(out: Path, quick: bool, resume: bool, overwrite: bool) -> str:
    """Every run, then findings.md/.json/.png in `out`; returns the Markdown table."""
    if resume and overwrite:
        raise LadError("--resume and --overwrite exclude each other")
    scale = QUICK if quick else FULL
    experiment = Experiment(out, scale, resume, overwrite)
    started = time.perf_counter()
    experiment.prepare_folder()
    experiment.synth()
    teachers = experiment.teachers()
    per_seed = {seed: experiment.students(seed) for seed in scale.seeds}
    rows = aggregate(teachers, per_seed)
    seconds = round(time.perf_counter() - started)
    header = (f"**Paper findings, {scale.describe('quick' if quick else 'full')}** "
              f"(soft label: class/IoU/box KD weights 10/10/1.3 on the student's own PAA assignment; "
              f"LAD + soft label: 2/10/1.3; {seconds} s in all{', resumed' if resume else ''})")
    table = render_table(rows, header)
    (out / "findings.md").write_text(table + "\n")
    (out / "findings.json").write_text(json.dumps({"scale": asdict(scale), "quick": quick, "seconds": seconds,
                                                   "rows": rows}, indent=2) + "\n")
    render_chart(rows, scale.describe("quick" if quick else "full"), out / "findings.png")
    return table


def main(run=None, description: str = __doc__, default_out: str = "findings") -> None:
    """The command line of this script and of its siblings (`run`: their run_findings)."""
    run = run or run_findings
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path(default_out), help="Results folder (refused if not empty, see below).")
    p.add_argument("--quick", action="store_true", help="Small version (about 5 min): 40/30 images, 2 seeds, short runs.")
    p.add_argument("--resume", action="store_true", help="Reuse the runs already scored in --out; continue interrupted ones.")
    p.add_argument("--overwrite", action="store_true", help="Redo every run in --out.")
    args = p.parse_args()
    print_or_exit(lambda: run(args.out, args.quick, args.resume, args.overwrite))


def print_or_exit(produce) -> None:
    """Print what `produce()` returns; a LadError ends the script with one line and exit code 2."""
    try:
        print(produce())
    except LadError as exc:
        print(f"error: {one_line(exc)}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
