"""Validated configuration: task, model, training phases, and a whole run.

A run config is YAML (or a dict) with four sections; every field has a default, unknown keys are
errors. Fields typed ``PerMember`` take one value for the whole ensemble or a list with one value
per member (length ``members``), so an ensemble can vary λ, learning rate and init scale.

    seed: 0            # member i is initialised with seed + i (or `seeds`)
    members: 4         # ensemble size E
    task:  {kind: composition, rank: 2, n_train: 500}
    model: {depth: 12, width: 100}
    train:
      lam: 0.001
      phases: [{optimizer: adam, steps: 5000, lr: 0.003, schedule: cosine}]

``override(cfg_dict, ["train.lam=0.01", "train.phases.0.steps=100"])`` applies ``--set`` pairs
(values parsed as YAML) before validation.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError, field_validator, model_validator

from bnrank.errors import ConfigError

PositiveFloat = Annotated[float, Field(gt=0, allow_inf_nan=False)]
NonNegativeFloat = Annotated[float, Field(ge=0, allow_inf_nan=False)]
NonNegativeInt = Annotated[int, Field(ge=0)]
PerMember = Union[PositiveFloat, list[PositiveFloat]]
PerMemberNonNegative = Union[NonNegativeFloat, list[NonNegativeFloat]]


class StrictModel(BaseModel):
    """Unknown keys are errors, and values are not coerced: an integer field takes an integer
    (not ``true``, ``2.0`` or ``"2"``), a float field a number (not a boolean or a string), a
    boolean field ``true``/``false``. Tuple fields also take lists (YAML has no tuples)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class CompositionTask(StrictModel):
    """Rank-k composition task (docs/theory.md §5, Figure 1): x = g(z), y = h(z_1..z_k).

    z ~ N(0, I_latent_dim); g: R^latent_dim → R^d_in and h: R^rank → R^d_out are random
    one-hidden-layer ReLU nets of width `hidden`; h reads (z_1, c·z_2, ..., c·z_k), so c < 1
    leaves a small part of y outside the best rank-1 fit; x and y are standardized per coordinate.
    c = `minor_scale`, or, when `minor_fraction` ε is set, the c at which the part of the
    standardized training targets' variance that E[y | z_1] leaves unexplained is ε
    (`bnrank.tasks.composition.minor_scale_for`; minor_scale must then stay 1).
    """

    kind: Literal["composition"] = "composition"
    latent_dim: int = Field(8, gt=0)
    rank: int = Field(2, gt=0)
    d_in: int = Field(20, gt=0)
    d_out: int = Field(20, gt=0)
    n_train: int = Field(500, gt=0)
    n_test: int = Field(500, ge=0)
    noise: NonNegativeFloat = 0.0
    hidden: int = Field(100, gt=0)
    bias_std: NonNegativeFloat = 0.5
    g_scale: PositiveFloat = 1.0
    minor_scale: PositiveFloat = 1.0
    minor_fraction: float | None = Field(None, gt=0, lt=1)
    seed: int = 0

    @model_validator(mode="after")
    def _rank_fits_latent(self) -> "CompositionTask":
        if self.rank > self.latent_dim:
            raise ValueError(f"rank ({self.rank}) must be <= latent_dim ({self.latent_dim})")
        if self.minor_fraction is not None and self.minor_scale != 1.0:
            raise ValueError("set minor_scale or minor_fraction, not both")
        if self.minor_fraction is not None and self.rank < 2:
            raise ValueError("minor_fraction needs rank >= 2 (a rank-1 target has no minor latent)")
        return self


