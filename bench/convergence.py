"""Convergence to the regularized minimum: the default recipe vs plain Adam vs an L-BFGS finish.

For each depth L and λ: an ensemble of E members on the rank-2 composition task trained with
`bnrank.training.recipe` (Adam with λ annealed from above → heavy-ball GD at lr = c / top Hessian
eigenvalue → polish with the stop rule), then plain Adam (He init, constant λ, lr 3e-3·min(1, 8/L)
cosine to 0) for the same number of steps. Reported per member: steps and seconds, whether the
stop rule fired, the first step at which the stop rule holds for relative tolerances 1e-4 and
1e-5 (evaluated on the logged history exactly as the trainer does, from the polish phase on),
final objective, MSE, ‖θ‖², balancedness error, middle-layer rank (# singular values of
W_⌈L/2⌉ above 0.1) and its top 5 singular values. With `--finish-steps K`, a third run per
setting: the recipe's Adam phase, then the float64 L-BFGS finish (`optimizer: lbfgs`, at most K
iterations, bnrank.training.finish). With `--certify`, every member of the recipe and finish runs
gets its certificate (bnrank.measure.certificate: verdict, relative gradient, Hessian extremes,
kinks) and the seconds it took, at every tolerance of `--kink-tols`. With `--smooth-finish K`,
the recipe run is continued by the smoothed L-BFGS finish (widths SMOOTHING, at most K iterations
each; bnrank.training.finish; `--escapes n`: then up to n rounds of leaving certified saddles,
bnrank.training.escape) and reported as "recipe+smoothed" (steps and seconds include the
recipe's).

    .venv/bin/python bench/convergence.py                       # L 8, 16 × λ 1e-3, 1e-2, E = 2
    .venv/bin/python bench/convergence.py --depths 8 --lams 0.001 --no-baseline
    .venv/bin/python bench/convergence.py --width 100 --n-train 500   # the task's default sizes
    .venv/bin/python bench/convergence.py --lams 0.001 --no-baseline --polish-steps 150000  # a longer cap
    .venv/bin/python bench/convergence.py --depths 8 --no-baseline --finish-steps 5000 --certify
    .venv/bin/python bench/convergence.py --no-baseline --smooth-finish 3000 --certify --kink-tols 1e-9 1e-6

Run it alone (one process, one thread: the machine is shared); prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import time

from types import SimpleNamespace

import torch

import bnrank
from bnrank.config import TrainConfig
from bnrank.measure.certificate import certify
from bnrank.training.recipe import apply_recipe, default_train_config, middle_layer

SMOOTHING = [1e-2, 1e-3, 1e-4, 1e-5, 1e-6]
"""Widths of the smoothed finish's homotopy (`--smooth-finish`)."""


def base_config(depth: int, lam: float, args) -> dict:
    return {
        "seed": args.seed, "members": args.members,
        "task": {"kind": "composition", "rank": 2, "n_train": args.n_train, "n_test": 0,
                 "hidden": 100, "g_scale": args.g_scale},
        "model": {"depth": depth, "width": args.width},
        "train": {"lam": lam, "log_every": args.log_every},
    }


def first_hit(metrics, rel_tol: float, window: int, balance_tol: float, from_step: int) -> list[int | None]:
    """Per member: the first logged step ≥ from_step + window at which the objective changed by
    less than rel_tol (relative) since the last logged step ≤ step − window and the balance
    error is below balance_tol (the trainer's stop rule, evaluated per member)."""
    out = []
    for _, g in metrics.sort_values("step").groupby("member"):
        steps, obj, bal = g.step.tolist(), g.objective.tolist(), g.balance_error.tolist()
        hit = None
        for i, s in enumerate(steps):
            if s < from_step + window:
                continue
            past = [j for j in range(i) if steps[j] <= s - window]
            if not past:
                continue
            j = past[-1]
            if abs(obj[i] - obj[j]) / max(abs(obj[i]), 1e-30) < rel_tol and bal[i] < balance_tol:
                hit = s
                break
        out.append(hit)
    return out


def middle_spectrum(model, depth: int) -> torch.Tensor:
    w = model.weights[middle_layer(depth) - 1].detach().double()
    return torch.linalg.svdvals(w)  # (E, min(out, in)), descending


