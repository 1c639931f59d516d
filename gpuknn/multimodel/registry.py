"""The loaded models of a multi-model server, shared by its worker processes.

Every worker of one server opens the same registry: an SQLite database in a private
temporary directory that ``gpuknn serve`` makes at start and removes at exit. It holds one
row per model name, and is the one place where a name becomes loaded or unloaded:

- :meth:`Registry.reserve` claims a name for a load and sets its estimated charge aside,
  in one transaction: of two loads of one name, one gets the name and the other
  :class:`~gpuknn.errors.ModelAlreadyLoadedError` (409); a load past the budget gets
  :class:`~gpuknn.errors.InsufficientMemoryError` (507) before anything is read;
- :meth:`Registry.commit` replaces the estimate by what the loaded model really holds
  (507, and the name freed again, if that no longer fits) and makes the model ready;
- :meth:`Registry.remove` unloads a name.

Each load gets a new generation number, so a worker can tell a model from the one loaded
under the same name after it was unloaded. Reads never wait for writers (the database is
in write-ahead-log mode); a write waits at most a few milliseconds for another's.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from gpuknn.errors import InsufficientMemoryError, ModelAlreadyLoadedError, ModelNotLoadedError
from gpuknn.model.footprint import Footprint
from gpuknn.multimodel.budget import Charge
from gpuknn.multimodel.names import shown

_SCHEMA = """
CREATE TABLE IF NOT EXISTS models (
    name TEXT PRIMARY KEY,
    url TEXT NOT NULL,
    location TEXT NOT NULL,
    generation INTEGER NOT NULL,
    ready INTEGER NOT NULL,
    pid INTEGER NOT NULL,
    host_bytes INTEGER NOT NULL,
    device_bytes INTEGER NOT NULL,
    mapped_bytes INTEGER NOT NULL,
    private_bytes INTEGER NOT NULL,
    model_device_bytes INTEGER NOT NULL,
    loaded_at REAL
);
CREATE TABLE IF NOT EXISTS generations (id INTEGER PRIMARY KEY AUTOINCREMENT);
"""
_COLUMNS = ("name, url, location, generation, ready, pid, host_bytes, device_bytes, "
            "mapped_bytes, private_bytes, model_device_bytes")
BUSY_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Entry:
    """One model name in the registry.

    Attributes
    ----------
    name, url : str
        As the load request gave them.
    location : str
        The model directory or archive that ``url`` names.
    generation : int
        Unique to this load of the name.
    ready : bool
        False while the model is being loaded.
    pid : int
        The worker process that loads (or loaded) it.
    charge : Charge
        Bytes counted against the budget.
    footprint : Footprint
        What the model holds in one worker (estimated until it is ready).
    """

    name: str
    url: str
    location: str
    generation: int
    ready: bool
    pid: int
    charge: Charge
    footprint: Footprint

    @classmethod
    def _of(cls, row: tuple) -> Entry:
        name, url, location, generation, ready, pid, host, device, mapped, private, own = row
        return cls(name, url, location, generation, bool(ready), pid, Charge(host, device),
                   Footprint(mapped, private, own))


class Registry:
    """The shared table of loaded models, as one worker process sees it.

    Parameters
    ----------
    path : path
        The database file (made by :meth:`create`).
    budget_bytes : int
        What the models may take on the search device (the GPU's memory on a GPU, else
        the host's).
    host_budget_bytes : int
        What they may take in host memory (the same as ``budget_bytes`` on the CPU).
    device : {"cpu", "gpu"}
    """

    def __init__(self, path: str | Path, *, budget_bytes: int, host_budget_bytes: int,
                 device: str = "cpu"):
        self.path = Path(path)
        self.budget_bytes = int(budget_bytes)
        self.host_budget_bytes = int(host_budget_bytes)
        self.device = device
        self._local = threading.local()

    @staticmethod
    def create(path: str | Path) -> Path:
        """Make an empty registry database at ``path``; returns it."""
        connection = sqlite3.connect(path, isolation_level=None, timeout=BUSY_TIMEOUT_S)
        try:
            connection.execute("PRAGMA journal_mode=WAL")
            connection.executescript(_SCHEMA)
        finally:
            connection.close()
        return Path(path)

    # -- connections -----------------------------------------------------------------
    def _connection(self) -> sqlite3.Connection:
        """This thread's connection (sqlite3 connections belong to one thread)."""
        connection = getattr(self._local, "connection", None)
        if connection is None:
            connection = sqlite3.connect(self.path, isolation_level=None,
                                         timeout=BUSY_TIMEOUT_S)
            connection.execute("PRAGMA synchronous=OFF")  # a server's registry dies with it
            self._local.connection = connection
        return connection

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction, taken at once (no two writers interleave)."""
        connection = self._connection()
        connection.execute("BEGIN IMMEDIATE")
        try:
            yield connection
        except BaseException:
            connection.execute("ROLLBACK")
            raise
        connection.execute("COMMIT")

    def close(self) -> None:
        """Close this thread's connection."""
        connection = getattr(self._local, "connection", None)
        if connection is not None:
            connection.close()
            self._local.connection = None

    # -- loading and unloading -------------------------------------------------------
    def reserve(self, name: str, url: str, location: str, estimate: Charge,
                footprint: Footprint) -> Entry:
        """Claim ``name`` for a load by this process, with ``estimate`` set aside.

        Raises
        ------
        ModelAlreadyLoadedError
            When the name is loaded, or being loaded by a live process.
        InsufficientMemoryError
            When ``estimate`` does not fit what the budget has left.
        """
        with self._transaction() as db:
            row = db.execute("SELECT ready, pid FROM models WHERE name = ?", (name,)).fetchone()
            if row is not None:
                ready, pid = row
                if ready or _alive(pid):
                    state = "loaded" if ready else "being loaded"
                    raise ModelAlreadyLoadedError(f"model {shown(name)} is already {state}; "
                                                  "unload it first (DELETE /models/<name>)")
                db.execute("DELETE FROM models WHERE name = ?", (name,))  # its loader died
            self._check_fits(db, name, estimate, exclude=None)
            generation = db.execute("INSERT INTO generations DEFAULT VALUES").lastrowid
            db.execute(f"INSERT INTO models ({_COLUMNS}) VALUES (?,?,?,?,0,?,?,?,?,?,?)",
                       (name, url, location, generation, os.getpid(), estimate.host_bytes,
                        estimate.device_bytes, footprint.mapped_bytes,
                        footprint.private_bytes, footprint.device_bytes))
        return Entry(name, url, location, generation, False, os.getpid(), estimate, footprint)

    def commit(self, entry: Entry, charge: Charge, footprint: Footprint) -> Entry:
        """Make a reserved model ready, charged what it really holds.

        Raises
        ------
        InsufficientMemoryError
            When the real charge does not fit: the reservation is then dropped.
        ModelNotLoadedError
            When the reservation is gone (it was unloaded meanwhile).
        """
        try:
            with self._transaction() as db:
                if not self._holds(db, entry):
                    raise ModelNotLoadedError(f"model {shown(entry.name)} was unloaded while it "
                                              "loaded")
                self._check_fits(db, entry.name, charge, exclude=entry.generation)
                db.execute("UPDATE models SET ready = 1, host_bytes = ?, device_bytes = ?, "
                           "mapped_bytes = ?, private_bytes = ?, model_device_bytes = ?, "
                           "loaded_at = ? WHERE name = ? AND generation = ?",
                           (charge.host_bytes, charge.device_bytes, footprint.mapped_bytes,
                            footprint.private_bytes, footprint.device_bytes, time.time(),
                            entry.name, entry.generation))
        except InsufficientMemoryError:
            self.abandon(entry)
            raise
        return Entry(entry.name, entry.url, entry.location, entry.generation, True,
                     entry.pid, charge, footprint)

    def abandon(self, entry: Entry) -> None:
        """Drop a reservation whose load failed (a no-op if it is gone)."""
        with self._transaction() as db:
            db.execute("DELETE FROM models WHERE name = ? AND generation = ?",
                       (entry.name, entry.generation))

    def remove(self, name: str) -> Entry:
        """Unload ``name``: from now on no worker answers with it.

        Raises
        ------
        ModelNotLoadedError
            When the name is not loaded (a load still under way is not loaded yet).
        """
        with self._transaction() as db:
            row = db.execute(f"SELECT {_COLUMNS} FROM models WHERE name = ? AND ready = 1",
                             (name,)).fetchone()
            if row is None:
                raise ModelNotLoadedError(f"model {shown(name)} is not loaded")
            db.execute("DELETE FROM models WHERE name = ? AND generation = ?", (name, row[3]))
        return Entry._of(row)

    # -- reading -----------------------------------------------------------------------
    def get(self, name: str) -> Entry | None:
        """The ready model called ``name``, or None."""
        row = self._connection().execute(
            f"SELECT {_COLUMNS} FROM models WHERE name = ? AND ready = 1", (name,)).fetchone()
        return None if row is None else Entry._of(row)

    def ready(self) -> dict[str, int]:
        """``{name: generation}`` of every ready model."""
        rows = self._connection().execute("SELECT name, generation FROM models WHERE ready = 1")
        return dict(rows.fetchall())

    def page(self, after: str | None, size: int) -> list[Entry]:
        """Up to ``size`` ready models in name order, those after ``after`` if given."""
        query = f"SELECT {_COLUMNS} FROM models WHERE ready = 1"
        if after is None:
            rows = self._connection().execute(f"{query} ORDER BY name LIMIT ?", (size,))
        else:
            rows = self._connection().execute(f"{query} AND name > ? ORDER BY name LIMIT ?",
                                              (after, size))
        return [Entry._of(row) for row in rows.fetchall()]

    def used(self) -> Charge:
        """What the models (ready or being loaded) are charged in all."""
        return _used(self._connection(), exclude=None)

    # -- helpers -----------------------------------------------------------------------
    @staticmethod
    def _holds(db: sqlite3.Connection, entry: Entry) -> bool:
        return db.execute("SELECT 1 FROM models WHERE name = ? AND generation = ?",
                          (entry.name, entry.generation)).fetchone() is not None

    def _check_fits(self, db: sqlite3.Connection, name: str, wanted: Charge, *,
                    exclude: int | None) -> None:
        used = _used(db, exclude=exclude)
        limits = [("host memory", wanted.host_bytes, used.host_bytes, self.host_budget_bytes)]
        if self.device == "gpu":
            limits.insert(0, ("GPU memory", wanted.device_bytes, used.device_bytes,
                              self.budget_bytes))
        for what, need, taken, limit in limits:
            if taken + need > limit:
                left = max(0, limit - taken)
                raise InsufficientMemoryError(
                    f"model {shown(name)} needs {_mib(need)} of {what}, but {_mib(left)} of the "
                    f"{_mib(limit)} budget are left ({_mib(taken)} taken by the loaded "
                    "models); unload a model, or raise --max-models-mb")


def _used(db: sqlite3.Connection, *, exclude: int | None) -> Charge:
    host, device = db.execute(
        "SELECT COALESCE(SUM(host_bytes), 0), COALESCE(SUM(device_bytes), 0) FROM models "
        "WHERE generation != ?", (-1 if exclude is None else exclude,)).fetchone()
    return Charge(int(host), int(device))


def _alive(pid: int) -> bool:
    """Whether process ``pid`` still runs (a loader that died leaves its claim behind)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _mib(size: int) -> str:
    return f"{size / 2**20:.1f} MiB"
