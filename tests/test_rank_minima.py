import numpy as np
import pandas as pd
import pytest
import torch

from bnrank.errors import ModelError
from bnrank.measure import rank_minima as rm
from bnrank.models import EnsembleMLP
from bnrank.training.recipe import default_train_config, middle_layer


def _net(depth=5, width=6, members=3, seed=0):
    net = EnsembleMLP.init(members, [4] + [width] * (depth - 1) + [3], seeds=range(seed, seed + members),
                           dtype=torch.float64)
    with torch.no_grad():
        for b in net.biases:
            b.normal_(0, 0.3)
    return net


def _x(n=50):
    return torch.randn(n, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("depth, k", [(4, 1), (5, 2), (6, 0), (7, 5)])
def test_truncation_gives_rank_exactly_k_at_the_middle_weight(depth, k):
    out = rm.truncate_middle(_net(depth), k)
    w = out.weights[middle_layer(depth) - 1].detach()
    s = torch.linalg.svdvals(w)
    assert (s[:, :k] > 1e-6).all() and (s[:, k:] < 1e-12 * s[:, :1].clamp_min(1)).all()
    assert torch.linalg.matrix_rank(w).tolist() == [k] * 3


def test_truncation_keeps_the_other_layers_up_to_rebalancing_and_keeps_a_rank_k_function():
    net = _net(5)
    m = middle_layer(5) - 1
    out = rm.truncate_middle(net, 2)
    ref = net.select([0, 1, 2])
    with torch.no_grad():
        u, s, vh = torch.linalg.svd(ref.weights[m], full_matrices=False)
        ref.weights[m].copy_(u[..., :2] * s[:, None, :2] @ vh[:, :2])
    torch.testing.assert_close(out(_x()), ref(_x()), rtol=0, atol=1e-12)  # re-balancing keeps f
    assert out.balance_error().max() < 1e-6


def test_rebalancing_keeps_the_function_and_never_raises_the_norm():
    net = _net(6)
    before, norm = net(_x()), net.param_norm_sq()
    net.rebalance_()
    torch.testing.assert_close(net(_x()), before, rtol=0, atol=1e-12)
    assert (net.param_norm_sq() <= norm + 1e-12).all()


@pytest.mark.parametrize("depth, extra", [(4, 2), (5, 3), (3, 1), (4, 0)])
def test_extension_preserves_the_function_and_adds_layers(depth, extra):
    net = _net(depth)
    out = rm.extend_depth(net, extra)
    assert out.depth == depth + extra and out.dims[1:-1] == [6] * (depth + extra - 1)
    torch.testing.assert_close(out(_x()), net(_x()), rtol=0, atol=1e-12)
    assert out.balance_error().max() < 1e-6


def test_extension_inserts_identities_after_the_middle_hidden_layer():
    net = _net(4, members=1)
    net.rebalance_(rm.REBALANCE_SWEEPS)
    ext = rm.extend_depth(net, 2)
    m = middle_layer(4)
    # the inserted layers are diagonal with a positive diagonal (identities, re-balanced) at m+1, m+2
    for i in (m, m + 1):
        w = ext.weights[i][0].detach()
        assert torch.count_nonzero(w - torch.diag(torch.diagonal(w))) == 0 and (torch.diagonal(w) >= 0).all()
        assert torch.count_nonzero(ext.biases[i]) == 0
    assert ext.weights[m - 1].shape == net.weights[m - 1].shape and ext.weights[m + 2].shape == net.weights[m].shape


def test_extension_needs_equal_hidden_widths():
    net = EnsembleMLP.init(1, [4, 6, 5, 3], dtype=torch.float64)
    with pytest.raises(ModelError, match="equal hidden widths"):
        rm.extend_depth(net, 1)


def _networks():
    """Depth 4: ranks 3 and 2; depth 6: ranks 1 and 1 (source names say depth and member)."""
    nets = []
    for depth, ranks in ((4, (3, 2)), (6, (1, 1))):
        model = _net(depth, members=2, seed=depth)
        for e, r in enumerate(ranks):
            nets.append(rm.Network(f"d{depth}m{e}", depth, r, 0.1 * (e + 1), model.select([e])))
    return nets


def test_depth_starts_use_trained_truncated_and_extended_networks():
    starts = rm.depth_starts(4, [1, 2, 3], _networks())
    kinds = {(s.rank_class, s.start, s.source) for s in starts}
    assert kinds == {(1, "truncated", "d4m0"), (1, "truncated", "d4m1"), (2, "truncated", "d4m0"),
                     (2, "trained", "d4m1"), (3, "trained", "d4m0")}
    deep = rm.depth_starts(6, [1, 2, 3], _networks())
    kinds = {(s.rank_class, s.start, s.source) for s in deep}
    # rank 2: the depth-4 network of rank 2 is preferred over the one of rank 3; rank 3: the rank-3 one
    assert kinds == {(1, "trained", "d6m0"), (1, "trained", "d6m1"), (2, "extended", "d4m1"), (3, "extended", "d4m0")}
    for s in deep:
        assert s.model.depth == 6
        w = s.model.weights[middle_layer(6) - 1].detach()
        if s.start == "extended":
            assert torch.linalg.matrix_rank(w).item() == s.rank_class
    assert rm.depth_starts(4, [4], _networks()) == []  # no network of rank >= 4 at depth <= 4


def test_descent_config_drops_the_adam_phase_and_shifts_the_stop_rule():
    cfg = default_train_config(8, 1e-3, adam_steps=100, descent_steps=200, polish_steps=300, window=50)
    out = rm.descent_config(cfg, 0.5)
    assert [p.optimizer for p in out.phases] == ["gd"] * 6 and [p.steps for p in out.phases] == [12] * 4 + [100, 150]
    assert [p.momentum for p in out.phases] == [0.9] * 4 + [0.9995] * 2
    assert out.stop.min_steps == 48 + 100 + 50 and cfg.stop.min_steps == 100 + 200 + 50
    assert rm.descent_config(cfg, 0.5, [None, None]) == out  # no cap: no capped phase
    capped = rm.descent_config(cfg, 0.5, [2, None])
    first = capped.phases[0]
    assert first.optimizer == "adam" and first.middle_rank == [2, None] and first.steps == round(100 * rm.CAPPED_FRACTION)
    assert first.lr == cfg.phases[0].lr and first.lam_factor_start == 1.0 and capped.phases[1:] == out.phases
    assert capped.stop.min_steps == min(cfg.stop.min_steps, out.stop.min_steps + first.steps)


def test_finish_starts_rows_and_best_minima():
    nets = _networks()
    x = _x(30)
    y = torch.randn(30, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    cfg = default_train_config(4, 1e-3, adam_steps=10, descent_steps=30, polish_steps=30, window=10, log_every=10)
    starts = rm.depth_starts(4, [1, 2], nets)
    rows = rm.finish_starts(starts, x, y, cfg, 1e-3, certify=False)
    assert len(rows) == len(starts) and list(rows.columns) == rm.COLUMNS
    assert (rows["left_class"] == (rows["mid_rank"] != rows["rank_class"])).all()
    assert (rows["steps"] <= round(30 * rm.CAPPED_FRACTION) + 4 * 3 + 60).all()
    certified = rm.finish_starts(starts[:1], x, y, cfg, 1e-3)
    assert {"cert_verdict", "cert_rel_grad", "cert_hessian_min"} <= set(certified.columns)


def test_a_finish_never_ends_above_its_start():
    """A member whose finish rises (here: GD at 30/h_max, far beyond its stability bound 2/h_max, blows
    up) keeps its start: its row is the start's objective, not diverged; every row ends at or below
    its start."""
    from bnrank.config import Phase
    from bnrank.training.objective import objective

    nets = _networks()
    x = _x(30)
    y = torch.randn(30, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    cfg = default_train_config(4, 1e-3, adam_steps=10, descent_steps=30, polish_steps=30, window=10, log_every=10)
    starts = rm.depth_starts(4, [1, 2], nets)
    before = [objective(s.model, x, y, torch.tensor([1e-3], dtype=torch.float64), cfg.mse_reduction)[0].item()
              for s in starts]
    calm = rm.finish_starts(starts, x, y, cfg, 1e-3, certify=False)
    assert not calm["kept_start"].all() and (calm["objective"].to_numpy() <= np.array(before) + 1e-12).all()
    wild = cfg.model_copy(update={"phases": [cfg.phases[0], Phase(optimizer="gd", steps=30, lr_sharpness=30.0)]})
    rows = rm.finish_starts(starts, x, y, wild, 1e-3, certify=False)
    assert rows["kept_start"].all() and not rows["diverged"].any() and not rows["converged"].any()
    assert np.allclose(rows["objective"], before, rtol=1e-12, atol=0)


def test_best_minima_keeps_the_lowest_objective_row_that_stayed_in_its_class():
    rows = pd.DataFrame({
        "depth": [4, 4, 4, 4, 6], "rank_class": [1, 1, 2, 2, 2], "objective": [0.3, 0.1, 0.2, 0.05, 0.4],
        "left_class": [False, True, False, False, False], "diverged": [False, False, False, True, False],
    })
    best = rm.best_minima(rows)
    assert best[["depth", "rank_class", "objective"]].values.tolist() == [[4, 1, 0.3], [4, 2, 0.2], [6, 2, 0.4]]


def test_docs_columns_list_exactly_the_minima_columns():
    from bnrank.measure.certificate import Certificate
    from test_docs import documented_columns

    certs = {f"cert_{name}" for name in Certificate.__dataclass_fields__}
    assert documented_columns()["minima"] == set(rm.COLUMNS) | {"best"}
    text = open("docs/columns.md").read()
    assert all(name[len("cert_"):] in text for name in certs)
