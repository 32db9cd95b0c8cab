"""The `lad` command line: parses options and calls the library, nothing else.

One module per command group; each registers its commands on `app.app`."""
from . import train, distill, tools, deploy, zoo  # noqa: F401,I001  (registers the commands, in this order in --help)
from .app import app


def main() -> None:
    app()
