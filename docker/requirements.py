"""Print gpuknn's requirements from pyproject.toml, one per line, for an image's dependency layer.

    python requirements.py pyproject.toml cpu,ray            # the core, the cpu and ray extras
    python requirements.py pyproject.toml gpu,ray EXTRA...   # the core, two extras, and more

The extras are named as pip names them (``gpuknn[cpu,ray]``): one argument, separated by
commas. The images install these in a layer of their own, before gpuknn itself, so that
the layer is rebuilt only when pyproject.toml changes. Standard library only (tomllib,
Python 3.11).
"""

from __future__ import annotations

import sys

import tomllib


def requirements(pyproject: str, extras: str, more: list[str]) -> list[str]:
    """The core dependencies, those of each extra in ``extras`` ("cpu,ray"), then ``more``;
    a requirement that two extras share is listed once."""
    with open(pyproject, "rb") as handle:
        project = tomllib.load(handle)["project"]
    known = project.get("optional-dependencies", {})
    wanted = [name.strip() for name in extras.split(",") if name.strip()]
    unknown = [name for name in wanted if name not in known]
    if unknown or not wanted:
        raise SystemExit(f"{pyproject} has no extra {', '.join(map(repr, unknown)) or '(none)'}"
                         f"; it has {', '.join(known)}")
    listed = [*project["dependencies"], *(r for name in wanted for r in known[name]), *more]
    return list(dict.fromkeys(listed))


if __name__ == "__main__":
    if len(sys.argv) < 3:
        raise SystemExit(__doc__)
    print("\n".join(requirements(sys.argv[1], sys.argv[2], sys.argv[3:])))
