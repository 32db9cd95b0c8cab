"""TAL students on the teachers' schedule: does LAD with TAL hold once a TAL student learns?

    python examples/tal_long_schedule.py --findings tal-findings --out tal-long [--epochs 12] [--resume]

At the findings' 5-epoch schedule a TAL student from scratch has barely started (its class
target is its own alignment, near zero while its boxes are poor). This takes the teachers,
caches and data of a finished `examples/tal_findings.py` folder and trains, for seeds 0, 1, 2,
the PAA baseline, the TAL baseline (ATSS for its first third, as the TAL teacher), LAD from the
TAL teacher's cache (class target: the student's own alignment), the same with ATSS for its
first third, and LAD from the TAL teacher online with the teacher's alignment as target, for
--epochs (default 12, the teachers' schedule). Writes OUT/tal_long.md and .json; --resume
reuses scored runs.
"""
import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from paper_findings import FULL, Row, aggregate, findings_config, print_or_exit, render_table  # noqa: E402
from tal_findings import RUNS, TALExperiment  # noqa: E402

from lad_cli.errors import LadError  # noqa: E402

LONG_RUNS = ("paa-baseline", "tal-baseline", "tal-lad", "tal-lad-warmup", "tal-lad-teacher-target")
LONG_ROWS = [
    Row("PAA baseline", "paa-baseline", "last.pt", None, "reference: own PAA assignment"),
    Row("TAL baseline", "tal-baseline", "last.pt", "PAA baseline", "TAL reaches at least PAA's AP"),
    Row("TAL LAD (T: TAL, cache)", "tal-lad", "last.pt", "TAL baseline", "LAD works with TAL (sec. 3)"),
    Row("TAL LAD + ATSS warm-up", "tal-lad-warmup", "last.pt", "TAL baseline", "a LAD student needs no warm-up"),
    Row("TAL LAD, teacher's alignment as target", "tal-lad-teacher-target", "last.pt", "TAL baseline",
        "soft target: teacher's vs the student's own"),
]


class LongExperiment(TALExperiment):
    """Students in `out`; the teachers, their caches and the data of a finished findings folder."""

    def __init__(self, findings: Path, out: Path, epochs: int, resume: bool):
        super().__init__(out, replace(FULL, student_epochs=epochs), resume, False)
        self.findings, self.data = findings, findings / "data"
        self.total = len(self.scale.seeds) * len(LONG_RUNS)

    def teacher_dir(self, short: str) -> Path:
        return self.findings / f"teacher-{short.lower()}"

    def cache_path(self, short: str) -> Path:
        return self.findings / f"teacher-{short.lower()}.zarr"

    def teachers(self) -> dict:
        found = {}
        for short in ("PAA", "TAL"):
            scores = self.teacher_dir(short) / "scores.json"
            if not scores.exists():
                raise LadError(f"{scores}: missing; run examples/tal_findings.py --out {self.findings} first")
            found[short] = json.loads(scores.read_text())["last.pt"]
        return found

    def students(self, seed: int) -> dict:
        found = {}
        for key in LONG_RUNS:
            source = RUNS[key] if key != "tal-lad-warmup" else {**RUNS[key], "atss_epochs": self.scale.student_epochs // 3}
            config = findings_config(self.data, seed, self.scale.student_epochs, warmup=self.scale.student_warmup,
                                     **self.with_paths(source))
            found[key] = self.run(self.out / f"seed{seed}" / key, config, f"seed {seed} {key}")
        return found


def run_long(findings: Path, out: Path, epochs: int, resume: bool) -> str:
    experiment = LongExperiment(findings, out, epochs, resume)
    started = time.perf_counter()
    teachers = experiment.teachers()
    experiment.prepare_folder()
    per_seed = {seed: experiment.students(seed) for seed in experiment.scale.seeds}
    rows = aggregate(teachers, per_seed, LONG_ROWS)
    seconds = round(time.perf_counter() - started)
    header = (f"**TAL students on a {epochs}-epoch schedule** (teachers, caches and data of {findings}; students "
              f"ResNet-18, seeds 0, 1, 2, TAL baseline and LAD + warm-up with ATSS for their first third; {seconds} s in all)")
    table = render_table(rows, header, LONG_ROWS)
    (out / "tal_long.md").write_text(table + "\n")
    (out / "tal_long.json").write_text(json.dumps({"epochs": epochs, "seconds": seconds, "rows": rows}, indent=2) + "\n")
    return table


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--findings", type=Path, default=Path("tal-findings"), help="A finished tal_findings.py folder.")
    p.add_argument("--out", type=Path, default=Path("tal-long"))
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--resume", action="store_true", help="Reuse the runs already scored in --out.")
    args = p.parse_args()
    print_or_exit(lambda: run_long(args.findings, args.out, args.epochs, args.resume))


if __name__ == "__main__":
    main()
