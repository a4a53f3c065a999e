"""Every file the documentation points to is in the repository: relative links, and paths
written as code (`docs/recipes.md`, `recipes/cloud_function.py`), in README.md, docs/*.md and
the other READMEs. A path is looked up among the files git tracks, so a file that exists
only on one machine does not count; paths git ignores (`tests/node/node_modules`, made by
the install) are left alone."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path, PurePosixPath

import pytest

REPO = Path(__file__).resolve().parent.parent
LINK = re.compile(r"\]\(([^)\s]+)\)")
CODE = re.compile(r"`([^`\s]+)`")
EXTERNAL = re.compile(r"^[a-z][a-z0-9+.-]*:|^#|^/|^~")
PATTERN = re.compile(r"[<>{}*$]|\.\.\.")  # `<package>/pginstall/bin`, `gw_tmp_*`: a shape, not a file


def _git(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=30)


TRACKED = set(_git("ls-files").stdout.splitlines())
FOLDERS = {str(parent) for file in TRACKED for parent in PurePosixPath(file).parents if str(parent) != "."}
TOP_LEVEL = {name.split("/")[0] for name in TRACKED}
DOCUMENTS = sorted(
    name for name in TRACKED
    if name == "README.md" or (name.startswith("docs/") and name.endswith(".md")) or name.endswith("/README.md")
)


def _in_repository(path: PurePosixPath) -> bool:
    normal = PurePosixPath(*[part for part in path.parts if part != "."])
    text = str(normal).rstrip("/")
    return text in TRACKED or text in FOLDERS or _git("check-ignore", "-q", text).returncode == 0


def _relative(document: str, target: str) -> PurePosixPath:
    resolved = (REPO / PurePosixPath(document).parent / target).resolve()
    return PurePosixPath(resolved.relative_to(REPO)) if resolved.is_relative_to(REPO) else PurePosixPath(target)


def broken_paths(document: str, text: str) -> list[str]:
    """What `text`, read as the document at `document`, points to that the repository lacks."""
    broken = []
    for target in LINK.findall(text):
        path = target.split("#")[0]
        if path and not EXTERNAL.search(target) and not _in_repository(_relative(document, path)):
            broken.append(f"link {target}")
    for code in CODE.findall(text):
        path = code.split("#")[0].rstrip(":,.")
        if "/" not in path or EXTERNAL.search(path) or PATTERN.search(path):
            continue
        # A path in code names a file when it starts at the top of the repository or beside the document.
        first = PurePosixPath(path).parts[0]
        if first in TOP_LEVEL:
            named = PurePosixPath(path)
        elif (REPO / PurePosixPath(document).parent / first).exists():
            named = _relative(document, path)
        else:
            continue
        if not _in_repository(named):
            broken.append(f"path {code}")
    return broken


def test_the_documents_are_found():
    assert {"README.md", "docs/recipes.md", "clients/python/README.md"} <= set(DOCUMENTS)


@pytest.mark.parametrize("document", DOCUMENTS)
def test_every_path_a_document_mentions_is_in_the_repository(document):
    assert broken_paths(document, (REPO / document).read_text()) == []


def test_a_missing_file_is_found_broken():
    # The check itself: links and code paths, from the top or beside the document, to missing files.
    text = ("See [the guide](guide.md), [the flow](recipes/prefect_flow.py), `docs/recipes/gone.py`,\n"
            "`recipes/gone.py`, `tests/test_recipes.py` and [the README](../README.md#errors).\n")
    assert broken_paths("docs/example.md", text) == ["link guide.md", "path docs/recipes/gone.py",
                                                     "path recipes/gone.py"]
