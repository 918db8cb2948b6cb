"""The sweep directory: finished groups as atomic parts, consolidated into tidy Parquet tables.

    DIR/
      spec.yaml                  the resolved spec (base with every default); written once,
                                 replaced only when a sweep is extended (`writing(extend=True)`)
      .lock                      held (flock) by the one driver writing DIR, which records its
                                 PID and host in it
      parts/<group_id>/          one finished group, staged in a temporary sibling and renamed
        runs.parquet               one row per member (cell)
        metrics.parquet            training curves: one row per logged step and member
        layers.parquet points.parquet network.parquet     bnrank.analyze (when the spec asks)
        checkpoint.safetensors     the group's trained ensemble (member e = row `member` = e)
      runs.parquet metrics.parquet layers.parquet points.parquet network.parquet
                                 every part's table concatenated, rows in cell order
      sweep.json                 name, cell counts, the parts consolidated, versions

Every table has ``cell_id``, ``group_id`` and ``member`` columns. The parts are the source of
truth: a part directory exists only once all of its files are complete, so a cell is done
exactly when a part's runs table lists it, and a killed sweep (even kill -9) loses only its
groups in flight. One driver writes DIR at a time: a second one is refused, naming the first
by PID and host. The kernel releases the flock of a driver that died, so its lock is never
stale; where the file system has no flock, the record decides: a lock whose PID is dead on
this host is stale and taken over. Consolidation rewrites each top-level table atomically from the parts and is
idempotent; `read_tables` falls back to the parts when the consolidated files are stale.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from bnrank.atomic import staged_dir, write_error, write_json, write_parquet, write_text
from bnrank.checkpoint import save_checkpoint
from bnrank.config import canonical_dump
from bnrank.errors import StoreError
from bnrank.sweep.spec import SweepSpec
from bnrank.sweep.work import ANALYZE_TABLES, BASE_TABLES, GroupResult

TABLES = BASE_TABLES + ANALYZE_TABLES
CHECKPOINT = "checkpoint.safetensors"


_MISSING = "(absent)"


def first_difference(old: Any, new: Any, path: str = "") -> tuple[str, Any, Any] | None:
    """(dotted path, old value, new value) of the first place two JSON-like values differ
    (None if equal); a key only one side has reads "(absent)" on the other."""
    if isinstance(old, dict) and isinstance(new, dict):
        for key in list(old) + [k for k in new if k not in old]:
            if key not in old or key not in new:
                return f"{path}{key}", old.get(key, _MISSING), new.get(key, _MISSING)
            found = first_difference(old[key], new[key], f"{path}{key}.")
            if found:
                return found
        return None
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        for i, (a, b) in enumerate(zip(old, new)):
            found = first_difference(a, b, f"{path}{i}.")
            if found:
                return found
        return None
    return None if old == new else (path.rstrip(".") or "(the whole spec)", old, new)


def _describe(diff: tuple[str, Any, Any]) -> str:
    """'grid.train.lam.0: 0.01 here, 0.1 in the new spec' (long values shortened)."""
    def short(value: Any) -> str:
        text = value if value is _MISSING else json.dumps(value)
        return text if len(text) <= 60 else text[:57] + "..."

    path, old, new = diff
    return f"{path}: {short(old)} here, {short(new)} in the new spec"


def _owner() -> dict[str, Any]:
    return {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


class SweepStore:
    """Reads and writes one sweep directory (layout in the module docstring)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.parts = self.root / "parts"
        self.spec_path = self.root / "spec.yaml"

    # -- opening --------------------------------------------------------------------------------

    def stored_spec(self) -> dict | None:
        """The spec.yaml of the directory as a dict, or None when there is none."""
        if not self.spec_path.is_file():
            return None
        try:
            return yaml.safe_load(self.spec_path.read_text())
        except (OSError, yaml.YAMLError) as err:
            raise StoreError(f"{self.spec_path}: unreadable sweep spec ({err})") from None

    @contextmanager
    def writing(self, spec: SweepSpec, resume: bool = True, extend: bool = False,
                cell_ids: set[str] | None = None) -> Iterator["SweepStore"]:
        """Hold DIR's lock while writing; check (or write) its spec; clear dead staging dirs.

        Raises StoreError when another driver holds DIR (naming its PID and host), DIR holds a
        different sweep (naming the first difference) and `extend` is off, DIR is a non-empty
        directory that is not a sweep, or `resume` is False and DIR already has finished
        groups. With `extend`, a different spec replaces the stored one when its cells
        (`cell_ids`) include every finished cell of DIR.
        """
        if self.root.exists() and not self.root.is_dir():
            raise StoreError(f"{self.root} is a file, not a sweep directory")
        self._check_foreign()
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            lock = open(self.root / ".lock", "a+")
        except OSError as err:
            raise write_error(self.root, err) from None
        with lock:
            self._lock(lock)
            try:
                self._check_spec(spec, resume, extend, cell_ids)
                self._clear_staging()
                yield self
            finally:
                lock.truncate(0)

    def _lock(self, lock) -> None:
        """Take DIR's lock (see the module docstring) and record this driver in it."""
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StoreError(f"{self.root} is being written by another sweep driver{self._holder(lock)}") from None
        except OSError as err:
            if err.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                raise write_error(self.root / ".lock", err) from None
            self._claim_by_record(lock)
        lock.seek(0)
        lock.truncate(0)
        lock.write(json.dumps(_owner()) + "\n")
        lock.flush()

    def _record(self, lock) -> dict[str, Any]:
        lock.seek(0)
        try:
            record = json.loads(lock.read() or "{}")
        except ValueError:
            return {}
        return record if isinstance(record, dict) else {}

    def _holder(self, lock) -> str:
        """' (pid 123 on host h, since ...)' from the lock's record, or '' without one."""
        record = self._record(lock)
        if "pid" not in record:
            return ""
        return f" (pid {record['pid']} on host {record.get('host', '?')}, since {record.get('started', '?')})"

    def _claim_by_record(self, lock) -> None:
        """Without flock: refuse while the recorded driver may be alive, else take the lock over."""
        record = self._record(lock)
        pid, host = record.get("pid"), record.get("host")
        if not isinstance(pid, int) or pid == os.getpid():
            return
        if host != socket.gethostname():
            raise StoreError(f"{self.root} is being written by another sweep driver{self._holder(lock)}: "
                             f"if it is gone, delete {self.root / '.lock'}")
        if _alive(pid):
            raise StoreError(f"{self.root} is being written by another sweep driver{self._holder(lock)}")

    def _check_spec(self, spec: SweepSpec, resume: bool, extend: bool, cell_ids: set[str] | None) -> None:
        stored = self.stored_spec()
        if stored is None:
            self._check_foreign()
            self._write_spec(spec)
            return
        if not isinstance(stored, dict):
            raise StoreError(f"{self.spec_path}: not a sweep spec")
        new = spec.identity()
        old = {k: v for k, v in stored.items() if k in new or k not in SweepSpec.model_fields}
        if isinstance(old.get("base"), dict):
            old["base"] = canonical_dump(old["base"])
        diff = first_difference(old, new)
        if diff is not None and not extend:
            raise StoreError(f"{self.root} holds a different sweep (spec differs at {_describe(diff)}); "
                             "use another --out, or --extend to grow this sweep")
        if diff is not None:
            lost = sorted(self.done_cells() - (cell_ids or set()))
            if lost:
                raise StoreError(f"cannot extend {self.root}: {len(lost)} of its finished cells (e.g. {lost[0]}) are not "
                                 f"cells of the new spec (spec differs at {_describe(diff)}); use another --out")
            self._write_spec(spec)
        if not resume and self.part_ids():
            raise StoreError(f"{self.root} already has finished groups (resume is off)")

    def _check_foreign(self) -> None:
        """StoreError for an existing directory that has files but no spec.yaml (not a sweep)."""
        if self.root.is_dir() and not self.spec_path.exists():
            foreign = sorted(p.name for p in self.root.iterdir() if p.name != ".lock")
            if foreign:
                raise StoreError(f"{self.root} is not empty and not a sweep directory (has {foreign[0]})")

    def _write_spec(self, spec: SweepSpec) -> None:
        write_text(self.spec_path, yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False))

    def _clear_staging(self) -> None:
        """Remove staging leftovers of a killed writer (only called under the lock)."""
        if self.parts.is_dir():
            for stale in self.parts.glob(".*"):
                shutil.rmtree(stale, ignore_errors=True)

    # -- parts ----------------------------------------------------------------------------------

    def part_ids(self) -> list[str]:
        """Group ids of the finished parts, sorted."""
        if not self.parts.is_dir():
            return []
        return sorted(p.name for p in self.parts.iterdir() if not p.name.startswith("."))

    def done_cells(self) -> set[str]:
        """Cell ids of every finished part."""
        ids: set[str] = set()
        for gid in self.part_ids():
            ids.update(self._read_part(gid, "runs", columns=["cell_id"])["cell_id"])
        return ids

    def write_part(self, result: GroupResult) -> Path:
        """Write a finished group as parts/<group_id> (all files staged, then one rename)."""
        target = self.parts / result.group_id
        try:
            with staged_dir(target) as stage:
                for name, df in result.tables.items():
                    df.to_parquet(stage / f"{name}.parquet", index=False)
                save_checkpoint(result.model, stage / CHECKPOINT)
        except FileExistsError:
            raise StoreError(f"{target} already exists: group {result.group_id} was finished before") from None
        return target

    def _read_part(self, gid: str, name: str, columns: list[str] | None = None) -> pd.DataFrame:
        path = self.parts / gid / f"{name}.parquet"
        try:
            return pd.read_parquet(path, columns=columns)
        except (OSError, ValueError) as err:
            raise StoreError(f"corrupt sweep part {path}: {err}") from None

    # -- tables ---------------------------------------------------------------------------------

    def tables_from_parts(self, order: dict[str, int]) -> dict[str, pd.DataFrame]:
        """Every table concatenated over the parts, rows sorted by cell order (then as written).

        Raises StoreError if a cell appears in two parts (impossible for a store written by
        run_sweep; checked so that a duplicate can never reach the tables silently).
        """
        gids = self.part_ids()
        tables = {}
        for name in TABLES:
            frames = [self._read_part(g, name) for g in gids if (self.parts / g / f"{name}.parquet").is_file()]
            if not frames:
                tables[name] = pd.DataFrame()
                continue
            df = pd.concat(frames, ignore_index=True)
            rank = df["cell_id"].map(order)
            if rank.isna().any():
                raise StoreError(f"{self.root}: part has cells the spec does not ({df.cell_id[rank.isna()].iloc[0]})")
            tables[name] = df.iloc[rank.argsort(kind="stable")].reset_index(drop=True)
        runs = tables["runs"]
        if not runs.empty and runs["cell_id"].duplicated().any():
            dup = runs.loc[runs["cell_id"].duplicated(keep=False)]
            raise StoreError(f"{self.root}: cell {dup.cell_id.iloc[0]} is in parts {sorted(set(dup.group_id))}")
        return tables

    def consolidate(self, spec: SweepSpec, order: dict[str, int], versions: dict[str, str]) -> dict[str, pd.DataFrame]:
        """Rewrite the top-level tables and sweep.json from the parts (atomic, idempotent)."""
        gids = self.part_ids()
        tables = self.tables_from_parts(order)
        for name, df in tables.items():
            path = self.root / f"{name}.parquet"
            if df.empty and not df.columns.size:
                path.unlink(missing_ok=True)
            else:
                write_parquet(path, df)
        write_json(self.root / "sweep.json", {
            "name": spec.name, "cells": len(order), "done": int(len(tables["runs"])), "parts": gids,
            "versions": versions, "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        })
        return tables

    def read_tables(self, order: dict[str, int]) -> dict[str, pd.DataFrame]:
        """The consolidated tables if they cover exactly the current parts, else built from the
        parts in memory (a reader never writes)."""
        try:
            summary = json.loads((self.root / "sweep.json").read_text())
        except (OSError, ValueError):
            summary = {}
        if summary.get("parts") != self.part_ids():
            return self.tables_from_parts(order)
        tables = {}
        for name in TABLES:
            path = self.root / f"{name}.parquet"
            try:
                tables[name] = pd.read_parquet(path) if path.is_file() else pd.DataFrame()
            except (OSError, ValueError) as err:
                raise StoreError(f"corrupt sweep table {path}: {err}") from None
        return tables

    def checkpoint(self, group_id: str) -> Path:
        return self.parts / group_id / CHECKPOINT
