"""`lad data synth`: the embedded dataset, written with a progress bar, beside any dataset
it replaces (`outputs.claim`: only one `lad data synth` wrote is replaced)."""
from pathlib import Path

from ..errors import LadError
from ..outputs import DATASET
from ..outputs import claim as claim_output
from ..progress import progress_bar
from .synth import write_synth


def synthesize(out: Path, n_train: int, n_val: int, seed: int, overwrite: bool = False) -> dict:
    out = Path(out)
    with claim_output(out, DATASET, overwrite) as claim, progress_bar() as bar:
        task = bar.add_task("synth", total=n_train + n_val, info="")
        try:
            summary = write_synth(claim.where, n_train, n_val, seed, on_image=lambda: bar.advance(task))
        except OSError as exc:
            raise LadError(f"{out}: cannot write the dataset ({exc.strerror})") from None
        claim.commit()
    return {"out": str(out), **summary}
