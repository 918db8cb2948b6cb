"""Grouping cells into ensembles: cells of one network shape train together in one batched pass.

Two cells can share an ensemble when their resolved configs agree on everything except the
fields an ensemble varies per member:

    seed                      init seed of the member (EnsembleMLP.init takes one per member)
    model.init_scale          per-member init scale
    train.lam                 per-member λ
    train.phases.N.lr         per-member peak learning rate of each phase
    task.seed                 the member's data: `fit` takes per-member inputs (E, N, d), and a
                              task's shapes do not depend on its seed

Exception: when a phase samples minibatches (``optimizer: sgd``), `fit` draws one batch order
for the whole ensemble from its `seed` argument, while a cell trained alone draws it from its own
seed; such cells are grouped only with cells of the same seed, so each member still sees exactly
the batches it would see alone.

So a member's training is exactly its cell's training alone, whatever cells it is batched
with: a cell's results depend on its config only, which is what makes resuming (where the
remaining cells are regrouped) and rerunning exact. (The stop rule freezes each member on its
own, and `lr_sharpness` estimates each member's curvature from the same start vector, so neither
couples members.) One trainer setting couples the members of an ensemble, and a cell using it
trains in a group of its own unless the spec sets ``batch_coupled: true`` (faster; its results
then depend on its group mates):

    phases.N.momentum: auto   one μ for the ensemble, set by the member with the smallest λ·lr

A shape class larger than `max_members` is split into near-equal chunks (10 cells with
max_members 8 → 5 + 5), so the slowest group is as short as it can be.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
from dataclasses import dataclass

from bnrank.config import TrainConfig, per_member
from bnrank.sweep.spec import Cell


@dataclass(frozen=True)
class Group:
    """Cells trained together as one ensemble; member e is ``cells[e]``.

    `analyze_points` > 0 asks the unit of work to also run bnrank.analyze on at most that many
    training inputs (with its curvature measurements when `analyze_curvature`); 0 skips it.
    """

    group_id: str
    cells: tuple[Cell, ...]
    analyze_points: int = 0
    analyze_curvature: bool = False

    @property
    def members(self) -> int:
        return len(self.cells)

    def work(self) -> float:
        """A relative estimate of the group's training time: members × steps × N × depth × width²
        (the cost of a step of a dense net; for ordering groups, not a prediction in seconds)."""
        config = self.cells[0].config
        steps = sum(p.steps for p in config.train.phases)
        model = config.model
        return float(self.members * steps * getattr(config.task, "n_train", 1) * model.depth * model.width**2)

    def train_config(self) -> TrainConfig:
        """The first cell's TrainConfig with λ and every phase's lr as per-member lists (a phase
        with lr_sharpness keeps its unused lr: its steps are set at the phase start)."""
        data = self.cells[0].config.train.model_dump(mode="json")
        data["lam"] = [per_member(c.config.train.lam, 1)[0] for c in self.cells]
        for i, phase in enumerate(data["phases"]):
            if phase["lr_sharpness"] is None:
                phase["lr"] = [per_member(c.config.train.phases[i].lr, 1)[0] for c in self.cells]
        return TrainConfig.model_validate(data)


def _stochastic(cell: Cell) -> bool:
    return any(p.batch_size is not None for p in cell.config.train.phases)


def coupling(cell: Cell) -> list[str]:
    """The settings of the cell's config that couple ensemble members (see module doc)."""
    phases = cell.config.train.phases
    return [f"train.phases.{i}.momentum" for i, phase in enumerate(phases) if phase.momentum == "auto"]


def shape_key(cell: Cell, batch_coupled: bool = False) -> str:
    """Canonical JSON of the cell's config without its per-member fields (see module doc); the
    cell's own id when it must train alone (coupled settings, not `batch_coupled`)."""
    if coupling(cell) and not batch_coupled:
        return cell.cell_id
    data = copy.deepcopy(cell.config.model_dump(mode="json"))
    if not _stochastic(cell):
        del data["seed"]
    del data["model"]["init_scale"], data["train"]["lam"]
    data["task"].pop("seed", None)
    for phase in data["train"]["phases"]:
        del phase["lr"]
    return json.dumps(data, sort_keys=True, separators=(",", ":"))


def group_id(cells: list[Cell]) -> str:
    """12 hex digits of the SHA-256 of the member cell ids, in member order."""
    return hashlib.sha256(",".join(c.cell_id for c in cells).encode()).hexdigest()[:12]


def group_cells(
    cells: list[Cell], max_members: int, analyze_points: int = 0, analyze_curvature: bool = False,
    batch_coupled: bool = False,
) -> list[Group]:
    """Partition `cells` into groups of one shape and at most `max_members` members.

    Shape classes come in order of their first cell, members in the order of `cells`; the
    analyze options are passed to every group.
    """
    classes: dict[str, list[Cell]] = {}
    for cell in cells:
        classes.setdefault(shape_key(cell, batch_coupled), []).append(cell)
    groups = []
    for members in classes.values():
        chunks = math.ceil(len(members) / max_members)
        size, extra = divmod(len(members), chunks)
        start = 0
        for k in range(chunks):
            chunk = members[start : start + size + (k < extra)]
            start += len(chunk)
            groups.append(Group(group_id(chunk), tuple(chunk), analyze_points, analyze_curvature))
    return groups
