"""mkdocs hooks: the CLI reference page, generated from the argparse parsers at build time.

``cli.md`` is not a file in ``docs/``: it is made here from ``platpass.cli.reference`` (the
same parsers ``platpass --help`` prints), so the reference cannot drift from the program.
``tests/test_docs.py`` checks the page against ``platpass COMMAND --help``.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"


def on_files(files, config):
    from mkdocs.structure.files import File

    if str(SRC) not in sys.path:
        sys.path.insert(0, str(SRC))
    from platpass.cli.reference import markdown

    files.append(File.generated(config, "cli.md", content=markdown()))
    return files


_ROLE = re.compile(r":(?:class|func|mod|meth|attr|data|exc|obj|const):<code>(~?)([^<]+)</code>")


def _role(match: re.Match[str]) -> str:
    target = match.group(2)
    shown = target.rsplit(".", 1)[-1] if match.group(1) else target.lstrip(".")
    return f"<code>{shown}</code>"


def on_page_content(html, page, config, files):
    """Docstrings use Sphinx roles (``:class:`~a.B```): show them as plain code names."""
    return _ROLE.sub(_role, html)
