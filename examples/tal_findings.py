"""LAD beyond PAA: the task-aligned assigner (TAL, TOOD/YOLOv8) as teacher and student, on the
embedded dataset over 3 seeds, with the schedule of examples/paper_findings.py.

    python examples/tal_findings.py --out tal-findings [--quick] [--resume | --overwrite]

Two ResNet-18 teachers (seed 0, 12 epochs): PAA, and TAL (ATSS warm-up for its first 4 epochs,
TOOD's 1x ratio); each is cached (`lad assign`, orig+flip). Then, per seed, ResNet-18 students
of 5 epochs: the PAA and TAL baselines (TAL: 2 ATSS epochs), LAD from the TAL teacher's cache
(class target: the student's own alignment on the teacher's positives, no warm-up), the same
with the teacher's alignment as target (online: the cache holds no alignment), the same with 2
ATSS epochs of warm-up, cross-assigner LAD both ways (PAA teacher -> TAL student, TAL teacher ->
PAA student), and co-learning of two TAL ResNet-18s. Every TAL network is also scored with the
class probability alone as the detection score (`AP_cls`), to decide the IoU branch.
Writes OUT/tal_findings.md, .json (per-seed values) and .png; --resume reuses scored runs.
"""
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from paper_findings import (  # noqa: E402
    FULL,
    QUICK,
    Experiment,
    Row,
    aggregate,
    findings_config,
    main,
    render_chart,
    render_table,
)

from lad_cli.data.coco import load_split, locate_split  # noqa: E402
from lad_cli.data.dataset import DetectionDataset  # noqa: E402
from lad_cli.data.views import View  # noqa: E402
from lad_cli.demo import SCHEDULE  # noqa: E402
from lad_cli.distill.cache.build import run_assign  # noqa: E402
from lad_cli.distill.config import AssignConfig  # noqa: E402
from lad_cli.engine.evaluate import coco_metrics  # noqa: E402
from lad_cli.engine.inference import coco_records, detect_with_network  # noqa: E402
from lad_cli.errors import LadError  # noqa: E402
from lad_cli.model.build import load_detector  # noqa: E402
from lad_cli.model.postprocess import InferenceParams  # noqa: E402
from lad_cli.runtime import resolve_device, use_bf16  # noqa: E402

TEACHERS = {"PAA": {}, "TAL": {"assigner": "tal"}}
WARMUP_EPOCHS = 2  # the students' ATSS epochs where they have one (TOOD: 4 of 12)
RUNS = {
    "paa-baseline": {},
    "tal-baseline": {"assigner": "tal"},
    # As measured for docs/tal_findings.md, before a TAL LAD student's defaults became the
    # teacher's alignment and an ATSS warm-up: its own alignment, no warm-up.
    "tal-lad": {"assigner": "tal", "cache": "TAL", "alignment_from": "student", "atss_epochs": 0},
    "tal-lad-teacher-target": {"assigner": "tal", "teacher": "TAL", "alignment_from": "teacher", "atss_epochs": 0},
    "tal-lad-warmup": {"assigner": "tal", "cache": "TAL", "alignment_from": "student", "atss_epochs": WARMUP_EPOCHS},
    "tal-lad-from-paa": {"assigner": "tal", "cache": "PAA", "cross_assigner": True, "atss_epochs": 0},
    "paa-lad-from-tal": {"assigner": "paa", "cache": "TAL", "cross_assigner": True},
    "tal-colearn": {"assigner": "tal", "colearn": True},
}
ROWS = [
    Row("PAA baseline", "paa-baseline", "last.pt", None, "reference: own PAA assignment"),
    Row("TAL baseline", "tal-baseline", "last.pt", "PAA baseline", "TAL reaches at least PAA's AP (issue 12)"),
    Row("TAL LAD (T: TAL, cache)", "tal-lad", "last.pt", "TAL baseline", "LAD works with TAL (sec. 3)"),
    Row("TAL LAD, teacher's alignment as target", "tal-lad-teacher-target", "last.pt", "TAL baseline",
        "soft target: teacher's vs the student's own"),
    Row("TAL LAD + ATSS warm-up", "tal-lad-warmup", "last.pt", "TAL baseline", "a LAD student needs no warm-up"),
    Row("TAL LAD (T: PAA, cache, cross)", "tal-lad-from-paa", "last.pt", "TAL baseline", "a PAA teacher lifts a TAL student"),
    Row("PAA LAD (T: TAL, cache, cross)", "paa-lad-from-tal", "last.pt", "PAA baseline", "a TAL teacher lifts a PAA student"),
    Row("TAL co-learned with TAL (student)", "tal-colearn", "last.pt", "TAL baseline", "co-learning beats training alone (sec. 5)"),
    Row("TAL co-learned with TAL (peer)", "tal-colearn", "peer_last.pt", "TAL baseline", "co-learning beats training alone (sec. 5)"),
]


