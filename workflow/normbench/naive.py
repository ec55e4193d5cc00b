"""The baseline ``normbench bench`` compares against: one process per run, the
way public reproductions train -- the dataset loaded afresh, a DataLoader over a
TensorDataset, and a host synchronisation (``.item()``) every step.  Same model,
same number of steps, same evaluation points as our loop.

Usage: python -m normbench.naive MODEL_LAYERS_JSON LR SEED BATCH STEPS EVAL_EVERY
"""

from __future__ import annotations

import json
import sys


def main(argv: list[str]) -> None:
    import torch
    import torch.nn.functional as F
    from sklearn.datasets import load_digits
    from torch.utils.data import DataLoader, TensorDataset

    from normbench.models import build_network
    from normbench.settings import RunConfig

    layers, lr, seed, bs, steps, eval_every = (json.loads(argv[0]), float(argv[1]), int(argv[2]), int(argv[3]),
                                               int(argv[4]), int(argv[5]))
    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(d.target)
    x = (x - x.mean()) / x.std()
    train, test = TensorDataset(x[360:], y[360:]), TensorDataset(x[:360], y[:360])
    model = build_network(RunConfig.from_dict({"model": "vgg", "model_options": {"layers": layers}, "norm": "bn",
                                               "seed": seed}), (1, 8, 8), 10)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    loader = DataLoader(train, batch_size=bs, shuffle=True, drop_last=True)
    history, step = [], 0
    while step < steps:
        for xb, yb in loader:
            model.train()
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            history.append(loss.item())  # a host sync every step
            step += 1
            if step % eval_every == 0 or step == steps:
                model.eval()
                with torch.no_grad():
                    correct = sum((model(a).argmax(1) == b).sum().item() for a, b in DataLoader(test, batch_size=256))
                history.append(correct / len(test))
            if step == steps:
                break
    print(json.dumps({"final_loss": history[-2], "final_acc": history[-1]}))


if __name__ == "__main__":
    main(sys.argv[1:])
