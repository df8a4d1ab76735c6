"""The README and docs/ point at things that exist.

- every relative link resolves to a file or folder, and its `#anchor` to a heading of the
  target (GitHub's anchors);
- every repository path they name in code (`server/...`, `deploy/...`,
  `mnist_serving_server/...`) exists, and every dotted name of our packages
  (`mnist_serving_server.core.images.decode_image`) imports;
- every `make <target>` they name is listed by `make help`.
"""

from __future__ import annotations

import functools
import importlib
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

DOCUMENTS = sorted(
    [REPO_ROOT / "README.md", REPO_ROOT / "client" / "README.md", *REPO_ROOT.glob("docs/*.md")]
)
PACKAGE_ROOTS = {
    "mnist_serving_server": REPO_ROOT / "server",
    "mnist_serving_client": REPO_ROOT / "client",
    "mnist_serving_proto": REPO_ROOT / "client",
    "mnist_serving_training": REPO_ROOT / "training",
}
# Paths the documents name that a checkout does not hold: made by running something,
# examples of what a user creates, or names that only look like paths.
NOT_IN_A_CHECKOUT = (
    "build/",  # build outputs (wheelhouse, rendered manifests, dockerd log)
    "data/",  # training's downloads (./data/MNIST/raw)
    "bench/results/",  # make bench's raw results
    "tests/artifacts/",  # the browser test's screenshot
    "model_repository/mnist/2",  # the next version a user trains or copies in
    "model_repository/mnist/.staging-2",
    "model_repository/fashion",
    "model_repository/mnist/config.pbtxt",  # one a user writes (the shipped model has none)
    "model_repository/mnist/1/model_state_dict.pt",  # kept out of git (.gitignore)
    "deploy/mnist-serving",  # kubectl's name of the Deployment, not a folder
)
TOP_LEVEL = {path.name for path in REPO_ROOT.iterdir() if not path.name.startswith(".")} | {".ci"}
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)|!\[[^\]]*\]\(([^)\s]+)\)")
CODE_SPAN = re.compile(r"`([^`]+)`")
PATH_TOKEN = re.compile(r"[A-Za-z0-9_.*\-]+(?:/[A-Za-z0-9_.*\-]+)+/?")
DOTTED = re.compile(r"\b(mnist_serving_(?:server|client|training|proto)(?:\.[A-Za-z_]\w*)+)")
# `make` at the start of a code span or of a command line (after `$`, `;`, `&&`, `|`, `(`).
MAKE_TARGET = re.compile(r"(?:^\s*(?:\$\s*)?|[;&|(]\s*)make ((?:[a-z][a-z0-9-]*(?:\s+|$))+)", re.M)


def prose_and_code(path: Path) -> tuple[list[str], list[str]]:
    """The document's lines outside fenced code blocks, and those inside."""
    prose: list[str] = []
    code: list[str] = []
    fenced = False
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        (code if fenced else prose).append(line)
    return prose, code


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to dashes."""
    text = re.sub(r"<[^>]+>", "", heading).strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


@functools.cache
def anchors(path: Path) -> frozenset[str]:
    seen: dict[str, int] = {}
    found: set[str] = set()
    for line in prose_and_code(path)[0]:
        match = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if match:
            base = slug(match.group(1))
            count = seen.get(base, 0)
            seen[base] = count + 1
            found.add(base if count == 0 else f"{base}-{count}")
    return frozenset(found)


def relative(path: Path) -> str:
    return path.relative_to(REPO_ROOT).as_posix()


def links(path: Path) -> Iterator[str]:
    for line in prose_and_code(path)[0]:
        for match in LINK.finditer(line):
            yield match.group(1) or match.group(2)


@pytest.mark.parametrize("document", DOCUMENTS, ids=relative)
def test_every_relative_link_and_anchor_resolves(document: Path) -> None:
    broken = []
    for target in links(document):
        if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        resolved = (document.parent / file_part).resolve() if file_part else document
        if not resolved.exists():
            broken.append(f"{target}: no such file")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            broken.append(f"{target}: no heading with anchor #{anchor} in {relative(resolved)}")
    assert not broken, f"{relative(document)}: broken links: {broken}"


def named_paths(path: Path) -> Iterator[str]:
    """Repository paths in code spans and code blocks, starting at a top-level entry or at
    one of our package folders."""
    prose, code = prose_and_code(path)
    texts = [" ".join(span.split()) for span in CODE_SPAN.findall("\n".join(prose))] + code
    for text in texts:
        for match in PATH_TOKEN.finditer(text):
            start = match.start()
            if start > 0 and text[start - 1] in "/~$:.@=<{-":
                continue  # part of an absolute path, a URL, a variable, a <placeholder> ...
            token = match.group(0).removeprefix("./")
            first = token.split("/", 1)[0]
            if first in TOP_LEVEL or first in PACKAGE_ROOTS:
                yield token


def exists(token: str) -> bool:
    for entry in NOT_IN_A_CHECKOUT:
        if token.rstrip("/") == entry.rstrip("/") or token.startswith(entry.rstrip("/") + "/"):
            return True
    first = token.split("/", 1)[0]
    base = PACKAGE_ROOTS.get(first, REPO_ROOT)
    return any(base.glob(token.rstrip("/"))) if "*" in token else (base / token).exists()


@pytest.mark.parametrize("document", DOCUMENTS, ids=relative)
def test_every_repository_path_named_exists(document: Path) -> None:
    missing = sorted({token for token in named_paths(document) if not exists(token)})
    assert not missing, f"{relative(document)} names paths that do not exist: {missing}"


def imports(dotted: str) -> bool:
    parts = dotted.split(".")
    for end in range(len(parts), 0, -1):
        try:
            value: object = importlib.import_module(".".join(parts[:end]))
        except ModuleNotFoundError:
            continue
        for attribute in parts[end:]:
            if not hasattr(value, attribute):
                return False
            value = getattr(value, attribute)
        return True
    return False


@pytest.mark.parametrize("document", DOCUMENTS, ids=relative)
def test_every_dotted_name_of_our_packages_imports(document: Path) -> None:
    prose, code = prose_and_code(document)
    names = {match for line in prose + code for match in DOTTED.findall(line)}
    failing = sorted(name for name in names if not imports(name))
    assert not failing, f"{relative(document)} names what does not import: {failing}"


def named_targets(path: Path) -> Iterator[tuple[str, str]]:
    """(target, line) for every `make target ...` in code spans and code blocks."""
    prose, code = prose_and_code(path)
    texts = [" ".join(span.split()) for span in CODE_SPAN.findall("\n".join(prose))] + code
    for text in texts:
        for match in MAKE_TARGET.finditer(text):
            for word in match.group(1).split():
                yield word, text


@functools.cache
def help_targets() -> frozenset[str]:
    result = subprocess.run(
        ["make", "--no-print-directory", "-s", "help"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return frozenset(
        match.group(1)
        for line in result.stdout.splitlines()
        if (match := re.match(r"  ([a-z][a-z0-9-]*)\s", line))
    )


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
@pytest.mark.parametrize("document", DOCUMENTS, ids=relative)
def test_make_help_lists_every_target_the_docs_name(document: Path) -> None:
    assert "serve" in help_targets()
    unlisted = sorted({target for target, _ in named_targets(document)} - help_targets())
    assert not unlisted, f"{relative(document)} names targets `make help` omits: {unlisted}"
