"""`lad data synth`: the embedded dataset, written with a progress bar and no silent overwrite."""
import shutil
from pathlib import Path

from ..errors import LadError
from ..progress import progress_bar
from .synth import write_synth


def synthesize(out: Path, n_train: int, n_val: int, seed: int, overwrite: bool = False) -> dict:
    out = Path(out)
    if (out / "annotations").exists() or (out / "images").exists():
        if not overwrite:
            raise LadError(f"{out}: a dataset is already there; pass --overwrite to replace it")
        shutil.rmtree(out / "annotations", ignore_errors=True)
        shutil.rmtree(out / "images", ignore_errors=True)
    with progress_bar() as bar:
        task = bar.add_task("synth", total=n_train + n_val, info="")
        try:
            summary = write_synth(out, n_train, n_val, seed, on_image=lambda: bar.advance(task))
        except OSError as exc:
            raise LadError(f"{out}: cannot write the dataset ({exc.strerror})") from None
    return {"out": str(out), **summary}