class SymmetryTask(StrictModel):
    """Symmetry-learning task (docs/theory.md §5, Figure 2): x ∈ R³, targets = the rotation invariants
    (wᵀx_t, ‖P⊥x_t‖), t = 1..path_length, along the gradient-descent path x_t of a potential V
    invariant under rotations about `axis` (see bnrank.tasks.symmetry). Bottleneck rank 2.

    `axis` is normalized to unit length (a zero axis is an error); `kappa` is V's pull towards
    the plane wᵀx = 0; `step` is the GD step η; inputs are uniform in the ball of radius `scale`
    ("ball") or N(0, scale² I) ("gaussian"); targets are standardized per coordinate.
    """

    kind: Literal["symmetry"] = "symmetry"
    axis: tuple[float, float, float] = Field((0.0, 0.0, 1.0), strict=False)
    kappa: NonNegativeFloat = 0.5
    step: PositiveFloat = 0.1
    path_length: int = Field(10, gt=0)
    n_train: int = Field(500, gt=0)
    n_test: int = Field(500, ge=0)
    distribution: Literal["ball", "gaussian"] = "ball"
    scale: PositiveFloat = 1.5
    seed: int = 0

    @field_validator("axis")
    @classmethod
    def _unit_axis(cls, axis: tuple[float, float, float]) -> tuple[float, float, float]:
        norm = sum(a * a for a in axis) ** 0.5
        if not math.isfinite(norm) or norm < 1e-12:
            raise ValueError(f"axis must be a finite non-zero vector, got {list(axis)}")
        return axis if abs(norm - 1) < 1e-12 else tuple(a / norm for a in axis)  # idempotent


MAX_GP_POINTS = 20_000
"""Largest n_train + n_test of an exact GP draw (MaternCompositionTask): an N × N float64 kernel
matrix takes 8·N² bytes, 3.2 GB at N = 20000, and its Cholesky factorization O(N³) time."""

MAX_NU = 50.0
"""Largest Matérn smoothness accepted (bnrank.tasks.matern.matern_general is accurate to ≈ 1e-13
up to here; the ν = 50 kernel is within 1 % of the Gaussian one)."""


class MaternCompositionTask(StrictModel):
    """Matérn composition task (bnrank.tasks.matern): y = h(g(x)), g: R^d_in → R^rank and
    h: R^rank → R^d_out with every coordinate an exact Matérn-GP draw of smoothness nu_g, nu_h.

    x ~ N(0, I) ("gaussian") or uniform on the sphere of radius √d_in ("sphere"); length scales
    are in units of the points' typical norm (ℓ_g = length_g·√d_in, ℓ_h = length_h·√rank);
    `jitter` is the nugget on the kernel's diagonal; y is standardized per coordinate, then
    noise of std `noise` is added. Exact sampling costs O(N³) time and 8·N² bytes, N =
    n_train + n_test ≤ 20000 (3.2 GB).
    """

    kind: Literal["matern-composition"] = "matern-composition"
    d_in: int = Field(15, gt=0)
    rank: int = Field(3, gt=0)
    d_out: int = Field(20, gt=0)
    nu_g: float = 2.5
    nu_h: float = 1.5
    length_g: PositiveFloat = 1.0
    length_h: PositiveFloat = 1.0
    inputs: Literal["gaussian", "sphere"] = "gaussian"
    n_train: int = Field(500, gt=0)
    n_test: int = Field(500, ge=0)
    noise: NonNegativeFloat = 0.0
    jitter: float = Field(1e-8, gt=0, le=1e-4)
    seed: int = 0

    @field_validator("nu_g", "nu_h")
    @classmethod
    def _smoothness(cls, nu: float, info) -> float:
        if not (math.isfinite(nu) and 0 < nu <= MAX_NU):
            raise ValueError(f"Matérn smoothness {info.field_name} must be > 0 and <= {MAX_NU:g}, got {nu}")
        return nu

    @model_validator(mode="after")
    def _check(self) -> "MaternCompositionTask":
        if self.rank > self.d_in:
            raise ValueError(f"rank (k = {self.rank}) must be <= d_in ({self.d_in})")
        n = self.n_train + self.n_test
        if n > MAX_GP_POINTS:
            raise ValueError(
                f"n_train + n_test = {n} exceeds {MAX_GP_POINTS}, the most points an exact GP draw takes "
                f"(an N x N float64 kernel: 8·N² bytes = {8 * MAX_GP_POINTS**2 / 1e9:.1f} GB at N = {MAX_GP_POINTS}, O(N³) time)"
            )
        return self


Standardize = Literal["none", "inputs", "targets", "both"]


