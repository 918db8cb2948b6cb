"""Matrix completion of a planted low-rank matrix, posed as masked regression.

M = U Vᵀ / √r (n_rows × n_cols) with U, V standard Gaussian (r = rank), so its entries have
variance 1. Every entry is observed independently with probability `observed`; observed values
get Gaussian noise of std `noise`. As regression (rows are samples): input i is the one-hot
e_i ∈ R^{n_rows}, its target the row M[i] ∈ R^{n_cols}, and the mask (n_rows, n_cols) says
which target entries are observed (unobserved ones are stored as 0 and carry no information).
A linear network f(x) = A x then holds the estimate of Mᵀ: f(e_i) = A[:, i] ≈ M[i].
The test set is every row with its noiseless target, i.e. the whole M.

A mask with an empty row or column cannot be completed (that row or column of M is free) and
is refused by `TaskData`, naming it. Only a masked objective may train on this task:
`bnrank.train` fits every target entry and refuses it (bnrank.pipeline); the experiment
`l2-linear` trains deep linear nets on it with its own masked objective.
"""

from __future__ import annotations

import torch

from bnrank.tasks.base import TaskData


def completion_task(cfg) -> TaskData:
    """The task a `MatrixCompletionTask` config describes (deterministic in cfg.seed)."""
    gen = torch.Generator().manual_seed(cfg.seed)
    u = torch.randn(cfg.n_rows, cfg.rank, generator=gen, dtype=torch.float64)
    v = torch.randn(cfg.n_cols, cfg.rank, generator=gen, dtype=torch.float64)
    m = u @ v.T / cfg.rank**0.5
    mask = torch.rand(cfg.n_rows, cfg.n_cols, generator=gen, dtype=torch.float64) < cfg.observed
    noisy = m + cfg.noise * torch.randn(m.shape, generator=gen, dtype=torch.float64) if cfg.noise > 0 else m
    eye = torch.eye(cfg.n_rows, dtype=torch.float64)
    meta = {"kind": "matrix-completion", "true_rank": cfg.rank, "n_observed": int(mask.sum())}
    return TaskData(eye, torch.where(mask, noisy, 0.0), eye.clone(), m, meta, mask=mask)
