"""Sweep specs: grid expansion, content-keyed cell ids, early errors, grouping into ensembles."""

from pathlib import Path

import pytest

from bnrank.errors import ConfigError
from bnrank.sweep import expand, group_cells, load_spec
from bnrank.sweep.grouping import coupling, shape_key
from conftest import tiny_config


def spec(**fields) -> dict:
    base = tiny_config()
    del base["members"]
    return {"base": base, "grid": {"model.depth": [2, 3], "train.lam": [0.01, 0.001, 0.1]}, "trials": 2} | fields


def test_expansion_counts_order_and_values():
    cells = expand(load_spec(spec()))
    assert len(cells) == 2 * 3 * 2
    assert [c.index for c in cells] == list(range(12))
    assert [c.values for c in cells[:3]] == [
        {"model.depth": 2, "train.lam": 0.01, "seed": 0},
        {"model.depth": 2, "train.lam": 0.01, "seed": 1},
        {"model.depth": 2, "train.lam": 0.001, "seed": 0},
    ]
    assert isinstance(expand(load_spec(spec(grid={"train.lam": [1]})))[0].values["train.lam"], float)  # as validated
    last = cells[-1].config
    assert (last.model.depth, last.train.lam, last.seed, last.members) == (3, 0.1, 1, 1)
    assert len({c.cell_id for c in cells}) == 12


def test_cases_pair_settings_and_cross_the_grid():
    cases = [{"model.width": 4, "train.phases.0.lr": 0.01}, {"model.width": 6, "train.phases.0.lr": 0.002}]
    cells = expand(load_spec(spec(grid={"train.lam": [0.01, 0.1]}, cases=cases)))
    assert len(cells) == 2 * 2 * 2
    assert [(c.config.model.width, c.config.train.phases[0].lr) for c in cells[::2]] == [(4, 0.01)] * 2 + [(6, 0.002)] * 2
    assert cells[0].values == {"model.width": 4, "train.phases.0.lr": 0.01, "train.lam": 0.01, "seed": 0}
    assert [c.config.train.lam for c in cells[:4]] == [0.01, 0.01, 0.1, 0.1]


def test_seeds_from_trials_list_or_base_seed():
    assert {c.config.seed for c in expand(load_spec(spec(trials=3) | {"base": spec()["base"] | {"seed": 10}}))} == {10, 11, 12}
    no_trials = {k: v for k, v in spec().items() if k != "trials"}
    assert {c.config.seed for c in expand(load_spec(no_trials | {"seeds": [5, 9]}))} == {5, 9}
    assert {c.config.seed for c in expand(load_spec(no_trials))} == {0}


def test_cell_ids_are_keyed_by_content_not_by_position():
    ids = {c.cell_id for c in expand(load_spec(spec()))}
    assert ids == {c.cell_id for c in expand(load_spec(spec()))}
    swapped = spec(grid={"train.lam": [0.1, 0.001, 0.01], "model.depth": [3, 2]})
    assert {c.cell_id for c in expand(load_spec(swapped))} == ids
    subset = expand(load_spec(spec(grid={"model.depth": [3], "train.lam": [0.001]}, trials=None, seeds=[1])))
    assert subset[0].cell_id in ids
    base_default_written = spec()
    base_default_written["base"]["train"]["rebalance_every"] = 0  # the default, spelled out
    assert {c.cell_id for c in expand(load_spec(base_default_written))} == ids


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"grid": {"model.widht": [4]}}, "grid key 'model.widht': 'widht' is not a key of model"),
        ({"grid": {"train.phases.3.lr": [0.1]}}, "grid key 'train.phases.3.lr': '3' is not a key of train.phases"),
        ({"grid": {"model.depth": [2, 0]}}, "grid model.depth=0: model.depth"),
        ({"grid": {"seed": [1, 2]}}, "grid key 'seed'"),
        ({"grid": {"model.depth": []}}, "grid model.depth: needs at least one value"),
        ({"grid": {"model.depth": [2, 2]}}, "resolve to the same config"),
        ({"seeds": [1]}, "either seeds or trials"),
        ({"trails": 2}, "trails: unknown key"),
        ({"base": {"members": 3}}, "base.members"),
        ({"base": {"model": {"depht": 3}}}, "base: model.depht: unknown key"),
        ({"grid": {"task.latent_dim": [2, 8], "task.rank": [3]}}, "cell task.latent_dim=2, task.rank=3, seed=0: task: rank (3)"),
        ({"cases": [{"model.width": 4}, {"model.depth": 2}]}, "every case must set the same keys"),
        ({"cases": [{"model.depth": 4}]}, "cases and grid both set model.depth"),
        ({"cases": [{"model.widht": 4}]}, "cases.0 key 'model.widht'"),
        ({"cases": [{"model.width": 4}, {"model.width": -1}]}, "cases.1: model.width"),
    ],
)
def test_bad_specs_fail_up_front_with_one_line_naming_the_key(fields, message):
    with pytest.raises(ConfigError) as err:
        expand(load_spec(spec(**fields)))
    assert message in str(err.value) and "\n" not in str(err.value)


