"""GradVac (Wang et al. 2021): gradient vaccine towards moving-average similarity targets."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn

from mtlweight.gradient_level._base import TaskSpecific
from mtlweight.gradient_level._task_state import TaskStateWeighting


class GradVac(TaskStateWeighting):
    r"""GradVac of `Gradient Vaccine: Investigating and Improving Multi-task Optimization
    in Massively Multilingual Models` (Wang, Tsvetkov, Firat and Cao, ICLR 2021).

    For each task :math:`i`, starting from :math:`\tilde g_i = g_i`, and for
    each :math:`j \ne i` in a random order, with
    :math:`\phi_{ij} = \cos(\tilde g_i, g_j)`:

    .. math::

        \text{if } \phi_{ij} < \hat\phi_{ij}:\quad
        \tilde g_i \leftarrow \tilde g_i + \frac{\lVert \tilde g_i \rVert
            \big(\hat\phi_{ij} \sqrt{1 - \phi_{ij}^2}
                 - \phi_{ij} \sqrt{1 - \hat\phi_{ij}^2}\big)}
            {\lVert g_j \rVert \sqrt{1 - \hat\phi_{ij}^2}}\, g_j;
        \qquad
        \hat\phi_{ij} \leftarrow (1 - \beta)\, \hat\phi_{ij} + \beta\, \phi_{ij}

    and :math:`d = \sum_i \tilde g_i = J^\top w`, where:

    - :math:`g_j = \nabla_\theta L_j`, the rows of :math:`J`;
    - :math:`\hat\phi_{ij}` is the target similarity, an exponential moving
      average (rate :math:`\beta`) of the similarities met, starting at 0:
      the first step only removes conflicts, as PCGrad does (to orthogonality);
    - the correction turns :math:`\tilde g_i` in the plane of
      :math:`(\tilde g_i, g_j)` until its cosine with :math:`g_j` is
      :math:`\hat\phi_{ij}`; pairs already at or above their target are left alone.

    Everything is computed from the Gram matrix (:math:`\tilde g_i = \sum_k C_{ik} g_k`),
    and :math:`w = \mathbf{1}^\top C`. The targets :math:`\hat\phi` (a
    :math:`T \times T` array in the order of :attr:`tasks`) and the generator of
    the orders are part of ``state_dict``.

    Parameters
    ----------
    shared
        The shared parameters: a module or an iterable of tensors.
    beta
        The rate :math:`\beta \in [0, 1]` of the moving average (LibMTL's and
        TorchJD's default 0.5).
    seed
        Seed of the generator that draws the orders (``torch.randperm`` per task,
        as TorchJD with the global generator).
    task_specific
        ``"weighted"`` (default) or ``"plain"`` (LibMTL: heads get the gradient
        of :math:`\sum_t L_t`); see :class:`~mtlweight.gradient_level.GradientMethod`.
    **kwargs
        Passed to :class:`~mtlweight.Weighting`.

    Raises
    ------
    ValueError
        With ``beta`` outside :math:`[0, 1]`.

    .. note::
        The paper applies the vaccine per layer or per parameter block in some
        experiments; this class treats the shared parameters as one vector
        (LibMTL's default ``whole_model``). A pair with a zero gradient has no
        cosine: it is skipped and its target kept. A target
        :math:`\hat\phi_{ij} = 1` cannot be reached by a finite correction: it is
        skipped too. TorchJD adds :math:`10^{-8}` to the denominators; this
        class does not (they agree to about :math:`10^{-8}` relative).

    Examples
    --------
    >>> import torch, mtlweight as mw
    >>> theta = torch.nn.Parameter(torch.zeros(2))
    >>> losses = [theta @ torch.tensor([1.0, 0.0]), theta @ torch.tensor([-1.0, 1.0])]
    >>> gradvac = mw.GradVac(shared=[theta])
    >>> {k: round(v, 6) for k, v in gradvac.backward(losses).items()}  # first step: PCGrad
    {'0': 2.0, '1': 1.5}
    """

    def __init__(
        self,
        shared: nn.Module | Iterable[Tensor] | None = None,
        *,
        beta: float = 0.5,
        seed: int = 0,
        task_specific: TaskSpecific | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(shared, task_specific=task_specific, **kwargs)
        if not 0.0 <= beta <= 1.0:
            raise ValueError(f"GradVac: beta must be in [0, 1]; found {beta}")
        self.beta = float(beta)
        self.seed = int(seed)
        self.generator = torch.Generator()
        self.generator.manual_seed(self.seed)
        self.targets: Tensor | None = None  # phi-hat, (T, T) float64, in the order of tasks

    def gram_weights(self, gram: Tensor, values: Tensor) -> Tensor:
        g = self.order.to_state(gram, square=True).tolist()
        count = len(g)
        if self.targets is None or self.targets.shape != (count, count):
            self.targets = torch.zeros(count, count, dtype=torch.float64)
        targets = self.targets.tolist()
        coefficients = [[float(i == k) for k in range(count)] for i in range(count)]
        for i in range(count):
            row = coefficients[i]
            dots = [sum(row[k] * g[k][j] for k in range(count)) for j in range(count)]  # C_i G
            others = [j for j in range(count) if j != i]
            for p in torch.randperm(len(others), generator=self.generator).tolist():
                j = others[p]
                norm_i = math.sqrt(max(sum(r * d for r, d in zip(row, dots, strict=True)), 0.0))
                norm_j = math.sqrt(max(g[j][j], 0.0))
                if norm_i == 0.0 or norm_j == 0.0:
                    continue
                phi = min(max(dots[j] / (norm_i * norm_j), -1.0), 1.0)
                target = targets[i][j]
                room = math.sqrt(max(1.0 - target * target, 0.0))
                if phi < target and room > 0.0:
                    step = norm_i * (target * math.sqrt(1.0 - phi * phi) - phi * room)
                    step /= norm_j * room
                    row[j] += step
                    dots = [d + step * g[j][k] for k, d in enumerate(dots)]
                targets[i][j] = (1.0 - self.beta) * target + self.beta * phi
        self.targets = torch.tensor(targets, dtype=torch.float64)
        weights = torch.tensor(coefficients, dtype=torch.float64).sum(dim=0)
        return self.order.to_call(weights)

    def get_extra_state(self) -> dict[str, Any]:
        return {
            **super().get_extra_state(),
            "targets": self.targets,
            "generator": self.generator.get_state(),
        }

    def set_extra_state(self, state: Any) -> None:
        super().set_extra_state(state)
        targets = state.get("targets")
        self.targets = None if targets is None else torch.as_tensor(targets, dtype=torch.float64)
        if "generator" in state:
            self.generator.set_state(state["generator"])

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, beta={self.beta}, seed={self.seed}"
