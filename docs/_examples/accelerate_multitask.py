"""Every mtlweight strategy with Accelerate: ``accelerator.backward(weighting(losses))``."""

import torch
from accelerate import Accelerator
from torch import nn

import mtlweight as mw

TASKS = ("a", "b", "c")


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(8, 16), nn.Tanh())
        self.heads = nn.ModuleDict({t: nn.Linear(16, 1) for t in TASKS})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.trunk(x)
        return {t: head(features).squeeze(1) for t, head in self.heads.items()}


def main() -> dict[str, float]:
    torch.manual_seed(0)
    accelerator = Accelerator(cpu=True)
    model = Net()
    weighting = mw.get("upgrad", shared=model.trunk)  # DDP's wrapper keeps these modules
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    x = torch.randn(64, 8)
    y = torch.stack([x[:, 0], 5 * x[:, 1], x[:, 2].sin()], dim=1)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    for xb, yb in loader:
        outputs = model(xb)  # through the (DDP) wrapper
        losses = {t: nn.functional.mse_loss(outputs[t], yb[:, i]) for i, t in enumerate(TASKS)}
        optimizer.zero_grad()
        accelerator.backward(weighting(losses))  # or weighting.backward(losses,
        optimizer.step()                         #    backward_fn=accelerator.backward)
    return weighting.weights


if __name__ == "__main__":
    print(main())
