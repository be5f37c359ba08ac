"""STCH (Lin et al. 2024): smooth Tchebycheff scalarization."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from mtlweight._base import Weighting

PerTask = Mapping[str, float] | Sequence[float]


def _per_task(option: PerTask | None, names: list[str], default: float, what: str) -> Tensor:
    """``option`` as a float64 vector in the order of ``names``."""
    if option is None:
        return torch.full((len(names),), default, dtype=torch.float64)
    if isinstance(option, Mapping):
        missing = [n for n in names if n not in option]
        if missing:
            raise ValueError(f"STCH's {what} has no value for task {missing[0]!r}; found {option}")
        return torch.tensor([float(option[n]) for n in names], dtype=torch.float64)
    if len(option) != len(names):
        raise ValueError(f"STCH has {len(option)} {what} values ({list(option)}) for tasks {names}")
    return torch.tensor([float(v) for v in option], dtype=torch.float64)


class STCH(Weighting):
    r"""STCH of `Smooth Tchebycheff Scalarization for Multi-Objective Optimization` (Lin et al.,
    ICML 2024).

    .. math::

        g_\mu(L) = \mu \log \sum_{t=1}^{T} \exp\Big(\frac{\lambda_t (L_t - z^*_t)}{\mu}\Big),
        \qquad
        w_t = \frac{\partial g_\mu}{\partial L_t}
            = \lambda_t \operatorname{softmax}\Big(\frac{\lambda (L - z^*)}{\mu}\Big)_t

    where:

    - :math:`L_t` is the loss of task :math:`t` at this step;
    - :math:`\lambda_t > 0` is the ``preference`` of task :math:`t` (1 by default);
    - :math:`z^*_t` is the ``ideal`` value of task :math:`t` (0 by default);
    - :math:`\mu > 0` smooths the Tchebycheff scalarization
      :math:`\max_t \lambda_t (L_t - z^*_t)`: :math:`g_\mu` tends to it as
      :math:`\mu \to 0` (all the weight on the worst task), and
      :math:`w \to \lambda / T` (the mean of the losses) as :math:`\mu \to \infty`.

    The total :math:`\sum_t \operatorname{sg}(w_t) L_t` has the gradient of
    :math:`g_\mu` (not its value). With the default preference the weights
    are positive and sum to 1.

    Parameters
    ----------
    mu
        :math:`\mu > 0` (1, LibMTL's default; the paper tries 0.01 to 1).
    preference
        :math:`\lambda`: a dict by task name, or a sequence in the order of
        the losses; ``None`` gives 1 to every task.
    ideal
        :math:`z^*`, likewise; ``None`` gives 0.
    **kwargs
        Passed to :class:`~mtlweight.Weighting` (``tasks``, ``history_size``, ``sync``).

    Raises
    ------
    ValueError
        For a missing or extra preference or ideal value, naming the task.
    FloatingPointError
        If a loss is NaN or infinite (naming the task).

    .. note::
        The weights come from the paper's definition on the raw losses. The
        authors' multi-task code (and LibMTL) apply it to
        :math:`\log(L_t / \bar L_t)`, with :math:`\bar L_t` the mean loss of
        a warm-up epoch, and multiply by :math:`T`. TorchJD's
        ``STCH(mu, weights=lambda, reference=z)`` is :math:`g_\mu` itself, whose
        gradient with respect to the losses equals our weights; its default
        :math:`\lambda = 1/T` is ``preference=[1 / T] * T`` here.

    Under :mod:`torch.distributed` the losses are averaged across processes
    first (:meth:`~mtlweight.Weighting.statistic`): the weights are identical
    everywhere and equal to those of one process on the combined batch
    (mean losses over equal batches).

    Examples
    --------
    >>> import math, torch, mtlweight as mw
    >>> stch = mw.STCH(mu=1.0)
    >>> _ = stch({"a": torch.tensor(1.0), "b": torch.tensor(1.0 + math.log(3.0))})
    >>> {k: round(v, 4) for k, v in stch.weights.items()}  # softmax(0, log 3)
    {'a': 0.25, 'b': 0.75}
    """

    def __init__(
        self,
        mu: float = 1.0,
        *,
        preference: PerTask | None = None,
        ideal: PerTask | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if not (math.isfinite(mu) and mu > 0):
            raise ValueError(f"STCH's mu must be a positive number; found {mu}")
        self.mu = float(mu)
        self.preference = preference
        self.ideal = ideal
        if preference is not None:
            values = preference.values() if isinstance(preference, Mapping) else preference
            if not all(math.isfinite(float(v)) and float(v) > 0 for v in values):
                raise ValueError(f"STCH's preference values must be positive; found {preference}")

    def compute_weights(
        self,
        names: list[str],
        losses: list[Tensor],
        values: Tensor,
        *,
        representation: Tensor | None = None,
    ) -> Tensor:
        lam = _per_task(self.preference, names, 1.0, "preference")
        ideal = _per_task(self.ideal, names, 0.0, "ideal")
        current = self.statistic("loss", values).detach().double().cpu()
        weights = lam * torch.softmax(lam * (current - ideal) / self.mu, 0)
        return weights.to(values)

    def extra_repr(self) -> str:
        parts = [f"mu={self.mu}"]
        if self.preference is not None:
            parts.append(f"preference={self.preference}")
        if self.ideal is not None:
            parts.append(f"ideal={self.ideal}")
        return ", ".join([*parts, super().extra_repr()] if self.tasks else parts)
