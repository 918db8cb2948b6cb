import pytest
import torch
from typer.testing import CliRunner

from bnrank.cli import app


@pytest.fixture(autouse=True)
def _few_threads():
    """Tests are small: one thread keeps them fast and deterministic on a shared 2-core machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def tiny_config(**overrides) -> dict:
    """A run config that trains in well under a second."""
    cfg = {
        "seed": 0,
        "members": 2,
        "task": {"n_train": 32, "n_test": 16, "d_in": 5, "d_out": 3, "latent_dim": 4, "rank": 2, "hidden": 16},
        "model": {"depth": 3, "width": 8},
        "train": {"lam": 0.01, "log_every": 10, "phases": [{"optimizer": "adam", "steps": 30, "lr": 0.01}]},
    }
    for key, value in overrides.items():
        cfg[key] = value
    return cfg


def cli(*args):
    """Run the bnrank CLI in-process: (exit code, stdout, stderr)."""
    res = CliRunner().invoke(app, [str(a) for a in args])
    return res.exit_code, res.stdout, res.stderr


def one_line_error(code: int, stderr: str, message: str) -> None:
    """Bad input: exit code 2 and a single `error: ...` line containing `message`."""
    lines = stderr.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], stderr


def random_data(n=9, d_in=4, d_out=3, members=None, seed=1):
    """Standard normal float64 inputs (n, d_in) and targets (n, d_out), or (members, n, ·) stacked."""
    gen = torch.Generator().manual_seed(seed)
    shape = (members, n) if members else (n,)
    f64 = torch.float64
    return torch.randn(*shape, d_in, generator=gen, dtype=f64), torch.randn(*shape, d_out, generator=gen, dtype=f64)