class FileTask(StrictModel):
    """Your own data (bnrank.tasks.file): a `train` file and an optional `test` file of one format,
    .npy, .npz, .csv, .parquet or .safetensors (paths relative to the working directory).

    `inputs` / `targets` name what x and y are made of, placed side by side as columns: array
    names in a .npz or .safetensors file (default ``x`` and ``y``; an array is (N,) or (N, d)),
    column names of a .csv or .parquet file, column indices of a 2-d .npy array (targets must be
    named there; inputs default to every other column). `n_train` / `n_test` take at most that
    many rows from the start of each file (default: all). `standardize` centres and scales inputs,
    targets or both per column with the training set's mean and std (recorded in the run's task
    metadata). `sha256` is the hash of the data's float64 arrays, filled in when the config is
    validated, so a resolved config (and a sweep cell's id) names its data by content; a file
    whose data no longer has that hash is refused when the task is built.
    """

    kind: Literal["file"] = "file"
    train: str | None = None
    test: str | None = None
    inputs: list[Union[int, str]] | None = None
    targets: list[Union[int, str]] | None = None
    n_train: int | None = Field(None, gt=0)
    n_test: int | None = Field(None, ge=0)
    standardize: Standardize = "none"
    sha256: str | None = Field(None, pattern="^[0-9a-f]{64}$")

    @field_validator("inputs", "targets", mode="before")
    @classmethod
    def _names(cls, value: Any) -> Any:
        return [value] if isinstance(value, (str, int)) else value

    @model_validator(mode="before")
    @classmethod
    def _hash(cls, data: Any) -> Any:
        """Fill in `sha256` from the files (reading them: a bad file raises DataError)."""
        if isinstance(data, dict) and isinstance(data.get("train"), str) and data.get("sha256") is None:
            from bnrank.tasks.file import file_sha256

            names = {key: cls._names(data.get(key)) for key in ("inputs", "targets")}
            rows = {key: n if isinstance(n, int) and not isinstance(n, bool) and n >= 0 else None
                    for key in ("n_train", "n_test") if (n := data.get(key)) is not None}
            data = {**data, "sha256": file_sha256(data["train"], data.get("test"), **names, **rows)}
        return data


class TeacherTask(StrictModel):
    """Bottleneck teacher (bnrank.tasks.teacher): x ~ N(0, I_d_in), y = h(g(x)) with random
    one-hidden-layer ReLU nets g: R^d_in → R^rank and h: R^rank → R^d_out of width `hidden`;
    x and y standardized; bottleneck rank ≤ rank. Default 30 → 3 → 30 (Leaky ResNet paper)."""

    kind: Literal["teacher"] = "teacher"
    d_in: int = Field(30, gt=0)
    rank: int = Field(3, gt=0)
    d_out: int = Field(30, gt=0)
    hidden: int = Field(100, gt=0)
    bias_std: NonNegativeFloat = 0.5
    n_train: int = Field(1000, gt=0)
    n_test: int = Field(500, ge=0)
    noise: NonNegativeFloat = 0.0
    seed: int = 0



class LinearRegressionTask(StrictModel):
    """Linear regression y = A* x + noise with a planted A* (d_out × d_in) of chosen spectrum
    (bnrank.tasks.linear): A* = U diag(singular_values) Vᵀ with random orthonormal U, V.

    Inputs x ~ N(0, I) ("gaussian"), or "whitened": the training inputs rescaled so that
    XᵀX/N = I exactly (needs n_train ≥ d_in), where the loss is ‖A − A*‖_F² + const and deep
    linear dynamics decouple along the singular directions of A*. Noise of std `noise` is added
    to the training targets only (test targets are A* x).
    """

    kind: Literal["linear-regression"] = "linear-regression"
    d_in: int = Field(10, gt=0)
    d_out: int = Field(10, gt=0)
    singular_values: list[PositiveFloat] = Field(default_factory=lambda: [3.0, 2.0, 1.0], min_length=1)
    inputs: Literal["gaussian", "whitened"] = "gaussian"
    n_train: int = Field(200, gt=0)
    n_test: int = Field(200, ge=0)
    noise: NonNegativeFloat = 0.0
    seed: int = 0

    @model_validator(mode="after")
    def _check(self) -> "LinearRegressionTask":
        if len(self.singular_values) > min(self.d_in, self.d_out):
            raise ValueError(f"{len(self.singular_values)} singular values do not fit a {self.d_out} x {self.d_in} matrix")
        if self.inputs == "whitened" and self.n_train < self.d_in:
            raise ValueError(f"whitened inputs need n_train >= d_in ({self.n_train} < {self.d_in})")
        return self