def describe(run, depth: int, kind: str, from_step: int | None, window: int, balance_tol: float) -> list[dict]:
    m = run.metrics
    last = m[m.step == m.step.max()].sort_values("member")
    sv = middle_spectrum(run.model, depth)
    hits = {tol: first_hit(m, tol, window, balance_tol, from_step) if from_step is not None else [None] * run.model.members
            for tol in (1e-4, 1e-5)}
    final_rel = []
    for _, g in m.sort_values("step").groupby("member"):
        steps, obj = g.step.tolist(), g.objective.tolist()
        past = [j for j, s in enumerate(steps) if s <= steps[-1] - window]
        final_rel.append(abs(obj[-1] - obj[past[-1]]) / abs(obj[-1]) if past else None)
    rows = []
    for e, r in enumerate(last.itertuples()):
        rows.append({
            "kind": kind, "depth": depth, "lam": r.lam, "member": e, "steps": int(run.summary["steps"]),
            "seconds": round(run.summary["wall_time_s"], 1), "stopped": run.summary["stopped_early"],
            "hit_1e-4": hits[1e-4][e], "hit_1e-5": hits[1e-5][e], "final_rel_change": final_rel[e],
            "objective": r.objective, "mse": r.mse, "param_norm_sq": r.param_norm_sq, "balance": r.balance_error,
            "rank": int((sv[e] > 0.1).sum()), "top_sv": [round(v, 3) for v in sv[e, :5].tolist()],
            "diverged": bool(r.diverged),
        })
    return rows


def add_certificates(rows: list[dict], run, lam: float, kink_tols: list[float]) -> list[dict]:
    """Each member's certificate at the run's final parameters at every kink tolerance: one row per
    (member, tolerance), its row's columns plus the certificate's (with its seconds)."""
    out = []
    for tol in kink_tols:
        start = time.perf_counter()
        certs = certify(run.model, run.task.x_train, run.task.y_train, lam, run.config.train.mse_reduction, kink_tol=tol)
        seconds = (time.perf_counter() - start) / len(certs)
        for row, c in zip(rows, certs):
            out.append(row | {"kink_tol": tol, "verdict": c.verdict, "rel_grad": c.rel_grad, "rel_subgrad": c.rel_subgrad,
                              "h_min": c.hessian_min, "h_max": c.hessian_max, "face_min": c.face_min, "kinks": c.kinks,
                              "sharp": c.sharp_kinks, "one_sided": c.one_sided_kinks, "concave": c.concave_kinks, "collapsed": c.collapsed, "escape": c.escape_ratio,
                              "cert_s": round(seconds, 1), "reason": c.reason})
    return out


