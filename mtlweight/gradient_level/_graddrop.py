"""GradDrop (Chen et al. 2020): gradient sign dropout."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from mtlweight._base import Seeded
from mtlweight._engine.plans import Combination
from mtlweight.gradient_level._base import GradientMethod, TaskSpecific


def graddrop_direction(jac: Tensor, uniform: Tensor, leak: Tensor) -> Tensor:
    r"""GradDrop's update for one draw ``uniform`` of :math:`U`, shape ``(P,)``.

    .. math::

        \mathcal{P} = \tfrac12 \Big(1 + \frac{\sum_i g_i}{\sum_i |g_i|}\Big), \quad
        M_i = [\mathcal{P} > U]\,[g_i > 0] + [\mathcal{P} < U]\,[g_i < 0], \quad
        d = \sum_i \big(\ell_i + (1 - \ell_i) M_i\big) \odot g_i

    coordinate by coordinate (a coordinate where every :math:`g_i` is zero
    gets :math:`d = 0`). ``jac`` is ``(T, P)``, ``leak`` ``(T,)``.

    Examples
    --------
    >>> import torch
    >>> jac = torch.tensor([[1.0, 2.0], [-3.0, 1.0]])  # purities 1/4 and 1
    >>> graddrop_direction(jac, torch.tensor([0.5, 0.5]), torch.zeros(2))  # keeps -3 and 2 + 1
    tensor([-3.,  3.])
    >>> graddrop_direction(jac, torch.tensor([0.1, 0.5]), torch.zeros(2))  # keeps 1 and 2 + 1
    tensor([1., 3.])
    """
    # Row by row, so that the temporaries are (P,) and not (T, P): at millions of shared
    # parameters they decided GradDrop's time and memory. M_i g_i is written as
    # max(g_i, 0) [P > U] + min(g_i, 0) [P < U]: clamps and fused multiply-adds, which
    # are several times faster than torch.where on the CPU.
    size = torch.zeros_like(jac[0])
    total = torch.zeros_like(jac[0])
    for g in jac:
        size.add_(g.abs())
        total.add_(g)
    # where every g_i is 0 the total is 0 too: any positive size gives purity 1/2 there
    purity = total.div_(size.clamp_(min=torch.finfo(jac.dtype).tiny)).add_(1.0).mul_(0.5)
    del size
    up = (purity > uniform).to(jac.dtype)  # keep the positive entries here
    down = (purity < uniform).to(jac.dtype)  # and the negative ones there
    del purity
    d = torch.zeros_like(jac[0])
    for g, ell in zip(jac, leak.tolist(), strict=True):
        if ell > 0.0:
            d.add_(g, alpha=ell)
        if ell < 1.0:
            d.addcmul_(g.clamp(min=0.0), up, value=1.0 - ell)
            d.addcmul_(g.clamp(max=0.0), down, value=1.0 - ell)
    return d


class GradDrop(Seeded, GradientMethod):
    r"""GradDrop of `Just Pick a Sign: Optimizing Deep Multitask Models with Gradient Sign
    Dropout` (Chen, Ngiam, Huang, Luong, Kretzschmar, Chai and Anguelov, NeurIPS 2020).

    .. math::

        \mathcal{P} = \tfrac12 \Big(1 + \frac{\sum_i g_i}{\sum_i |g_i|}\Big), \qquad
        d = \sum_{i=1}^{T} \big(\ell_i + (1 - \ell_i) M_i\big) \odot g_i, \qquad
        M_i = [\mathcal{P} > U]\,[g_i > 0] + [\mathcal{P} < U]\,[g_i < 0]

    where:

    - :math:`g_i = \nabla L_i`, the gradient of task :math:`i` with respect to
      the shared inputs; every operation is coordinate by coordinate;
    - :math:`\mathcal{P} \in [0, 1]` is the positive sign purity of each coordinate;
    - :math:`U \sim \mathcal{U}[0, 1]` is drawn afresh for every coordinate at every step;
    - :math:`M_i` keeps, in each coordinate, the gradients of one sign only:
      the positive ones with probability :math:`\mathcal{P}`, else the negative ones;
    - :math:`\ell_i \in [0, 1]` is the ``leak`` of task :math:`i`: the part of
      :math:`g_i` that always passes (:math:`\ell = 1` everywhere gives :math:`\sum_i g_i`).

    With no leak every coordinate of :math:`d` is either the sum of the
    positive or the sum of the negative components, so the tasks never fight
    in one coordinate; on average over :math:`U`, :math:`d = \sum_i g_i`.
    :math:`d` is not a combination of the task gradients: only
    ``graddrop.backward(losses)`` applies it; the weights are the
    least-squares coefficients of :math:`d` (for logging).

    Parameters
    ----------
    shared
        The shared parameters: a module or an iterable of tensors.
    leak
        :math:`\ell`, one number for every task or one per task (in the order
        of the losses); 0 (default) is the paper's pure GradDrop.
    seed
        Seed of the generator that draws :math:`U` (on the CPU, whatever the
        device); its state is part of ``state_dict``.
    task_specific
        ``"plain"`` (default: the other parameters get the plain gradient of
        :math:`\sum_t L_t`, as in the paper, where GradDrop is a layer) or
        ``"weighted"``; see :class:`~mtlweight.gradient_level.GradientMethod`.
    **kwargs
        Passed to :class:`~mtlweight.Weighting`.

    .. note::
        We implement the combination steps (lines 10-15 of the paper's
        Algorithm 1, as TorchJD does) on the rows of :math:`J`. The paper's
        batch-separated variant, which first multiplies the gradients of a
        layer's activations by their sign and sums them over the batch (as
        LibMTL does), and its purity transform :math:`f` are not implemented.

    Under :mod:`torch.distributed` with shared parameters, :math:`J` is
    averaged across processes and every process draws the same :math:`U` (same
    ``seed``): the update equals that of one process on the combined batch.
    With ``representation=`` each process masks its own samples with the
    same draws, so the masks agree in distribution only.

    Examples
    --------
    >>> import torch, mtlweight as mw
    >>> theta = torch.nn.Parameter(torch.zeros(2))
    >>> losses = [theta @ torch.tensor([1.0, 2.0]), theta @ torch.tensor([-3.0, 1.0])]
    >>> _ = mw.GradDrop(shared=[theta], leak=1.0).backward(losses)
    >>> theta.grad  # with leak 1 it is the plain sum
    tensor([-2.,  3.])
    """

    direction_only = True  # d is not J^T w: weighting(losses) raises at once

    def __init__(
        self,
        shared: nn.Module | Iterable[Tensor] | None = None,
        *,
        leak: float | Sequence[float] = 0.0,
        seed: int = 0,
        task_specific: TaskSpecific | None = None,
        **kwargs: Any,
    ) -> None:
        mode: TaskSpecific = "plain" if task_specific is None else task_specific
        super().__init__(shared, task_specific=mode, **kwargs)
        leaks = [leak] if isinstance(leak, int | float) else list(leak)
        for value in leaks:
            if not (isinstance(value, int | float) and math.isfinite(value) and 0 <= value <= 1):
                raise ValueError(f"leak must be a number in [0, 1] or a list of them; found {leak}")
        self.leak = leaks[0] if isinstance(leak, int | float) else [float(v) for v in leaks]
        self.seed = int(seed)
        self.generator = torch.Generator().manual_seed(self.seed)

    def combine(self, jac: Tensor, gram: Tensor, values: Tensor) -> Combination:
        count = jac.shape[0]
        if isinstance(self.leak, list) and len(self.leak) != count:
            raise ValueError(
                f"GradDrop has {len(self.leak)} leak values ({self.leak}) for {count} tasks"
            )
        leak = torch.tensor(self.leak, dtype=torch.float64).expand(count)
        uniform = torch.rand(jac.shape[1], generator=self.generator, dtype=jac.dtype)
        direction = graddrop_direction(jac, uniform.to(jac.device), leak)
        return Combination.from_direction(jac, gram, direction)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, leak={self.leak}, seed={self.seed}"