class MatrixCompletionTask(StrictModel):
    """Matrix completion of a planted rank-`rank` matrix M (n_rows × n_cols), M = U Vᵀ / √rank
    with U, V Gaussian, from a random subset of its entries (bnrank.tasks.completion).

    Each entry is observed independently with probability `observed` (the draw is refused,
    naming the row or column, if a row or column has no observed entry); observed values carry
    Gaussian noise of std `noise`. Posed as regression with a mask: input i is the one-hot
    e_i (d_in = n_rows), its target the row M[i] (d_out = n_cols) of which only the observed
    entries count; the test set is the whole noiseless M.
    """

    kind: Literal["matrix-completion"] = "matrix-completion"
    n_rows: int = Field(20, gt=0)
    n_cols: int = Field(20, gt=0)
    rank: int = Field(2, gt=0)
    observed: float = Field(0.5, gt=0, le=1)
    noise: NonNegativeFloat = 0.0
    seed: int = 0

    @model_validator(mode="after")
    def _check(self) -> "MatrixCompletionTask":
        if self.rank > min(self.n_rows, self.n_cols):
            raise ValueError(f"rank ({self.rank}) must be <= min(n_rows, n_cols) = {min(self.n_rows, self.n_cols)}")
        return self


def _task_kind(value: Any) -> Any:
    """The task's `kind`; a mapping without one is a composition task (the default kind)."""
    return value.get("kind", "composition") if isinstance(value, dict) else getattr(value, "kind", None)


TaskConfig = Annotated[
    Union[
        Annotated[CompositionTask, Tag("composition")],
        Annotated[SymmetryTask, Tag("symmetry")],
        Annotated[MaternCompositionTask, Tag("matern-composition")],
        Annotated[FileTask, Tag("file")],
        Annotated[TeacherTask, Tag("teacher")],
        Annotated[LinearRegressionTask, Tag("linear-regression")],
        Annotated[MatrixCompletionTask, Tag("matrix-completion")],
    ],
    Discriminator(
        _task_kind, custom_error_type="task_kind",
        custom_error_message="kind must be 'composition', 'symmetry', 'matern-composition', 'file', 'teacher', 'linear-regression' or 'matrix-completion'",
    ),
]
_TASK_KINDS = {"composition", "symmetry", "matern-composition", "file", "teacher", "linear-regression", "matrix-completion"}


class MlpConfig(StrictModel):
    """Fully connected net (model.kind "mlp"): `depth` weight matrices, hidden width `width`,
    activation ReLU or the identity ("linear": a deep linear network), biases or none.

    Init: W_ℓ ~ N(0, init_scale² · gain / fan_in) with gain 1 for ℓ = 1 (no activation on the
    input), afterwards 2 for ReLU (He) and 1 for linear nets; biases zero.
    """

    kind: Literal["mlp"] = "mlp"
    depth: int = Field(8, gt=0)
    width: int = Field(100, gt=0)
    init_scale: PerMember = 1.0
    activation: Literal["relu", "linear"] = "relu"
    bias: bool = True


class LeakyResNetConfig(StrictModel):
    """Leaky ResNet (model.kind "leaky-resnet", bnrank.models.leaky_resnet): `depth` = L layers
    of width `width` (>= the task's d_in and d_out: inputs are zero-padded into the residual
    stream, outputs read from its first d_out coordinates), effective depth L̃ =
    `effective_depth` >= 0, steps ρ_ℓ: "uniform" (1/L each) or L values > 0 summing to 1
    (within 1e-6, then normalized). Regularizer λ/(2L̃)·Σ ρ_ℓ‖W̃_ℓ‖² (λ/2·Σ ρ_ℓ‖W̃_ℓ‖² at L̃ = 0).
    Init: see EnsembleLeakyResNet.init."""

    kind: Literal["leaky-resnet"] = "leaky-resnet"
    depth: int = Field(20, gt=0)
    width: int = Field(100, gt=0)
    init_scale: PerMember = 1.0
    effective_depth: NonNegativeFloat = 1.0
    steps: Union[Literal["uniform"], list[float]] = "uniform"

    @model_validator(mode="after")
    def _check_steps(self) -> "LeakyResNetConfig":
        if self.steps != "uniform":
            from bnrank.models.leaky_resnet import check_steps

            check_steps(self.steps, self.depth)
        return self


