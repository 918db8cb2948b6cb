"""Measure a network written in plain PyTorch with bnrank.analyze (no bnrank training).

A custom nn.Module MLP is trained on examples/own-data/train.csv with Adam and weight decay,
its state dict saved to examples/own-data/model.pt, and analyzed two ways: the module itself
(its Linear layers are found by tracing and named by their module paths) and the saved state
dict, which `bnrank analyze examples/own-data/model.pt --data examples/own-data/train.csv
--targets y1,...,y8` reads the same way (make_data.py writes the data).

    python examples/own-data/own_model.py
"""

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import bnrank
from bnrank.tasks.file import read_data_file

HERE = Path(__file__).parent
TARGETS = [f"y{j}" for j in range(1, 9)]


class MyNet(nn.Module):
    def __init__(self, d_in: int, width: int, d_out: int, depth: int = 5):
        super().__init__()
        self.body = nn.ModuleList(nn.Linear(d_in if i == 0 else width, width) for i in range(depth - 1))
        self.head = nn.Linear(width, d_out)

    def forward(self, x):
        for layer in self.body:
            x = F.relu(layer(x))
        return self.head(x)


def main() -> None:
    torch.set_num_threads(1)  # a network this small trains fastest on one thread
    x, y = (torch.from_numpy(a).float() for a in read_data_file(HERE / "train.csv", targets=TARGETS))
    torch.manual_seed(0)
    net = MyNet(x.shape[1], 40, y.shape[1])
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=0.05)
    for _ in range(800):
        opt.zero_grad()
        loss = F.mse_loss(net(x), y)
        loss.backward()
        opt.step()
    torch.save(net.state_dict(), HERE / "model.pt")
    result = bnrank.analyze(net, x, Y=y)
    print(f"training mse {loss.item():.4f}; the analysed layers:")
    print(result.modules.to_string(index=False))
    print(result.layers[["layer", "fan_in", "fan_out", "rank", "act_rank", "nonlin_impact"]].to_string(index=False))
    print("Jacobian rank at the training points:", result.points.jac_rank.value_counts().to_dict())
    print(f"wrote {HERE / 'model.pt'}; measure it from the command line with")
    print(f"  bnrank analyze {HERE / 'model.pt'} --data {HERE / 'train.csv'} --targets {','.join(TARGETS)}")


if __name__ == "__main__":
    main()