def cls_only_ap(run: Path, data: Path, checkpoint: str) -> float:
    """AP of a checkpoint scored by its class probability alone (the IoU branch unused)."""
    device = resolve_device(SCHEDULE["device"])
    model, ckpt = load_detector(run / checkpoint)
    split = load_split(*locate_split(str(data), "val"))
    view = View("orig", ckpt["size"], ckpt["max_size"], False)
    dataset = DetectionDataset(split, [view], model.config.layout.size_divisor)
    found = detect_with_network(model.to(device), dataset, SCHEDULE["batch"], device,
                                params=InferenceParams(iou_quality=False), bf16=use_bf16(device))
    category_ids = [c["id"] for c in split.categories]
    return coco_metrics(split, [r for index, det in found for r in coco_records(split.images[index].id, det, category_ids)])["AP"]


class TALExperiment(Experiment):
    def __init__(self, *args):
        super().__init__(*args)
        self.total = len(TEACHERS) + len(self.scale.seeds) * len(RUNS)

    def run(self, folder: Path, config, name: str, checkpoints: tuple[str, ...] = ("last.pt",)) -> dict:
        result = super().run(folder, config, name, checkpoints)
        if config.assigner == "tal" and any("AP_cls" not in result[c] for c in checkpoints):
            for c in checkpoints:
                result[c]["AP_cls"] = cls_only_ap(folder, self.data, c)
            (folder / "scores.json").write_text(json.dumps(result, indent=2) + "\n")
        return result

    def teachers(self) -> dict:
        found = {}
        for short, source in TEACHERS.items():
            folder, cache = self.teacher_dir(short), self.cache_path(short)
            config = findings_config(self.data, 0, self.scale.teacher_epochs, warmup=self.scale.teacher_warmup, **source)
            found[short] = self.run(folder, config, f"teacher {short}")["last.pt"]
            run_assign(AssignConfig(str(folder / "last.pt"), str(self.data), cache=str(cache), batch=SCHEDULE["batch"],
                                    device=SCHEDULE["device"], resume=self.resume and cache.exists(), overwrite=self.overwrite))
        return found

    def students(self, seed: int) -> dict:
        found = {}
        for key, source in RUNS.items():
            config = findings_config(self.data, seed, self.scale.student_epochs, warmup=self.scale.student_warmup,
                                    **self.with_paths(source))
            checkpoints = ("last.pt", "peer_last.pt") if source.get("colearn") else ("last.pt",)
            found[key] = self.run(self.out / f"seed{seed}" / key, config, f"seed {seed} {key}", checkpoints)
        return found


def cls_only_summary(per_seed: dict, teachers: dict) -> dict:
    """AP with and without the IoU branch in the score, per TAL network: mean over seeds."""
    out = {"TAL teacher": {"AP": teachers["TAL"]["AP"], "AP_cls": teachers["TAL"]["AP_cls"]}}
    for row in ROWS:
        values = [per_seed[s][row.run][row.checkpoint] for s in per_seed]
        if "AP_cls" in values[0]:
            out[row.label] = {k: sum(v[k] for v in values) / len(values) for k in ("AP", "AP_cls")}
    return out


def run_findings(out: Path, quick: bool, resume: bool, overwrite: bool) -> str:
    if resume and overwrite:
        raise LadError("--resume and --overwrite exclude each other")
    scale = QUICK if quick else FULL
    experiment = TALExperiment(out, scale, resume, overwrite)
    started = time.perf_counter()
    experiment.prepare_folder()
    experiment.synth()
    teachers = experiment.teachers()
    per_seed = {seed: experiment.students(seed) for seed in scale.seeds}
    rows = aggregate(teachers, per_seed, ROWS)
    quality = cls_only_summary(per_seed, teachers)
    seconds = round(time.perf_counter() - started)
    name = "quick" if quick else "full"
    header = (f"**TAL findings, {scale.describe(name)}** (ResNet-18 everywhere; TAL teacher with 4 ATSS epochs, TAL "
              f"baseline and co-learning with {WARMUP_EPOCHS}; {seconds} s in all{', resumed' if resume else ''})")
    table = render_table(rows, header, ROWS)
    iou_lines = ["", "| TAL network | AP, score sqrt(cls x IoU) | AP, score cls |", "|---|---|---|"]
    iou_lines += [f"| {k} | {v['AP']:.3f} | {v['AP_cls']:.3f} |" for k, v in quality.items()]
    text = table + "\n" + "\n".join(iou_lines)
    (out / "tal_findings.md").write_text(text + "\n")
    (out / "tal_findings.json").write_text(json.dumps({"scale": scale.__dict__, "quick": quick, "seconds": seconds,
                                                       "rows": rows, "iou_branch": quality}, indent=2, default=list) + "\n")
    render_chart(rows, f"TAL findings, {scale.describe(name)}", out / "tal_findings.png")
    return text


if __name__ == "__main__":
    main(run_findings, __doc__, "tal-findings")
