"""MkDocs hook: the links in docs/ that lead out of it, checked and made to work on the site.

The Markdown files are read in two places: on GitHub, where a link to ``../src/vitkit/cnn.py`` or
``../CHANGELOG.md`` opens that file, and on the site, which holds only ``docs/``. MkDocs checks the
links inside ``docs/`` itself (``validation`` in mkdocs.yml, errors under ``--strict``); this hook
does the same for the links that leave it, so neither reader meets a dead link:

- a link to README.md or CHANGELOG.md becomes a link to the page that includes it
  (``index.md``, ``changelog.md``);
- a link to any other file of the repository (source, records), or to a folder, must exist,
  and becomes its text alone, since the site has no copy of it (or no page for a folder) to open;
- a link to a file that does not exist is a warning, which ``mkdocs build --strict`` turns into
  a failed build.

The docstrings cite each other Sphinx's way (``:func:`load_any```), which Markdown shows
as written; on the API page the role is dropped and the name stays code.

And one thing of the generated tables: their notes are cited as ``[1][2]``, which Markdown's
reference-link syntax (and mkdocs-autorefs) would read as a link to a reference named "2". On
the site they are escaped, so they show as written, as they do on GitHub.
"""

from __future__ import annotations

import logging
import posixpath
import re
from pathlib import Path

log = logging.getLogger("mkdocs.hooks.links")

# [text](target) and ![alt](target), but not inside inline code; targets without a scheme.
LINK = re.compile(r"(!?)\[([^\]]*)\]\(([^)\s]+)\)")
PAGES_FOR = {"README.md": "index.md", "CHANGELOG.md": "changelog.md"}
ROLE = re.compile(r":(?:func|class|meth|mod|attr|data|exc|obj):(?=<code)")  # rendered HTML
NOTE = re.compile(r"(?<![\\!\]])\[(\d+)\](?![(:])")  # [1] in a table's notes column, not [text](1) or [1]: def


def _rewrite(match: re.Match, page_dir: str, docs: Path, root: Path, src: str) -> str:
    bang, text, target = match.groups()
    if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
        return match.group(0)
    path, hash_, anchor = target.partition("#")
    inside = posixpath.normpath(posixpath.join(page_dir, path))  # relative to docs/
    if not inside.startswith("../") and not path.endswith("/"):
        return match.group(0)  # a file inside docs/: MkDocs' own validation checks it
    in_repo = posixpath.normpath(posixpath.join("docs", inside))  # relative to the repository
    if in_repo in PAGES_FOR:
        new = posixpath.relpath(PAGES_FOR[in_repo], page_dir or ".")
        return f"{bang}[{text}]({new}{hash_}{anchor})"
    if not (root / in_repo).exists():
        log.warning("%s: link to %s, which does not exist in the repository", src, in_repo)
        return match.group(0)
    return text


def on_page_markdown(markdown: str, page, config, files) -> str:  # noqa: ANN001 - MkDocs' objects
    docs = Path(config["docs_dir"])
    root = docs.parent
    page_dir = posixpath.dirname(page.file.src_uri)
    markdown = LINK.sub(lambda m: _rewrite(m, page_dir, docs, root, page.file.src_uri), markdown)
    return NOTE.sub(r"\\[\1\\]", markdown)


def on_page_content(html: str, page, config, files) -> str:  # noqa: ANN001 - MkDocs' objects
    return ROLE.sub("", html)
