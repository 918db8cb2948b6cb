"""Sweep specs: a base run config, a grid over config keys and seeds, expanded into cells.

A spec is YAML (or a dict); unknown keys are errors:

    name: depth-lam
    base:                       # a run config (bnrank.config.RunConfig) without members/seeds
      task: {kind: composition, rank: 2, n_train: 200}
      model: {width: 50}
      train: {phases: [{optimizer: adam, steps: 2000, lr: 0.003}]}
    grid:                       # dotted config keys → values; the cells are their product
      model.depth: [4, 8, 12]
      train.lam: [0.001, 0.01]
    cases:                      # optional: settings that go together (keys → values), each
      - {model.width: 50, train.phases.0.lr: 0.003}     # case crossed with the grid
      - {model.width: 100, train.phases.0.lr: 0.001}
    trials: 4                   # seeds base.seed + 0..3 (or `seeds: [0, 7, 9]`)
    max_members: 16             # at most this many cells train together as one ensemble
    batch_coupled: false        # batch cells whose trainer settings couple members (grouping.py)
    analyze: true               # also measure each network with bnrank.analyze
    analyze_points: 64          # ... on at most this many training inputs
    analyze_curvature: true     # ... including the top NTK / Hessian eigenvalues (the slow part)

A **cell** is one network: the base with one case, one grid combination and one seed applied, validated as
a single-member RunConfig. Its ``cell_id`` is a hash of that resolved config (every default
written out), so a sweep directory is resumed by content: the same config always has the same
id, whatever the grid order or the spec's other cells. Because defaults are part of the hash, a
bnrank upgrade that changes a default gives new ids, and the store refuses to resume such a
directory (its saved resolved spec differs) rather than mix old and new cells. A new field whose
default gives the network a config without it gives (bnrank.config.NEUTRAL_DEFAULTS) is left
out of the hash at that default, so such an option keeps the ids of existing sweeps.

Grid keys are applied to the resolved base (all defaults present), so list items can be
addressed (``train.phases.1.lr``) and a misspelled key fails at once with one line naming it.
The cell seed is set by ``seeds``/``trials``; ``seed``, ``seeds`` and ``members`` are not grid keys.
A grid is a product; ``cases`` pair settings a product can't (each depth with its own training
recipe): a case's keys may not also be grid keys, and every case names the same keys.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import Field, model_validator

from bnrank.config import RunConfig, StrictModel, canonical_dump, parse_assignment, read_yaml, validate
from bnrank.errors import ConfigError

#: Keys a cell sets itself (from the spec's seeds or trials); they are not grid keys.
RESERVED_KEYS = ("seed", "seeds", "members")


class SweepSpec(StrictModel):
    """A validated sweep spec (see the module docstring). `base` is kept as the resolved run
    config dump (every default written out), so two specs that resolve alike compare equal."""

    name: str = "sweep"
    base: dict[str, Any] = Field(default_factory=dict)
    grid: dict[str, list[Any]] = Field(default_factory=dict)
    cases: list[dict[str, Any]] = Field(default_factory=list)
    seeds: list[int] | None = None
    trials: int | None = Field(None, gt=0)
    max_members: int = Field(16, gt=0)
    batch_coupled: bool = False
    analyze: bool = True
    analyze_points: int = Field(64, gt=0)
    analyze_curvature: bool = True

    @model_validator(mode="after")
    def _check(self) -> "SweepSpec":
        if self.seeds is not None and self.trials is not None:
            raise ValueError("give either seeds or trials, not both")
        if self.seeds is not None and (not self.seeds or len(set(self.seeds)) != len(self.seeds)):
            raise ValueError("seeds must be a non-empty list without repeats")
        for key, values in self.grid.items():
            if not values:
                raise ValueError(f"grid {key}: needs at least one value")
        if self.cases:
            keys = list(self.cases[0])
            if not keys or any(list(case) != keys for case in self.cases):
                raise ValueError("cases: every case must set the same keys, in the same order (at least one)")
            if both := sorted(set(keys) & set(self.grid)):
                raise ValueError(f"cases and grid both set {', '.join(both)}")
        return self

    def cell_seeds(self) -> list[int]:
        """The seeds every grid point is trained with."""
        if self.seeds is not None:
            return list(self.seeds)
        base_seed = int(self.base.get("seed", 0))
        return [base_seed + i for i in range(self.trials or 1)]

    def identity(self) -> dict[str, Any]:
        """What determines the sweep's results: the spec without `max_members`, which only
        changes how cells are batched, not what each computes (unless `batch_coupled`)."""
        data = self.model_dump(mode="json", exclude=set() if self.batch_coupled else {"max_members"})
        data["base"] = canonical_dump(data["base"])
        return data


@dataclass(frozen=True)
class Cell:
    """One network of a sweep: `config` is a resolved single-member RunConfig; `values` maps each
    grid key (dotted) to this cell's value as validated (``1`` for a float field reads ``1.0``),
    plus ``seed``; `index` is its position in the spec's expansion (grid in spec order, seeds
    innermost)."""

    cell_id: str
    index: int
    config: RunConfig
    values: dict[str, Any]


def cell_id(config: RunConfig) -> str:
    """12 hex digits of the SHA-256 of the resolved config as canonical JSON."""
    canonical = json.dumps(canonical_dump(config.model_dump(mode="json")), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def assign(data: dict, key: str, value: Any, what: str = "grid key") -> None:
    """Set dotted `key` (dict keys and list indices) of nested `data` in place to `value`.

    Every part of the key must already exist (apply it to a resolved config dump), so a
    misspelled key raises ConfigError naming it (as ``{what} 'key'``).
    """
    node: Any = data
    parts = key.split(".")
    for depth, part in enumerate(parts):
        where = ".".join(parts[:depth]) or "the config"
        if isinstance(node, dict) and part in node:
            pass
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            part = int(part)
        else:
            raise ConfigError(f"{what} {key!r}: {part!r} is not a key of {where}")
        if depth == len(parts) - 1:
            node[part] = copy.deepcopy(value)
        else:
            node = node[part]


def lookup(data: Any, key: str) -> Any:
    """The value at dotted `key` of nested dicts and lists (a key known to exist)."""
    for part in key.split("."):
        data = data[int(part)] if isinstance(data, list) else data[part]
    return data


def load_spec(spec: SweepSpec | dict | str | Path, overrides: list[str] = ()) -> SweepSpec:
    """Validate a spec given as a SweepSpec, a dict or a YAML path, applying ``--set`` pairs.

    An override ``key=value`` (value parsed as YAML) sets a spec field when `key` is one
    (``trials=2``, ``analyze=false``), a grid entry when it starts with ``grid.``
    (``grid.model.depth=[4,8]``), and otherwise a key of the base config, with or without the
    ``base.`` prefix (``train.phases.0.steps=50``).
    """
    if isinstance(spec, SweepSpec):
        data, source = spec.model_dump(mode="json"), "spec"
    elif isinstance(spec, dict):
        data, source = copy.deepcopy(spec), "spec"
    elif isinstance(spec, (str, Path)):
        data, source = read_yaml(spec), str(spec)
    else:
        raise ConfigError(f"a sweep spec is a SweepSpec, a dict or a YAML path, not a {type(spec).__name__}")
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level")
    data["base"] = _resolve_base(data.get("base"), source)
    for item in overrides:
        _apply_override(data, item)
    data["base"] = _resolve_base(data["base"], source)
    return validate(SweepSpec, data, source=source)


def _resolve_base(base: Any, source: str) -> dict:
    """The base run config validated and dumped with every default written out."""
    if isinstance(base, dict):
        for key in ("seeds", "members"):
            if base.get(key) not in (None, 1):
                raise ConfigError(f"{source}: base.{key}: a cell is one network; use the spec's seeds or trials")
    return validate(RunConfig, base, source=f"{source}: base").model_dump(mode="json")


def _apply_override(data: dict, item: str) -> None:
    key, value = parse_assignment(item)
    head, _, rest = key.partition(".")
    if head == "grid" and rest:
        grid = data.setdefault("grid", {})
        if not isinstance(grid, dict):
            raise ConfigError("grid: expected a mapping of config keys to lists of values")
        grid[rest] = value
    elif head in SweepSpec.model_fields and head != "base" and not rest:
        data[head] = value
    else:
        assign(data["base"], key.removeprefix("base."), value, what="--set")


def expand(spec: SweepSpec) -> list[Cell]:
    """All cells of `spec`, in order: cases slowest, then grid combinations (first key slowest),
    seeds innermost.

    Raises ConfigError, naming the key and value, when a grid key is not a config key, a value
    does not validate, a combination is invalid, or two cells resolve to the same config.
    """
    case_keys = list(spec.cases[0]) if spec.cases else []
    for key in [*spec.grid, *case_keys]:
        if key.split(".")[0] in RESERVED_KEYS:
            raise ConfigError(f"grid key {key!r}: set seeds with the spec's seeds or trials")
    base = spec.base
    for key, values in spec.grid.items():  # each value alone, so an error names it
        for value in values:
            data = copy.deepcopy(base)
            assign(data, key, value)
            validate(RunConfig, data, source=f"grid {key}={value!r}")
    for i, case in enumerate(spec.cases):
        data = copy.deepcopy(base)
        for key, value in case.items():
            assign(data, key, value, what=f"cases.{i} key")
        validate(RunConfig, data, source=f"cases.{i}")
    cells: list[Cell] = []
    seen: dict[str, dict] = {}
    keys = case_keys + list(spec.grid)
    for case in spec.cases or [{}]:
        for combo in itertools.product(*spec.grid.values()):
            _add_cells(spec, cells, seen, keys, [*case.values(), *combo])
    return cells


def _add_cells(spec: SweepSpec, cells: list[Cell], seen: dict[str, dict], keys: list[str], combo: list[Any]) -> None:
    """Append the cells of one (case, grid combination), one per seed, to `cells` (see `expand`)."""
    base = spec.base
    for seed in spec.cell_seeds():
        data = copy.deepcopy(base)
        for key, value in zip(keys, combo):
            assign(data, key, value)
        data["seed"] = seed
        label = ", ".join(f"{k}={v!r}" for k, v in [*zip(keys, combo), ("seed", seed)])
        config = validate(RunConfig, data, source=f"cell {label}")
        resolved = config.model_dump(mode="json")
        values = {key: lookup(resolved, key) for key in keys} | {"seed": seed}
        cid = cell_id(config)
        if cid in seen:
            raise ConfigError(f"cells {seen[cid]} and {values} resolve to the same config (repeated grid values?)")
        seen[cid] = values
        cells.append(Cell(cid, len(cells), config, values))
