"""Print gpuknn's requirements from pyproject.toml, one per line, for an image's dependency layer.

    python requirements.py pyproject.toml cpu            # the core and the cpu extra
    python requirements.py pyproject.toml gpu EXTRA...   # the core, the gpu extra, and more

The images install these in a layer of their own, before gpuknn itself, so that the layer
is rebuilt only when pyproject.toml changes. Standard library only (tomllib, Python 3.11).
"""

from __future__ import annotations

import sys

import tomllib


def requirements(pyproject: str, extra: str, more: list[str]) -> list[str]:
    """The core dependencies, those of ``extra``, then ``more``."""
    with open(pyproject, "rb") as handle:
        project = tomllib.load(handle)["project"]
    extras = project.get("optional-dependencies", {})
    if extra not in extras:
        raise SystemExit(f"{pyproject} has no extra {extra!r}; it has {', '.join(extras)}")
    return [*project["dependencies"], *extras[extra], *more]


if __name__ == "__main__":
    if len(sys.argv) < 3:
        raise SystemExit(__doc__)
    print("\n".join(requirements(sys.argv[1], sys.argv[2], sys.argv[3:])))