def smooth_finish(run, depth: int, lam: float, args):
    """The recipe run continued by the smoothed L-BFGS finish (SMOOTHING widths, at most
    `args.smooth_finish` iterations each), on a copy of its model; its steps and seconds are the
    recipe's plus the finish's."""
    cfg = {"lam": lam, "log_every": args.log_every, "mse_reduction": run.config.train.mse_reduction,
           "phases": [{"optimizer": "lbfgs", "steps": args.smooth_finish, "smoothing": SMOOTHING, "gtol": 1e-10,
                                    "escapes": args.escapes}]}
    model = run.model.select(list(range(run.model.members)))
    res = bnrank.fit(model, run.task.x_train, run.task.y_train, TrainConfig(**cfg), progress=False)
    metrics = res.metrics.assign(step=res.metrics.step + int(run.summary["steps"]))
    summary = run.summary | {"steps": int(run.summary["steps"]) + res.steps,
                             "wall_time_s": run.summary["wall_time_s"] + res.wall_time, "finish_s": res.wall_time}
    return SimpleNamespace(model=model, metrics=metrics, summary=summary, task=run.task, config=run.config)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--depths", type=int, nargs="+", default=[8, 16])
    ap.add_argument("--lams", type=float, nargs="+", default=[1e-3, 1e-2])
    ap.add_argument("--members", type=int, default=2)
    ap.add_argument("--width", type=int, default=50)
    ap.add_argument("--n-train", type=int, default=200)
    ap.add_argument("--g-scale", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--log-every", type=int, default=200)
    ap.add_argument("--rel-tol", type=float, default=None, help="stop rule tolerance (default: the recipe's)")
    ap.add_argument("--polish-steps", type=int, default=None, help="cap of the polish phase (default: the recipe's)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-baseline", action="store_true")
    ap.add_argument("--finish-steps", type=int, default=None, help="also run Adam → L-BFGS finish with this cap")
    ap.add_argument("--certify", action="store_true", help="certify every member of the recipe and finish runs")
    ap.add_argument("--certify-kinds", nargs="+", default=["recipe", "recipe+smoothed", "adam+lbfgs"],
                    help="the runs --certify certifies")
    ap.add_argument("--kink-tols", type=float, nargs="+", default=[1e-9], help="kink tolerances of the certificates")
    ap.add_argument("--smooth-finish", type=int, default=None,
                    help="also continue the recipe by the smoothed L-BFGS finish, this many iterations per width")
    ap.add_argument("--escapes", type=int, default=0,
                    help="rounds of leaving certified saddles after the smoothed finish (bnrank.training.escape)")
    ap.add_argument("--json", default=None, help="also write the rows to this file")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    def certifies(kind: str) -> bool:
        return args.certify and kind in args.certify_kinds

    rows = []
    for depth in args.depths:
        for lam in args.lams:
            kw = {k: v for k, v in (("rel_tol", args.rel_tol), ("polish_steps", args.polish_steps)) if v is not None}
            cfg = apply_recipe(base_config(depth, lam, args), **kw)
            tc = default_train_config(depth, lam, **kw)
            polish_from = tc.phases[0].steps + tc.phases[1].steps
            run = bnrank.train(cfg, progress=False)
            new = describe(run, depth, "recipe", polish_from, tc.stop.window, tc.stop.balance_tol)
            new = add_certificates(new, run, lam, args.kink_tols) if certifies("recipe") else new
            rows += new
            print("\n".join(json.dumps(r) for r in new), flush=True)
            if args.smooth_finish:
                srun = smooth_finish(run, depth, lam, args)
                new = describe(srun, depth, "recipe+smoothed", None, tc.stop.window, tc.stop.balance_tol)
                new = add_certificates(new, srun, lam, args.kink_tols) if certifies("recipe+smoothed") else new
                rows += new
                print("\n".join(json.dumps(r) for r in new), flush=True)
            if args.finish_steps:
                fcfg = apply_recipe(base_config(depth, lam, args), **kw)
                fcfg["train"]["phases"] = fcfg["train"]["phases"][:1] + [{"optimizer": "lbfgs", "steps": args.finish_steps}]
                fcfg["train"].pop("stop", None)
                frun = bnrank.train(fcfg, progress=False)
                new = describe(frun, depth, "adam+lbfgs", None, tc.stop.window, tc.stop.balance_tol)
                new = add_certificates(new, frun, lam, args.kink_tols) if certifies("adam+lbfgs") else new
                rows += new
                print("\n".join(json.dumps(r) for r in new), flush=True)
            if not args.no_baseline:
                steps = int(run.summary["steps"])
                base = base_config(depth, lam, args)
                base["train"]["phases"] = [{"optimizer": "adam", "steps": steps, "lr": 3e-3 * min(1.0, 8 / depth),
                                            "schedule": "cosine"}]
                brun = bnrank.train(base, progress=False)
                rows += describe(brun, depth, "adam", None, tc.stop.window, tc.stop.balance_tol)
                print(json.dumps(rows[-1]), flush=True)

    print()
    print(f"load average at the end: {', '.join(f'{v:.1f}' for v in os.getloadavg())}")
    print("| run | L | λ | member | steps | s | stop rule fired | rule 1e-4 at | rule 1e-5 at | last rel. change / window | objective | MSE | ‖θ‖² | balance | mid rank | top 5 s.v. of W_mid |")
    print("|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in rows:
        fmt = lambda v: "—" if v is None else str(v)  # noqa: E731
        print(f"| {r['kind']} | {r['depth']} | {r['lam']:g} | {r['member']} | {r['steps']} | {r['seconds']} | "
              f"{'yes' if r['stopped'] else 'no'} | {fmt(r['hit_1e-4'])} | {fmt(r['hit_1e-5'])} | "
              f"{'—' if r['final_rel_change'] is None else format(r['final_rel_change'], '.1e')} | {r['objective']:.5f} | "
              f"{r['mse']:.4f} | {r['param_norm_sq']:.2f} | {100 * r['balance']:.2f}% | {r['rank']} | "
              f"{', '.join(f'{v:.2f}' for v in r['top_sv'])} |")
    if args.certify:
        print()
        print("| run | L | λ | member | steps | s | objective | kink tol | verdict | rel. gradient | rel. subgradient | "
              "kinks (sharp, one-sided, concave) | collapsed (escape gain / 2λ) | h_min | face min | h_max | certificate s |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---|---|---:|---:|---:|---:|")
        for r in rows:
            if "verdict" in r:
                print(f"| {r['kind']} | {r['depth']} | {r['lam']:g} | {r['member']} | {r['steps']} | {r['seconds']} | "
                      f"{r['objective']:.6f} | {r['kink_tol']:g} | {r['verdict']} | {r['rel_grad']:.1e} | {r['rel_subgrad']:.1e} | "
                      f"{r['kinks']} ({r['sharp']}, {r['one_sided']}, {r['concave']}) | {r['collapsed']} ({r['escape']:.2f}) | "
                      f"{r['h_min']:.2e} | {r['face_min']:.2e} | {r['h_max']:.3g} | {r['cert_s']} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
