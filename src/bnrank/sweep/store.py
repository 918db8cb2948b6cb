"""The sweep directory: finished groups as atomic parts, consolidated into tidy Parquet tables.

    DIR/
      spec.yaml                  the resolved spec (base with every default); written once
      .lock                      held (flock) by the one process writing DIR
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
groups in flight. Consolidation rewrites each top-level table atomically from the parts and is
idempotent; `read_tables` falls back to the parts when the consolidated files are stale.
"""

from __future__ import annotations

import fcntl
import json
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from bnrank.atomic import staged_dir, write_json, write_parquet, write_text
from bnrank.checkpoint import save_checkpoint
from bnrank.config import canonical_dump
from bnrank.errors import StoreError
from bnrank.sweep.spec import SweepSpec
from bnrank.sweep.work import ANALYZE_TABLES, BASE_TABLES, GroupResult

TABLES = BASE_TABLES + ANALYZE_TABLES
CHECKPOINT = "checkpoint.safetensors"


def first_difference(old: Any, new: Any, path: str = "") -> str | None:
    """Dotted path of the first place two JSON-like values differ (None if equal)."""
    if isinstance(old, dict) and isinstance(new, dict):
        for key in list(old) + [k for k in new if k not in old]:
            if key not in old or key not in new:
                return f"{path}{key}"
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
    return None if old == new else path.rstrip(".") or "(the whole spec)"


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
    def writing(self, spec: SweepSpec, resume: bool = True) -> Iterator["SweepStore"]:
        """Hold DIR's lock while writing; check (or write) its spec; clear dead staging dirs.

        Raises StoreError when another process holds DIR, DIR holds a different sweep (naming
        the first differing key), DIR is a non-empty directory that is not a sweep, or `resume`
        is False and DIR already has finished groups.
        """
        if self.root.exists() and not self.root.is_dir():
            raise StoreError(f"{self.root} is a file, not a sweep directory")
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "a+") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise StoreError(f"{self.root} is being written by another sweep process") from None
            self._check_spec(spec, resume)
            self._clear_staging()
            yield self

    def _check_spec(self, spec: SweepSpec, resume: bool) -> None:
        stored = self.stored_spec()
        if stored is None:
            foreign = [p.name for p in self.root.iterdir() if p.name != ".lock"]
            if foreign:
                raise StoreError(f"{self.root} is not empty and not a sweep directory (has {foreign[0]})")
            write_text(self.spec_path, yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False))
            return
        if not isinstance(stored, dict):
            raise StoreError(f"{self.spec_path}: not a sweep spec")
        new = spec.identity()
        old = {k: v for k, v in stored.items() if k in new or k not in SweepSpec.model_fields}
        if isinstance(old.get("base"), dict):
            old["base"] = canonical_dump(old["base"])
        diff = first_difference(old, new)
        if diff is not None:
            raise StoreError(f"{self.root} holds a different sweep (spec differs at {diff}); use another --out")
        if not resume and self.part_ids():
            raise StoreError(f"{self.root} already has finished groups (resume is off)")

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
