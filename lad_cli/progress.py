"""Rich progress bars on stderr, shared by every long command."""
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from .runtime import console


def progress_bar(disable: bool = False) -> Progress:
    """description | bar | done/total | info field | elapsed < remaining. `disable`: draw
    nothing (processes other than rank 0 under torchrun)."""
    return Progress(
        TextColumn("{task.description}"), BarColumn(bar_width=24), MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TextColumn("<"), TimeRemainingColumn(),
        console=console, transient=False, disable=disable,
    )
