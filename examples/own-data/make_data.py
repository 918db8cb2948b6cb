"""Write a small regression data set to examples/own-data/: train.csv and test.csv.

Ten inputs x ~ N(0, I); eight targets that depend on x only through two directions
u = (x_1 + x_2)/√2 and v = x_3, so the target function has bottleneck rank 2:
    y_j = a_j·u + b_j·relu(v) + c_j·|u − v|,  j = 1..8,
with fixed random coefficients, plus a little noise. No downloads; deterministic (seed 0).

    python examples/own-data/make_data.py
"""

from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).parent


def make(n: int, rng: np.random.Generator, coef: np.ndarray) -> pd.DataFrame:
    x = rng.normal(size=(n, 10))
    u, v = (x[:, 0] + x[:, 1]) / np.sqrt(2), x[:, 2]
    features = np.stack([u, np.maximum(v, 0), np.abs(u - v)], axis=1)
    y = features @ coef + 0.01 * rng.normal(size=(n, coef.shape[1]))
    columns = {f"x{i + 1}": x[:, i] for i in range(10)} | {f"y{j + 1}": y[:, j] for j in range(coef.shape[1])}
    return pd.DataFrame(columns)


def main() -> None:
    rng = np.random.default_rng(0)
    coef = rng.normal(size=(3, 8))
    make(400, rng, coef).to_csv(HERE / "train.csv", index=False, float_format="%.6g")
    make(200, rng, coef).to_csv(HERE / "test.csv", index=False, float_format="%.6g")
    print(f"wrote {HERE / 'train.csv'} (400 rows) and {HERE / 'test.csv'} (200 rows): inputs x1..x10, targets y1..y8")


if __name__ == "__main__":
    main()
