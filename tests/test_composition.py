"""The rank-k composition task (bnrank.tasks.composition): standardization, determinism, and what
`minor_scale` and `minor_fraction` do to the part of y that a rank-1 bottleneck cannot carry."""

import pytest
import torch

from bnrank.config import CompositionTask
from bnrank.tasks import make_task
from bnrank.errors import ConfigError
from bnrank.tasks.composition import _random_relu_net, sample_composition, unexplained_by_z1


def test_x_and_y_are_standardized_on_the_training_set_and_deterministic_in_the_seed():
    cfg = CompositionTask(n_train=300, n_test=50, seed=3)
    task = make_task(cfg)
    for t in (task.x_train, task.y_train):
        assert torch.allclose(t.mean(0), torch.zeros(t.shape[1], dtype=t.dtype), atol=1e-12)
        assert torch.allclose(t.std(0), torch.ones(t.shape[1], dtype=t.dtype), atol=1e-12)
    assert task.x_test.shape == (50, 20) and task.y_test.shape == (50, 20)
    again = make_task(cfg)
    assert torch.equal(again.x_train, task.x_train) and torch.equal(again.y_test, task.y_test)
    other = make_task(cfg.model_copy(update={"seed": 4}))
    assert not torch.allclose(other.y_train, task.y_train)


def _unexplained_by_z1(z: torch.Tensor, y: torch.Tensor, bins: int = 400) -> float:
    """Fraction of y's variance left by E[y | z_1], estimated by averaging y over quantile bins of z_1."""
    edges = torch.quantile(z[:, 0], torch.linspace(0, 1, bins + 1, dtype=z.dtype)[1:-1])
    which = torch.bucketize(z[:, 0].contiguous(), edges)
    counts = torch.bincount(which, minlength=bins).to(y.dtype)[:, None]
    means = torch.zeros(bins, y.shape[1], dtype=y.dtype).index_add_(0, which, y) / counts
    y0 = y - y.mean(0)
    return float(((y - means[which]) ** 2).sum() / (y0**2).sum())


@pytest.mark.parametrize(("minor_scale", "low", "high"), [(1.0, 0.5, 0.7), (0.08, 0.02, 0.04), (1e-9, 0.0, 2e-3)])
def test_minor_scale_sets_the_part_of_y_outside_the_best_function_of_z1(minor_scale, low, high):
    """At minor_scale 1 most of y depends on z_2 as well; at 0.08 about 3 % of its variance does
    (the rank-1 residual fig1's presets are built on); as minor_scale → 0, y is a function of z_1
    (what is left is the binning's own error, ≈ 0.0007)."""
    z, _, y, _ = sample_composition(CompositionTask(n_train=40_000, n_test=0, minor_scale=minor_scale))
    y = y / y.std(0)  # the task standardizes each output
    assert low <= _unexplained_by_z1(z, y) <= high



def test_quadrature_fraction_matches_the_binned_estimate_on_a_large_draw():
    """`unexplained_by_z1` (E[y | z_1] by quadrature) agrees with averaging y over bins of z_1."""
    cfg = CompositionTask(n_train=40_000, n_test=0, minor_scale=0.08)
    gen = torch.Generator().manual_seed(cfg.seed)
    _random_relu_net(gen, cfg.latent_dim, cfg.hidden, cfg.d_in, cfg.bias_std, cfg.g_scale)
    h = _random_relu_net(gen, cfg.rank, cfg.hidden, cfg.d_out, cfg.bias_std)
    z, _, y, c = sample_composition(cfg)
    assert c == 0.08
    exact = unexplained_by_z1(h, cfg.rank, z, c)
    assert abs(exact - _unexplained_by_z1(z, y / y.std(0))) < 1.5e-3


@pytest.mark.parametrize(("seed", "rank", "fraction"), [(0, 2, 0.02), (1, 2, 0.02), (3, 3, 0.05)])
def test_minor_fraction_sets_the_unexplained_part_on_the_training_rows(seed, rank, fraction):
    """With minor_fraction ε the training targets' variance outside E[y | z_1] is ε: checked against
    a Monte-Carlo E[y | z_1] (20,000 draws of z_2..z_k per training row); c is in the metadata."""
    cfg = CompositionTask(n_train=60, n_test=10, rank=rank, minor_fraction=fraction, seed=seed)
    task = make_task(cfg)
    c = task.metadata["minor_scale"]
    assert 0 < c < 1
    gen = torch.Generator().manual_seed(seed)
    _random_relu_net(gen, cfg.latent_dim, cfg.hidden, cfg.d_in, cfg.bias_std, cfg.g_scale)
    h = _random_relu_net(gen, cfg.rank, cfg.hidden, cfg.d_out, cfg.bias_std)
    z = torch.randn(cfg.n_train + cfg.n_test, cfg.latent_dim, generator=gen, dtype=torch.float64)[: cfg.n_train]
    draws = torch.randn(20_000, rank - 1, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    weights = torch.tensor([1.0] + [c] * (rank - 1), dtype=torch.float64)
    y = h(z[:, :rank] * weights)
    cond = torch.stack([h(torch.cat([z[i, :1].expand(len(draws), 1), c * draws], 1)).mean(0) for i in range(len(z))])
    fraction_mc = float((((y - cond) ** 2).sum(0) / ((y - y.mean(0)) ** 2).sum(0)).mean())
    assert abs(fraction_mc - fraction) < 0.03 * fraction
    y_std = (y - y.mean(0)) / y.std(0)
    assert torch.allclose(task.y_train, y_std, atol=1e-10)


def test_minor_fraction_errors():
    with pytest.raises(ValueError, match="not both"):
        CompositionTask(minor_scale=0.5, minor_fraction=0.1)
    with pytest.raises(ValueError, match="rank >= 2"):
        CompositionTask(rank=1, minor_fraction=0.1)
    with pytest.raises(ConfigError, match="out of reach"):
        make_task(CompositionTask(n_train=40, n_test=0, minor_fraction=0.99))