MODEL_CONFIGS: dict[str, type[StrictModel]] = {"mlp": MlpConfig, "leaky-resnet": LeakyResNetConfig}
"""Config class of every model family, by `model.kind` (the families: bnrank.models.registry)."""


def _model_kind(value: Any) -> Any:
    """The model's `kind`; a mapping without one is an MLP (the default kind)."""
    return value.get("kind", "mlp") if isinstance(value, dict) else getattr(value, "kind", None)


def _kinds_text(kinds) -> str:
    quoted = [f"'{k}'" for k in kinds]
    return quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " or " + quoted[-1]


ModelConfig = Annotated[
    Union[tuple(Annotated[cls, Tag(kind)] for kind, cls in MODEL_CONFIGS.items())],  # type: ignore[valid-type]
    Discriminator(
        _model_kind, custom_error_type="model_kind",
        custom_error_message=f"kind must be {_kinds_text(MODEL_CONFIGS)} (the model families bnrank knows)",
    ),
]


class Phase(StrictModel):
    """One training phase: an optimizer run for `steps` steps with a learning-rate schedule.

    `lr` is the peak learning rate; the schedule multiplies it by a factor in [final_lr_factor, 1]
    after `warmup_steps` of linear warm-up. `lam_factor_start` anneals the regularization: λ is
    multiplied by a factor going geometrically from lam_factor_start to 1 over the first
    `lam_anneal_fraction` of the phase (1 = constant λ).

    Curvature-scaled steps (gd/sgd only), resolved once at the start of the phase by
    `bnrank.training.schedules.resolve_phase`: `lr_sharpness: c` sets each member's peak lr to
    c / h_max, h_max = top Hessian eigenvalue of its objective there (power iteration,
    `sharpness_iters` Hessian-vector products); heavy-ball GD is stable for lr·h_max < 2(1 + μ),
    so c = 1 leaves a margin of about 4 at high momentum. `momentum: auto` picks the critically
    damped μ = (1 − √(2λ·lr))² for the slowest curvature 2λ of the penalty (the member with the
    smallest λ·lr decides), clipped to [0.9, 0.9995].

    `optimizer: lbfgs` is the second-order finish (bnrank.training.finish): full-batch L-BFGS in
    float64 with `history` pairs and a per-member line search, for at most `steps` iterations;
    a member stops when its relative gradient is at most `gtol`. It must be the last phase, runs
    at constant λ, and promotes the model's parameters to float64 (they stay float64). It runs on
    every member that has not diverged, also those an earlier phase's stop rule froze. With
    `smoothing: [δ_1, δ_2, ...]` (decreasing widths, ReLU MLPs only) it is a homotopy: stage j
    minimizes the objective with ReLU replaced by its C¹ smoothing of half-width δ_j (quadratic on
    |α| < δ_j), for at most `steps` iterations each, warm-started from the previous stage
    (bnrank.training.finish). `escapes: n` then certifies the finished members up to n times and
    steps every saddle along its certificate's direction, running the stages again on the
    members that moved (bnrank.training.escape).
    """

    optimizer: Literal["adam", "gd", "sgd", "lbfgs"] = "adam"
    steps: int = Field(1000, gt=0)
    lr: PerMember = 1e-3
    schedule: Literal["constant", "cosine", "linear"] = "constant"
    final_lr_factor: float = Field(0.0, ge=0, le=1)
    warmup_steps: int = Field(0, ge=0)
    momentum: Union[Annotated[float, Field(ge=0, lt=1)], Literal["auto"]] = 0.0
    betas: tuple[float, float] = Field((0.9, 0.999), strict=False)
    eps: PositiveFloat = 1e-8
    batch_size: int | None = Field(None, gt=0)
    lam_factor_start: PositiveFloat = 1.0
    lam_anneal_fraction: float = Field(1.0, gt=0, le=1)
    lr_sharpness: PositiveFloat | None = None
    sharpness_iters: int = Field(20, gt=0)
    history: int = Field(20, gt=0)
    gtol: PositiveFloat = 1e-8
    smoothing: list[PositiveFloat] | None = None
    escapes: int = Field(0, ge=0)
    middle_rank: Union[NonNegativeInt, list[NonNegativeInt | None], None] = None

    @model_validator(mode="after")
    def _check(self) -> "Phase":
        if self.optimizer == "sgd" and self.batch_size is None:
            raise ValueError("optimizer 'sgd' needs batch_size (use 'gd' for full batch)")
        if self.optimizer == "gd" and self.batch_size is not None:
            raise ValueError("optimizer 'gd' is full batch: drop batch_size or use 'sgd'")
        if not all(0 <= b < 1 for b in self.betas):
            raise ValueError("betas must lie in [0, 1)")
        if self.optimizer == "lbfgs" and (self.batch_size is not None or self.lr_sharpness is not None
                                          or self.momentum != 0.0 or self.lam_factor_start != 1.0):
            raise ValueError("optimizer 'lbfgs' is full batch at constant λ: drop batch_size, lr_sharpness, momentum and lam_factor_start")
        if self.smoothing is not None and (self.optimizer != "lbfgs" or not self.smoothing
                                           or any(b >= a for a, b in zip(self.smoothing, self.smoothing[1:]))):
            raise ValueError("smoothing is a non-empty decreasing list of widths for optimizer 'lbfgs'")
        if self.middle_rank is not None and self.optimizer == "lbfgs":
            raise ValueError("middle_rank (a rank cap on W_{ceil(L/2)}) is for optimizer 'adam', 'gd' or 'sgd'")
        if self.escapes and self.optimizer != "lbfgs":
            raise ValueError("escapes (leaving saddles after the finish) are for optimizer 'lbfgs'")
        if self.optimizer == "adam" and (self.lr_sharpness is not None or self.momentum == "auto"):
            raise ValueError("lr_sharpness and momentum 'auto' are for optimizer 'gd' or 'sgd'")
        explicit_lr = "lr" in self.model_fields_set and self.lr != Phase.model_fields["lr"].default  # a dump round-trips
        if self.lr_sharpness is not None and explicit_lr:
            raise ValueError("set either lr or lr_sharpness (lr = lr_sharpness / top Hessian eigenvalue)")
        return self


