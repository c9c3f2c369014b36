"""The results store of a study: one SQLite file, one transaction per finished run.

A crash loses at most the run in progress. Tables:

* ``runs``    — one row per (label, seed): recipe name and hash, plugin versions, status,
  error, wall time, train seconds per step, the full report (JSON);
* ``metrics`` — scalar results by name (``test_accuracy``, ``sparsity``, ``oneshot@0.9``, ...);
* ``curves``  — series by name: the training curve (x = epoch, y = the task's metric) and every
  curve an evaluator declared, as ``<evaluator>:<curve>`` (x, y, point label and style).
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    key TEXT PRIMARY KEY,
    label TEXT NOT NULL,
    seed INTEGER NOT NULL,
    position INTEGER NOT NULL,
    recipe_name TEXT NOT NULL,
    recipe_hash TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('done', 'failed')),
    error TEXT,
    wall_time_s REAL,
    step_time_s REAL,
    plugins TEXT,
    report TEXT,
    finished_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS metrics (
    key TEXT NOT NULL REFERENCES runs(key) ON DELETE CASCADE,
    name TEXT NOT NULL,
    value REAL,
    PRIMARY KEY (key, name)
);
CREATE TABLE IF NOT EXISTS curves (
    key TEXT NOT NULL REFERENCES runs(key) ON DELETE CASCADE,
    curve TEXT NOT NULL,
    idx INTEGER NOT NULL,
    x REAL,
    y REAL,
    label TEXT,
    style TEXT NOT NULL DEFAULT 'line',
    PRIMARY KEY (key, curve, idx)
);
"""

STORE = "results.sqlite"
"""The store's file name inside a study folder."""

Point = tuple[float, float, str, str]
"""A stored curve point: x, y, label, style."""


@dataclass(frozen=True)
class RunRow:
    key: str
    label: str
    seed: int
    position: int
    recipe_name: str
    recipe_hash: str
    status: str
    error: str | None
    wall_time_s: float | None
    step_time_s: float | None
    finished_at: float


class Store:
    """``Store(path)`` opens (and creates) the database."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path)
        self.db.execute("PRAGMA foreign_keys = ON")
        self.db.executescript(SCHEMA)
        columns = {row[1] for row in self.db.execute("PRAGMA table_info(curves)")}
        if "style" not in columns:  # a store written by compressor 0.1
            self.db.execute("ALTER TABLE curves ADD COLUMN style TEXT NOT NULL DEFAULT 'line'")

    def close(self) -> None:
        self.db.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self.db:
            yield self.db

    def status(self, key: str, recipe_hash: str) -> str | None:
        """'done'/'failed' for a run of this exact recipe, else None."""
        row = self.db.execute(
            "SELECT status, recipe_hash FROM runs WHERE key = ?", (key,)
        ).fetchone()
        if row is None or row[1] != recipe_hash:
            return None
        return str(row[0])

    def record(
        self,
        *,
        key: str,
        label: str,
        seed: int,
        position: int,
        recipe_name: str,
        recipe_hash: str,
        report: dict[str, Any] | None,
        error: str | None = None,
        metrics: dict[str, float] | None = None,
        curves: dict[str, list[Point]] | None = None,
    ) -> None:
        """Replace the run's rows in one transaction."""
        status = "done" if error is None else "failed"
        steps = (report or {}).get("steps") or 0
        # seconds of process CPU time per step, measured inside the run (wall time of runs taken
        # at different moments, or in parallel, is not comparable)
        train_time = (report or {}).get("train_cpu_s", (report or {}).get("train_time_s"))
        with self._transaction() as db:
            db.execute("DELETE FROM runs WHERE key = ?", (key,))
            db.execute(
                "INSERT INTO runs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    key,
                    label,
                    seed,
                    position,
                    recipe_name,
                    recipe_hash,
                    status,
                    error,
                    (report or {}).get("wall_time_s"),
                    train_time / steps if train_time and steps else None,
                    json.dumps((report or {}).get("plugins", [])),
                    json.dumps(report) if report is not None else None,
                    time.time(),
                ),
            )
            for name, value in (metrics or {}).items():
                db.execute("INSERT INTO metrics VALUES (?, ?, ?)", (key, name, value))
            for curve, points in (curves or {}).items():
                for idx, (x, y, point_label, style) in enumerate(points):
                    db.execute(
                        "INSERT INTO curves VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (key, curve, idx, x, y, point_label, style),
                    )

    def runs(self) -> list[RunRow]:
        rows = self.db.execute(
            "SELECT key, label, seed, position, recipe_name, recipe_hash, status, error, wall_time_s, "
            "step_time_s, finished_at FROM runs ORDER BY position, seed"
        ).fetchall()
        return [RunRow(*row) for row in rows]

    def metrics(self, key: str) -> dict[str, float]:
        return {
            name: value
            for name, value in self.db.execute(
                "SELECT name, value FROM metrics WHERE key = ?", (key,)
            )
        }

    def curve(self, key: str, curve: str) -> list[Point]:
        return list(
            self.db.execute(
                "SELECT x, y, label, style FROM curves WHERE key = ? AND curve = ? ORDER BY idx",
                (key, curve),
            )
        )

    def curve_names(self, key: str) -> list[str]:
        rows = self.db.execute(
            "SELECT DISTINCT curve FROM curves WHERE key = ? ORDER BY curve", (key,)
        )
        return [str(row[0]) for row in rows]

    def report(self, key: str) -> dict[str, Any] | None:
        row = self.db.execute("SELECT report FROM runs WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row and row[0] else None

    def meta(self, name: str, value: str | None = None) -> str | None:
        """A small key/value table for study-level facts (name, description, labels)."""
        self.db.execute("CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT)")
        if value is not None:
            with self._transaction() as db:
                db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (name, value))
            return value
        row = self.db.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        return str(row[0]) if row else None
