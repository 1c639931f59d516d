"""Model names and model locations of a multi-model server.

A ``model_name`` is an opaque key (SageMaker's contract): it is compared, stored and
logged, and never used to build a path. It must be text of 1 to :data:`MAX_NAME_CHARS`
printable characters without ``/`` or ``\\`` (it travels in a URL path) and not ``.`` or
``..``; anything else is refused with 400 before any file is touched.

A load request's ``url`` is where the model is: a model directory (SageMaker unpacks
models to ``/opt/ml/models/<name>/model``), a ``.tar.gz`` of one, or a directory holding
exactly one ``.tar.gz``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from gpuknn.errors import ClientError, ModelFileError, ModelNotLoadedError
from gpuknn.model.archives import is_archive
from gpuknn.model.layout import METADATA

# SageMaker's TargetModel header allows 1,024 characters; so does a model name here.
MAX_NAME_CHARS = 1024
MAX_URL_CHARS = 4096


def check_name(name: Any, field: str = "model_name") -> str:
    """``name`` if it is a valid model name.

    Raises
    ------
    ClientError
        (400) naming ``field`` and what a name may be.
    """
    allowed = (f"text of 1 to {MAX_NAME_CHARS} printable characters, without '/' or '\\', "
               "and not '.' or '..'")
    if not isinstance(name, str):
        raise ClientError(f"{field} must be {allowed}; got {type(name).__name__}")
    if not name or len(name) > MAX_NAME_CHARS:
        raise ClientError(f"{field} must be {allowed}; got {len(name)} characters")
    bad = next((c for c in name if c in "/\\" or not c.isprintable()), None)
    if bad is not None or name in (".", ".."):
        what = f"the character {bad!r}" if bad is not None else repr(name)
        raise ClientError(f"{field} must be {allowed}; got {what}")
    return name


def shown(name: str) -> str:
    """``name`` quoted for a message or a log line, cut after 80 characters."""
    return repr(name if len(name) <= 80 else f"{name[:80]}...")


def check_url(url: Any) -> str:
    """``url`` if it can name a place on the file system (not yet checked to exist).

    Raises
    ------
    ClientError
        (400) for a url that is not text, is empty, too long or holds NUL.
    """
    if not isinstance(url, str):
        raise ClientError(f"url must be a path (text); got {type(url).__name__}")
    if not url or len(url) > MAX_URL_CHARS or "\0" in url:
        raise ClientError(f"url must be a path of 1 to {MAX_URL_CHARS} characters without "
                          "NUL")
    return url


def locate(url: str) -> Path:
    """The model directory or archive that ``url`` names.

    Raises
    ------
    ModelNotLoadedError
        (404) when nothing exists at ``url``.
    ModelFileError
        (400) naming ``url`` when it holds no model: a file that is not a ``.tar.gz``, or a
        directory with neither a model's metadata nor exactly one ``.tar.gz``.
    """
    path = Path(url)
    try:
        is_file, is_dir = path.is_file(), path.is_dir()
        metadata = is_dir and (path / METADATA).is_file()
        archives = _archives_in(path) if is_dir and not metadata else []
    except OSError as err:  # unreadable: a directory without permission, say
        raise ModelFileError(f"{url}: cannot be read ({err.strerror})") from None
    if is_file:
        if is_archive(path):
            return path
        raise ModelFileError(f"{url}: a file that is not a model archive (.tar.gz); url must "
                             "name a model directory or a model.tar.gz")
    if not is_dir:
        raise ModelNotLoadedError(f"{url}: no such model directory or archive")
    if metadata:
        return path
    if len(archives) == 1:
        return path / archives[0]
    found = "none" if not archives else f"{len(archives)}"
    raise ModelFileError(f"{url}: holds no gpuknn model: no {METADATA}, and {found} .tar.gz "
                         "archives where one is needed")


def _archives_in(directory: Path) -> list[str]:
    """Names of the regular ``.tar.gz`` files directly in ``directory`` (two at most: more
    could not be told apart anyway)."""
    found: list[str] = []
    with os.scandir(directory) as entries:
        for entry in entries:
            if is_archive(entry.name) and entry.is_file():
                found.append(entry.name)
                if len(found) > 1:
                    break
    return found
