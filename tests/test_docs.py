"""The documentation: the command reference is the command line's own help, and every link
from the README into docs/ (and between docs files) leads to a file and a heading that exist."""
import re
from pathlib import Path

import pytest
import typer.main
from typer.testing import CliRunner

from lad_cli.cli import app
from lad_cli.cli.reference import commands, reference

ROOT = Path(__file__).resolve().parent.parent
DOCS = sorted((ROOT / "docs").glob("*.md"))
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def help_text(*words: str) -> str:
    """`lad WORDS --help` as a 250-column terminal shows it."""
    result = CliRunner().invoke(app, [*words, "--help"], env={"COLUMNS": "250", "TERMINAL_WIDTH": "250"})
    assert result.exit_code == 0, result.output
    return result.stdout


def listed_names(help_output: str) -> list[str]:
    """The names in the first column of help's panels (arguments, options, commands)."""
    found = re.finditer(r"^│ {1,5}(?:\* {1,4})?([\w,-]+(?:\.\.\.)?)\s", help_output, re.M)
    return [m.group(1).split(",")[0] for m in found]  # an option's first name (--cache,--out: --cache)


def reference_sections() -> dict[str, str]:
    text = (ROOT / "docs" / "commands.md").read_text()
    parts = re.split(r"^## `(lad [^`]+)`$", text, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2]))


def test_command_reference_is_the_generated_one():
    assert (ROOT / "docs" / "commands.md").read_text() == reference(), \
        "docs/commands.md is stale: python -m lad_cli.cli.reference > docs/commands.md"


def test_command_reference_agrees_with_lad_help():
    sections = reference_sections()
    top = [path.split()[1] for path in sections]
    assert listed_names(help_text())[1:] == list(dict.fromkeys(top))  # after --help: every command, in order
    assert list(sections) == [path for path, _ in commands(typer.main.get_command(app))]
    for path, body in sections.items():
        shown = listed_names(help_text(*path.split()[1:]))
        documented = [m.group(1).split()[0].rstrip(",") for m in re.finditer(r"^\| `([^`]+)` \|", body, re.M)]
        assert [n.removesuffix("...") for n in shown] == [n.removesuffix("...") for n in documented], path
        for line in help_text(*path.split()[1:]).splitlines():  # every option's help, word for word
            columns = re.split(r"\s{2,}", line)  # │ [*] name type help │
            if len(columns) >= 4 and columns[-3].startswith(("<", "auto|")) and listed_names(line):
                words = re.findall(r"[\w-]+", columns[-2].split(" [")[0])[:3]  # its start (rich renders [...] its way)
                assert re.search(r"\| " + r"\W+".join(map(re.escape, words)), body), (path, line)


def links(doc: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", doc.read_text(), flags=re.S)  # code blocks hold no links
    return [target for target in LINK.findall(text) if not re.match(r"[a-z]+:", target)]


def anchors(doc: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation out, spaces to hyphens, -1, -2 for repeats."""
    seen: dict[str, int] = {}
    out = set()
    for heading in re.findall(r"^#+ (.+)$", re.sub(r"```.*?```", "", doc.read_text(), flags=re.S), re.M):
        slug = "".join(c for c in heading.strip().lower().replace(" ", "-") if c.isalnum() or c in "-_")
        out.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
        seen[slug] = seen.get(slug, 0) + 1
    return out


@pytest.mark.parametrize("doc", [ROOT / "README.md", *DOCS], ids=lambda p: p.name)
def test_every_link_into_docs_resolves(doc):
    for target in links(doc):
        file, _, anchor = target.partition("#")
        linked = (doc.parent / file).resolve() if file else doc
        assert linked.exists(), f"{doc.name}: {target}: no such file"
        if anchor and linked.suffix == ".md":
            assert anchor in anchors(linked), f"{doc.name}: {target}: no such heading in {linked.name}"


def test_the_readme_links_into_docs_and_stays_short():
    readme = ROOT / "README.md"
    linked = {Path(t.partition("#")[0]).name for t in links(readme) if t.startswith("docs/")}
    assert {p.name for p in DOCS} - linked == set(), "docs files the README does not link"
    assert len(readme.read_text().splitlines()) <= 200