class StopRule(StrictModel):
    """Stop when, at a logging step, every live member's objective changed by less than
    `rel_tol` (relative) over the last `window` steps and its balancedness error is below
    `balance_tol`. Checked only after `min_steps`."""

    window: int = Field(1000, gt=0)
    rel_tol: PositiveFloat = 1e-5
    balance_tol: PositiveFloat = 0.01
    min_steps: int = Field(0, ge=0)


class AdaptiveSteps(StrictModel):
    """Re-balance the layer steps ρ_ℓ of a Leaky ResNet every `every` steps so that the relative
    jumps J_ℓ = ‖A_ℓ − A_{ℓ-1}‖/‖A_ℓ‖ on the training set even out (bnrank.models.leaky_resnet,
    `adapt_steps_`): ρ_ℓ ← ρ_ℓ·(J̄/J_ℓ)^rate, J̄ the geometric mean, then clipped to
    [min_factor/L, max_factor/L] and normalized to sum 1."""

    every: int = Field(100, gt=0)
    rate: float = Field(0.5, gt=0, le=1)
    min_factor: float = Field(0.25, gt=0, le=1)
    max_factor: float = Field(4.0, ge=1, allow_inf_nan=False)


MseReduction = Literal["sum", "mean"]
"""The objective's fit term: see bnrank.training.objective."""