def test_overrides_set_spec_fields_grid_entries_and_base_keys():
    s = load_spec(spec(), ["trials=1", "grid.model.width=[4, 6]", "train.phases.0.steps=5", "base.model.depth=4"])
    cells = expand(s)
    assert len(cells) == 2 * 3 * 2 and {c.config.model.width for c in cells} == {4, 6}
    assert all(c.config.train.phases[0].steps == 5 for c in cells)
    with pytest.raises(ConfigError, match="--set 'train.lamm'"):
        load_spec(spec(), ["train.lamm=0.1"])


def test_cells_of_one_shape_share_an_ensemble_and_others_do_not():
    grid = {"model.depth": [2, 3], "train.lam": [0.01, 0.1], "model.init_scale": [1.0, 0.5],
            "train.phases.0.lr": [0.01, 0.02], "task.seed": [0, 1]}
    cells = expand(load_spec(spec(grid=grid)))
    groups = group_cells(cells, max_members=64)
    assert [g.members for g in groups] == [32, 32]
    assert [{c.config.model.depth for c in g.cells} for g in groups] == [{2}, {3}]
    assert sorted(c.cell_id for g in groups for c in g.cells) == sorted(c.cell_id for c in cells)
    lams = groups[0].train_config().lam
    assert lams == [c.config.train.lam for c in groups[0].cells]
    assert groups[0].train_config().phases[0].lr == [c.config.train.phases[0].lr for c in groups[0].cells]


def test_max_members_splits_a_shape_class_into_near_equal_groups():
    cells = expand(load_spec(spec(grid={"train.lam": [0.01 * (i + 1) for i in range(5)]})))
    assert [g.members for g in group_cells(cells, max_members=4)] == [4, 3, 3]
    assert [g.members for g in group_cells(cells, max_members=10)] == [10]
    assert [g.members for g in group_cells(cells, max_members=1)] == [1] * 10
    assert len({g.group_id for g in group_cells(cells, max_members=4)}) == 3


def test_minibatch_cells_group_only_with_their_own_seed():
    base = spec()["base"]
    base["train"]["phases"] = [{"optimizer": "sgd", "batch_size": 8, "steps": 5, "lr": 0.01}]
    cells = expand(load_spec(spec(base=base, grid={"train.lam": [0.01, 0.1]}, trials=2)))
    groups = group_cells(cells, max_members=64)
    assert [sorted(c.config.seed for c in g.cells) for g in groups] == [[0, 0], [1, 1]]
    assert shape_key(cells[0]) != shape_key(cells[1])


def test_the_shipped_tiny_example_is_eight_cells_in_two_ensembles():
    example = load_spec(Path(__file__).parents[1] / "examples" / "sweep-tiny.yaml")
    groups = group_cells(expand(example), example.max_members)
    assert [g.members for g in groups] == [4, 4]


def test_only_momentum_auto_couples_members_and_such_cells_train_alone_unless_batch_coupled():
    base = spec()["base"]
    base["train"]["stop"] = {"window": 10}
    base["train"]["phases"].append({"optimizer": "gd", "lr_sharpness": 1.0, "steps": 5})
    assert not coupling(expand(load_spec(spec(base=base)))[0])  # stop rule, lr_sharpness: per member
    base["train"]["phases"].append({"optimizer": "gd", "momentum": "auto", "lr": 0.01, "steps": 5})
    cells = expand(load_spec(spec(base=base)))
    assert coupling(cells[0]) == ["train.phases.2.momentum"]
    assert [g.members for g in group_cells(cells, max_members=64)] == [1] * 12
    assert [g.members for g in group_cells(cells, max_members=64, batch_coupled=True)] == [6, 6]


def test_group_work_grows_with_members_depth_and_width_squared():
    cells = expand(load_spec(spec(grid={"model.depth": [2, 4], "model.width": [3, 6]})))
    groups = group_cells(cells, max_members=64)
    work = {(g.cells[0].config.model.depth, g.cells[0].config.model.width): g.work() / g.members for g in groups}
    assert work[(4, 3)] == 2 * work[(2, 3)] and work[(2, 6)] == 4 * work[(2, 3)]
    pair = group_cells(expand(load_spec(spec(grid={"train.lam": [0.01]}, trials=2))), max_members=64)[0]
    assert pair.members == 2 and pair.work() == 2 * group_cells([pair.cells[0]], max_members=64)[0].work()
