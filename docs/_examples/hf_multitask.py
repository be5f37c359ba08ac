"""Every mtlweight strategy in the Hugging Face ``Trainer``: return it from ``compute_loss``."""

import tempfile

import torch
from torch import nn
from transformers import Trainer, TrainingArguments

import mtlweight as mw

TASKS = ("sentiment", "topic")


class Model(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(8, 16), nn.Tanh())
        self.heads = nn.ModuleDict({t: nn.Linear(16, 1) for t in TASKS})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.trunk(x)
        return {t: head(features).squeeze(1) for t, head in self.heads.items()}


class MultiTaskTrainer(Trainer):
    def __init__(self, *args, weighting: mw.Weighting, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.weighting = weighting

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        outputs = model(inputs["x"])
        losses = {t: nn.functional.mse_loss(outputs[t], inputs["y"][:, i])
                  for i, t in enumerate(TASKS)}
        total = self.weighting(losses)  # the Trainer backpropagates the method's update
        return (total, outputs) if return_outputs else total


class Data(torch.utils.data.Dataset):
    def __init__(self) -> None:
        self.x = torch.randn(64, 8, generator=torch.Generator().manual_seed(0))
        self.y = torch.stack([self.x[:, 0], 5 * self.x[:, 1]], dim=1)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"x": self.x[i], "y": self.y[i]}


def main() -> dict[str, float]:
    torch.manual_seed(0)
    model = Model()
    weighting = mw.get("mgda", shared=model.trunk, tasks=list(TASKS))
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(out, per_device_train_batch_size=16, num_train_epochs=2,
                                 use_cpu=True, report_to=[], save_strategy="no",
                                 remove_unused_columns=False, disable_tqdm=True)
        MultiTaskTrainer(model=model, args=args, train_dataset=Data(),
                         weighting=weighting).train()
    assert weighting.step == 8
    return weighting.weights


if __name__ == "__main__":
    print(main())
