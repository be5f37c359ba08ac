"""Every mtlweight strategy in Lightning: return ``weighting(losses)`` from ``training_step``.

The weighting is a submodule of the LightningModule, so its state is checkpointed,
its parameters (uncertainty weighting, IMTL-L) are trained with the model's, and
``.eval()`` in the validation loop makes its calls pure (they log, they change nothing).
"""

import lightning.pytorch as pl
import torch
from torch import nn

import mtlweight as mw

TASKS = ("depth", "normals")


class MultiTask(pl.LightningModule):
    def __init__(self, strategy: str = "pcgrad") -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(8, 16), nn.Tanh())
        self.heads = nn.ModuleDict({t: nn.Linear(16, 1) for t in TASKS})
        # any name of mw.available(): shared= and tasks= go where they are needed
        self.weighting = mw.get(strategy, shared=self.trunk, tasks=list(TASKS))

    def losses(self, batch: tuple[torch.Tensor, torch.Tensor]) -> dict[str, torch.Tensor]:
        x, y = batch
        features = self.trunk(x)
        return {t: nn.functional.mse_loss(self.heads[t](features).squeeze(1), y[:, i])
                for i, t in enumerate(TASKS)}

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], index: int) -> torch.Tensor:
        total = self.weighting(self.losses(batch))  # backpropagates the method's update
        self.log_dict({f"w_{t}": w for t, w in self.weighting.weights.items()})
        return total

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], index: int) -> None:
        self.log("val_total", self.weighting(self.losses(batch)))  # pure: no step, no state

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=1e-2)  # includes the weighting's


def main() -> dict[str, float]:
    torch.manual_seed(0)
    x = torch.randn(64, 8)
    data = torch.utils.data.TensorDataset(x, torch.stack([x[:, 0], 5 * x[:, 1]], dim=1))
    loader = torch.utils.data.DataLoader(data, batch_size=16)
    module = MultiTask("pcgrad")
    trainer = pl.Trainer(max_epochs=2, accelerator="cpu", logger=False,
                         enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False)
    trainer.fit(module, loader, loader)
    assert module.weighting.step == 8  # 4 batches x 2 epochs: validation moved nothing
    return module.weighting.weights


if __name__ == "__main__":
    print(main())
