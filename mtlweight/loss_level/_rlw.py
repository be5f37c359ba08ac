"""Random loss weighting (Lin et al. 2021)."""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from torch import Tensor

from mtlweight._base import Seeded

Distribution = Literal["normal", "dirichlet"]


def _log_gamma(shape: float, count: int, generator: torch.Generator) -> Tensor:
    """Logarithms of ``count`` samples of Gamma(shape, 1), float64 (Marsaglia and Tsang 2000).

    Written out because :class:`torch.distributions.Gamma` takes no generator;
    in log space because a sample for a small ``shape`` can underflow to 0.
    """
    boost = shape < 1.0  # Gamma(a) = Gamma(a + 1) * U ** (1 / a)
    d = (shape + 1.0 if boost else shape) - 1.0 / 3.0
    c = 1.0 / math.sqrt(9.0 * d)
    samples: list[float] = []
    while len(samples) < count:
        x = float(torch.randn((), generator=generator, dtype=torch.float64))
        v = (1.0 + c * x) ** 3
        u = float(torch.rand((), generator=generator, dtype=torch.float64))
        if v > 0 and math.log(u) < 0.5 * x * x + d - d * v + d * math.log(v):
            samples.append(math.log(d * v))
    result = torch.tensor(samples, dtype=torch.float64)
    if boost:
        uniform = torch.rand(count, generator=generator, dtype=torch.float64)
        result = result + uniform.log() / shape
    return result


class RandomLossWeighting(Seeded):
    r"""Random loss weighting (RLW) of `Reasonable Effectiveness of Random
    Weighting: A Litmus Test for Multi-Task Learning` (Lin, Ye, Zhang and
    Tsang, TMLR 2022; arXiv 2021).

    .. math::

        w = \operatorname{softmax}(z), \quad z_t \sim \mathcal{N}(0, 1)
        \qquad \text{or} \qquad
        w \sim \operatorname{Dirichlet}(\alpha, \dots, \alpha)

    where:

    - :math:`w = (w_1, \dots, w_T)` is drawn afresh, independently, at every step;
    - :math:`z_t` are independent standard normal samples (``"normal"``, the
      paper's default);
    - :math:`\alpha` is the ``concentration`` of the Dirichlet distribution
      (``"dirichlet"``; :math:`\alpha = 1` is uniform on the simplex).

    The weights are positive and sum to 1. They come from a private
    :class:`torch.Generator` (on the CPU, whatever the device of the losses),
    so a ``seed`` makes a run reproducible, the global random state is left
    alone, and ``state_dict`` carries the generator's state: a resumed run
    draws the weights the uninterrupted run would have drawn.

    Parameters
    ----------
    distribution
        ``"normal"`` (softmax of normal samples) or ``"dirichlet"``.
    concentration
        :math:`\alpha > 0` of the Dirichlet distribution.
    seed
        Seed of the generator; ``None`` draws one from PyTorch's global
        generator (so :func:`torch.manual_seed` still makes runs reproducible).
    **kwargs
        Passed to :class:`~mtlweight.Weighting` (``tasks``, ``history_size``, ``sync``).

    Raises
    ------
    FloatingPointError
        If a loss is NaN or infinite (naming the task).

    .. note::
        Under :mod:`torch.distributed` the weights are averaged across
        processes (they stay positive and sum to 1); give every process the
        same ``seed`` to use the very same draw everywhere.

    Examples
    --------
    >>> import torch, mtlweight as mw
    >>> rlw = mw.RandomLossWeighting(seed=0)
    >>> total = rlw({"pixel": torch.tensor(3.0), "edge": torch.tensor(1.0)})
    >>> round(sum(rlw.weights.values()), 6)
    1.0
    >>> again = mw.RandomLossWeighting(seed=0)
    >>> _ = again({"pixel": torch.tensor(3.0), "edge": torch.tensor(1.0)})
    >>> again.weights == rlw.weights
    True
    """

    def __init__(
        self,
        distribution: Distribution = "normal",
        *,
        concentration: float = 1.0,
        seed: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if distribution not in ("normal", "dirichlet"):
            raise ValueError(
                f"distribution must be 'normal' or 'dirichlet'; found {distribution!r}"
            )
        if not (math.isfinite(concentration) and concentration > 0):
            raise ValueError(f"concentration must be a positive number; found {concentration}")
        self.distribution = distribution
        self.concentration = float(concentration)
        if seed is None:
            seed = int(torch.randint(0, 2**62, (), dtype=torch.int64))
        self.seed = int(seed)
        self.generator = torch.Generator().manual_seed(self.seed)

    def sample(self, count: int) -> Tensor:
        """Draw one weight vector of length ``count`` (float64, on the CPU)."""
        if self.distribution == "normal":
            z = torch.randn(count, generator=self.generator, dtype=torch.float64)
            return torch.softmax(z, dim=0)
        # Normalised Gamma(alpha) samples: softmax of their logarithms.
        return torch.softmax(_log_gamma(self.concentration, count, self.generator), dim=0)

    def compute_weights(
        self,
        names: list[str],
        losses: list[Tensor],
        values: Tensor,
        *,
        representation: Tensor | None = None,
    ) -> Tensor:
        weights = self.sample(values.numel()).to(device=values.device, dtype=values.dtype)
        weights = self.statistic("weights", weights)
        # the draws go to the tasks in sorted order of their names, so that a call with
        # the same losses under permuted keys gives each task the same weight
        order = sorted(range(len(names)), key=names.__getitem__)
        placed = torch.empty_like(weights)
        placed[order] = weights
        return placed

    def extra_repr(self) -> str:
        parts = [repr(self.distribution), f"seed={self.seed}"]
        if self.distribution == "dirichlet":
            parts.insert(1, f"concentration={self.concentration}")
        return ", ".join([*parts, super().extra_repr()] if self.tasks else parts)