class TrainConfig(StrictModel):
    """`mse_reduction`: the fit term of the objective, "sum" = (1/N)Σ_i‖f(x_i) − y_i‖² (docs/theory.md
    §1) or "mean" = that / d_out (torch.nn.MSELoss's default); see bnrank.training.objective.
    `certify`: after training, compute every member's certificate (bnrank.measure.certificate:
    gradient, balance, Lanczos Hessian extremes, verdict) into the run's summary and a sweep's
    runs table (``cert_*`` columns); it costs up to a few thousand Hessian-vector products per member."""

    lam: PerMemberNonNegative = 1e-3
    mse_reduction: MseReduction = "sum"
    phases: list[Phase] = Field(default_factory=lambda: [Phase()], min_length=1)
    log_every: int = Field(100, gt=0)
    rebalance_every: int = Field(0, ge=0)
    adaptive_steps: AdaptiveSteps | None = None
    stop: StopRule | None = None
    certify: bool = False

    @model_validator(mode="after")
    def _finish_last(self) -> "TrainConfig":
        if any(p.optimizer == "lbfgs" for p in self.phases[:-1]):
            raise ValueError("an 'lbfgs' phase (the float64 finish) must be the last phase")
        return self


class RunConfig(StrictModel):
    seed: int = 0
    seeds: list[int] | None = None
    members: int = Field(1, gt=0)
    device: Literal["cpu", "cuda", "auto"] = "cpu"
    dtype: Literal["float32", "float64"] = "float32"
    task: TaskConfig = Field(default_factory=CompositionTask)
    model: ModelConfig = Field(default_factory=MlpConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)

    @model_validator(mode="after")
    def _per_member_lengths(self) -> "RunConfig":
        fields = {"model.init_scale": self.model.init_scale, "train.lam": self.train.lam}
        fields |= {f"train.phases.{i}.lr": p.lr for i, p in enumerate(self.train.phases)}
        fields |= {f"train.phases.{i}.middle_rank": p.middle_rank for i, p in enumerate(self.train.phases)}
        if self.seeds is not None:
            fields["seeds"] = self.seeds
        for name, value in fields.items():
            if isinstance(value, list) and len(value) != self.members:
                raise ValueError(
                    f"{name} has {len(value)} values but members = {self.members}"
                )
        return self

    @model_validator(mode="after")
    def _batches_fit(self) -> "RunConfig":
        n = getattr(self.task, "n_train", None)
        for i, phase in enumerate(self.train.phases):
            if n is not None and phase.batch_size is not None and phase.batch_size > n:
                raise ValueError(
                    f"train.phases.{i}.batch_size = {phase.batch_size} exceeds task.n_train = {n} "
                    "(minibatches are drawn from the training set)"
                )
        return self

    def member_seeds(self) -> list[int]:
        """Initialisation seed of every member."""
        return list(self.seeds) if self.seeds is not None else [self.seed + i for i in range(self.members)]


def per_member(value: float | list[float], members: int) -> list[float]:
    """Expand a PerMember field to one float per member."""
    return [float(v) for v in value] if isinstance(value, list) else [float(value)] * members


_UNION_TAGS = {"list", "float", "int", "str", "dict", "tuple", "bool", "none"}


def _field_path(loc: tuple) -> str:
    """Dotted path of a pydantic error location, without union-branch and validator tags."""
    tags = _UNION_TAGS | _TASK_KINDS | set(MODEL_CONFIGS)  # pydantic puts a discriminated union's kind in the path
    keep = [str(p) for p in loc if isinstance(p, int) or (p not in tags and "-" not in p and "[" not in p)]
    return ".".join(keep)


_TYPE_ERRORS = {"int_type", "float_type", "bool_type", "string_type", "list_type", "dict_type", "tuple_type", "model_type"}


def _shown(value: Any) -> str:
    """A value for an error message: YAML spelling for scalars, the type name otherwise."""
    if isinstance(value, bool) or value is None:
        return {True: "true", False: "false", None: "null"}[value]
    if isinstance(value, (int, float, str)):
        text = repr(value)
        return text if len(text) <= 40 else text[:37] + "..."
    return f"a {type(value).__name__}"


