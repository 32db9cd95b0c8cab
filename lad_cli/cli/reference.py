"""The command reference, docs/commands.md, generated from the typer app so it cannot drift:
`python -m lad_cli.cli.reference > docs/commands.md`. tests/test_docs.py fails when the file
and `lad --help` (or any command's help) disagree."""
import typer
import typer.main

from . import app

HEADER = """# Command reference

Every `lad` command with its arguments and options, exactly as `lad COMMAND --help` gives them.
Generated: `python -m lad_cli.cli.reference > docs/commands.md` (tests/test_docs.py fails when
this file and the command line disagree). Every command prints progress on stderr and results
as JSON on stdout (or in the file named), takes `--device auto|cpu|cuda|cuda:N` where it
computes, and ends a user mistake with exit code 2 and one line; a mistyped option is answered
with the closest valid name, a value outside an option's fixed set with the valid values.
`assign`, `teacher-train`, `student-train`, `eval` and `predict` also run under `torchrun`
([scaling.md](scaling.md)), where rank 0 prints and writes.
"""


def cell(text: str) -> str:
    """Text for one Markdown table cell: one line, pipes escaped."""
    return " ".join(text.split()).replace("|", "\\|")


def command_section(command, path: str) -> list[str]:
    """`## lad PATH`: its help text, usage line and a table of its arguments and options."""
    ctx = typer.Context(command, info_name=path)
    lines = [f"## `{path}`", "", (command.help or "").strip(), "", "```", command.get_usage(ctx).strip(), "```", ""]
    records = [p.get_help_record(ctx) for p in command.get_params(ctx)]
    lines += ["| argument / option | meaning |", "| --- | --- |"]
    lines += [f"| `{cell(name)}` | {cell(meaning)} |" for name, meaning in filter(None, records)]
    return lines + [""]


def commands(group, path: str = "lad"):
    """(path, command) for every command under the group, in `lad --help`'s order, groups expanded."""
    for name in group.list_commands(None):
        command = group.get_command(None, name)
        if hasattr(command, "list_commands"):
            yield from commands(command, f"{path} {name}")
        else:
            yield f"{path} {name}", command


def reference() -> str:
    """docs/commands.md's text."""
    listed = list(commands(typer.main.get_command(app)))
    index = ["| command | what it does |", "| --- | --- |"]
    index += [f"| [`{path}`](#{anchor(path)}) | {cell(command.get_short_help_str(limit=200))} |" for path, command in listed]
    body = [line for path, command in listed for line in command_section(command, path)]
    return "\n".join([HEADER, *index, "", *body]).rstrip() + "\n"


def anchor(path: str) -> str:
    """GitHub's anchor of the heading "`lad PATH`": lower case, spaces to hyphens, punctuation out."""
    return "".join(c for c in path.lower().replace(" ", "-") if c.isalnum() or c in "-_")


if __name__ == "__main__":
    print(reference(), end="")
