"""Print the Debian mirror that apt on this machine uses for a suite (for debootstrap).

Usage: python3 deploy/docker/debian_mirror.py [SUITE]   (default: this machine's release)

Reads apt's own sources, deb822 (/etc/apt/sources.list.d/*.sources) and one-line
(/etc/apt/sources.list, /etc/apt/sources.list.d/*.list), so no host name is written into
the repository: the base image is built from whichever mirror this machine is set up for.
Exits 1 when no `deb` source serves the suite.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

APT_DIR = Path("/etc/apt")
OS_RELEASE = Path("/etc/os-release")


def this_release() -> str:
    """VERSION_CODENAME from /etc/os-release (e.g. bookworm)."""
    for line in OS_RELEASE.read_text(encoding="utf-8").splitlines():
        key, _, value = line.partition("=")
        if key == "VERSION_CODENAME":
            return value.strip().strip('"')
    raise SystemExit(f"{OS_RELEASE} names no VERSION_CODENAME")


def deb822_sources(text: str) -> Iterator[tuple[list[str], list[str], list[str]]]:
    """(types, uris, suites) of each stanza of a deb822 .sources file."""
    for stanza in text.split("\n\n"):
        fields: dict[str, list[str]] = {}
        for line in stanza.splitlines():
            if line.startswith("#") or ":" not in line or line[:1].isspace():
                continue
            key, _, value = line.partition(":")
            fields[key.strip().lower()] = value.split()
        if fields.get("enabled", ["yes"])[0].lower() == "no":
            continue
        yield fields.get("types", []), fields.get("uris", []), fields.get("suites", [])


def one_line_sources(text: str) -> Iterator[tuple[list[str], list[str], list[str]]]:
    """(types, uris, suites) of each `deb [options] URI SUITE COMPONENTS...` line."""
    for line in text.splitlines():
        words = line.split("#", 1)[0].split()
        if len(words) < 3:
            continue
        kind, rest = words[0], words[1:]
        if rest[0].startswith("["):
            while rest and not rest[0].endswith("]"):
                rest = rest[1:]
            rest = rest[1:]
        if len(rest) >= 2:
            yield [kind], [rest[0]], [rest[1]]


def all_sources(apt_dir: Path = APT_DIR) -> Iterator[tuple[list[str], list[str], list[str]]]:
    for path in sorted((apt_dir / "sources.list.d").glob("*.sources")):
        yield from deb822_sources(path.read_text(encoding="utf-8"))
    one_line_files = [
        apt_dir / "sources.list",
        *sorted((apt_dir / "sources.list.d").glob("*.list")),
    ]
    for path in one_line_files:
        if path.is_file():
            yield from one_line_sources(path.read_text(encoding="utf-8"))


def mirror_for(suite: str, apt_dir: Path = APT_DIR) -> str | None:
    """The first `deb` URI that serves `suite`, or None."""
    for types, uris, suites in all_sources(apt_dir):
        if "deb" in types and suite in suites and uris:
            return uris[0]
    return None


def main(argv: list[str]) -> int:
    suite = argv[1] if len(argv) > 1 else this_release()
    mirror = mirror_for(suite)
    if mirror is None:
        print(f"no deb source in {APT_DIR} serves {suite}", file=sys.stderr)
        return 1
    print(mirror)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