def _format_validation_error(err: ValidationError) -> str:
    messages: dict[str, str] = {}
    for e in err.errors():
        loc = _field_path(e["loc"])
        msg = "unknown key" if e["type"] == "extra_forbidden" else e["msg"].removeprefix("Value error, ")
        if e["type"] in _TYPE_ERRORS:
            msg += f", got {_shown(e['input'])}"
        messages.setdefault(loc, msg)
    return "; ".join(f"{loc}: {msg}" if loc else msg for loc, msg in messages.items())


def validate(model: type[BaseModel], data: Any, source: str = "config") -> Any:
    """Validate `data` into `model`, turning pydantic's report into one ConfigError line."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level, got {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise ConfigError(f"{source}: {_format_validation_error(err)}") from None


def read_yaml(path: str | Path) -> Any:
    """Parse a YAML file; unreadable or malformed files raise ConfigError."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"cannot read config {path}: {err.strerror or err}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text file (not UTF-8), so not a YAML config") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise ConfigError(f"{path}: not valid YAML{where}") from None


def parse_assignment(item: str) -> tuple[str, Any]:
    """`"key.sub=value"` → ("key.sub", value parsed as YAML); malformed input raises ConfigError."""
    key, sep, raw = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"--set {item!r}: expected key=value")
    try:
        return key, yaml.safe_load(raw)
    except yaml.YAMLError:
        raise ConfigError(f"--set {item!r}: value is not valid YAML") from None


def override(data: dict, assignments: list[str]) -> dict:
    """Apply `key.sub=value` assignments (value parsed as YAML) to a nested dict copy."""
    import copy

    data = copy.deepcopy(data or {})
    for item in assignments:
        key, value = parse_assignment(item)
        node: Any = data
        parts = key.split(".")
        for part in parts[:-1]:
            if isinstance(node, list):
                node = _list_item(node, part, key)
            else:
                node = node.setdefault(part, {})
                if not isinstance(node, (dict, list)):
                    raise ConfigError(f"--set {key}: {part!r} is not a section")
        last = parts[-1]
        if isinstance(node, list):
            idx = _index(node, last, key)
            node[idx] = value
        else:
            node[last] = value
    return data


def _index(node: list, part: str, key: str) -> int:
    if not part.isdigit() or int(part) >= len(node):
        raise ConfigError(f"--set {key}: {part!r} is not an index of a list of {len(node)}")
    return int(part)


def _list_item(node: list, part: str, key: str) -> Any:
    return node[_index(node, part, key)]


def load_run_config(path: str | Path | None = None, assignments: list[str] = ()) -> RunConfig:
    """Read a run config from YAML (or defaults when `path` is None) and apply --set pairs."""
    data = read_yaml(path) if path is not None else {}
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return validate(RunConfig, override(data or {}, list(assignments)), source=str(path or "config"))


NEUTRAL_DEFAULTS: dict[str, Any] = {
    "model.kind": "mlp", "model.activation": "relu", "model.bias": True,
    "train.certify": False, "train.phases.*.history": 20, "train.phases.*.gtol": 1e-8, "train.adaptive_steps": None,
    "train.phases.*.smoothing": None, "train.phases.*.escapes": 0, "task.minor_fraction": None,
    "train.phases.*.middle_rank": None,
}
"""Config fields whose value here gives exactly the network a config without the field gives:
content hashes leave them out at that value (`canonical_dump`), so a config written before the
field existed keeps its sweep cell id. Keys are dotted paths; ``*`` matches every list item."""


def canonical_dump(data: dict) -> dict:
    """A copy of a config dump without the NEUTRAL_DEFAULTS fields that hold their neutral value."""
    import copy

    out = copy.deepcopy(data)
    for path, neutral in NEUTRAL_DEFAULTS.items():
        _drop_neutral(out, path.split("."), neutral)
    return out


def _drop_neutral(node: Any, parts: list[str], neutral: Any) -> None:
    head, rest = parts[0], parts[1:]
    if head == "*":
        for item in node if isinstance(node, list) else []:
            _drop_neutral(item, rest, neutral)
    elif isinstance(node, dict) and head in node:
        if rest:
            _drop_neutral(node[head], rest, neutral)
        elif node[head] == neutral:
            del node[head]


def dump_config(cfg: BaseModel) -> str:
    """The resolved config as YAML (every default written out)."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
