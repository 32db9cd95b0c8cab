"""The one exception type for user mistakes: the CLI prints its message on one line and exits 2."""


class LadError(Exception):
    """Bad input or a refused operation, explained in one line (file, id, field)."""


def one_line(error: BaseException) -> str:
    """The user-facing line of an error, also when a DataLoader worker re-raised it.

    PyTorch re-raises a worker's exception with the worker traceback folded into the
    message; the original message is then the last line, behind "module.Class: ".
    """
    text = str(error).strip()
    if "\n" not in text:
        return text
    last = text.splitlines()[-1]
    prefix = f"{type(error).__module__}.{type(error).__name__}: "
    return last[len(prefix):] if last.startswith(prefix) else last


class NonFiniteLoss(Exception):
    """A training step whose loss (or gradient norm) is NaN or infinite; nothing was stepped."""

    def __init__(self, term: str, value: float):
        super().__init__(f"non-finite {term} ({value})")
        self.term = term
        self.value = value
