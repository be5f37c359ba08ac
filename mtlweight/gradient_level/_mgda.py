"""MGDA and MGDA-UB (Sener and Koltun 2018), with an exact min-norm solver."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

import numpy as np
import torch
from torch import Tensor, nn

from mtlweight._solvers import min_norm_weights
from mtlweight.gradient_level._base import GramWeighting, TaskSpecific

Normalization = Literal["none", "l2", "loss", "loss+"]


class MGDA(GramWeighting):
    r"""MGDA of `Multi-Task Learning as Multi-Objective Optimization` (Sener and
    Koltun, 2018): the min-norm point of the convex hull of the task gradients.

    .. math::

        w = \operatorname*{arg\,min}_{w \in \Delta^{T}}
            \Big\lVert \sum_{t=1}^{T} w_t \frac{g_t}{n_t} \Big\rVert_2^2,
        \qquad d = \sum_{t=1}^{T} w_t g_t

    where:

    - :math:`g_t = \nabla_\theta L_t`, the gradient of task :math:`t` with
      respect to the shared parameters (or, for MGDA-UB, to a shared
      representation :math:`z`);
    - :math:`\Delta^T` is the simplex (:math:`w_t \ge 0`, :math:`\sum_t w_t = 1`);
    - :math:`n_t` is the normaliser: 1 (``"none"``), :math:`\lVert g_t \rVert`
      (``"l2"``), :math:`L_t` (``"loss"``) or :math:`L_t \lVert g_t \rVert`
      (``"loss+"``).

    :math:`-d` is a descent direction for every task unless :math:`d = 0`
    (a Pareto-stationary point). The solver is exact (Wolfe's algorithm, see
    :func:`min_norm_weights`) and handles identical and zero gradients (a
    zero gradient makes :math:`d = 0`: that task gets all the weight).

    MGDA-UB, the paper's cheaper upper bound, is the same method on the
    gradients with respect to the shared representation: pass
    ``representation=features`` at each call (or use :class:`MGDAUB`).

    Parameters
    ----------
    shared
        The shared parameters: a module or an iterable of tensors.
    normalization
        ``"none"`` (default, the paper's formulation), ``"l2"``, ``"loss"``
        or ``"loss+"``, as in the authors' code.
    task_specific
        ``"weighted"`` (default, as the authors' code: heads get
        :math:`w_t \nabla L_t`) or ``"plain"``; see
        :class:`~mtlweight.GradientMethod`.
    **kwargs
        Passed to :class:`~mtlweight.Weighting`.

    Raises
    ------
    ValueError
        Without shared parameters or representation; with ``"loss"``/``"loss+"``
        normalisation and a loss that is not positive.
    FloatingPointError
        If a loss or a gradient is NaN or infinite (naming the task).

    .. note::
        As in the authors' code, with a normalisation the weights are found
        for the normalised gradients and then applied to the raw losses.

    Examples
    --------
    >>> import torch, mtlweight as mw
    >>> theta = torch.nn.Parameter(torch.zeros(2))
    >>> losses = {"a": theta @ torch.tensor([1.0, 0.0]), "b": theta @ torch.tensor([0.0, 2.0])}
    >>> mgda = mw.MGDA(shared=[theta])
    >>> {k: round(v, 4) for k, v in mgda.backward(losses).items()}
    {'a': 0.8, 'b': 0.2}
    >>> theta.grad
    tensor([0.8000, 0.4000])
    """

    def __init__(
        self,
        shared: nn.Module | Iterable[Tensor] | None = None,
        *,
        normalization: Normalization = "none",
        task_specific: TaskSpecific | None = None,
        **kwargs: object,
    ) -> None:
        super().__init__(shared, task_specific=task_specific, **kwargs)
        if normalization not in ("none", "l2", "loss", "loss+"):
            raise ValueError(
                "normalization must be one of 'none', 'l2', 'loss', 'loss+'; "
                f"found {normalization!r}"
            )
        self.normalization: Normalization = normalization

    def check_losses(self, names: list[str], values: Tensor) -> None:
        if self.normalization in ("loss", "loss+") and bool((values <= 0).any()):
            i = int((values <= 0).nonzero()[0])
            raise ValueError(
                f"MGDA(normalization={self.normalization!r}) divides by the losses, which must "
                f"be positive; loss of task {names[i]!r} is {float(values[i])}"
            )

    def gram_weights(self, gram_t: Tensor, values: Tensor) -> Tensor:
        gram = gram_t.numpy()
        scale = np.ones(gram.shape[0])
        if self.normalization in ("loss", "loss+"):
            scale = scale * values.detach().double().cpu().numpy()
        if self.normalization in ("l2", "loss+"):
            norms = np.sqrt(np.clip(np.diag(gram), 0.0, None))
            scale = scale * np.where(norms > 0, norms, 1.0)
        return torch.from_numpy(min_norm_weights(gram / np.outer(scale, scale)))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, normalization={self.normalization!r}"


class MGDAUB(MGDA):
    r"""MGDA-UB of `Multi-Task Learning as Multi-Objective Optimization`: MGDA on
    the gradients with respect to the shared representation :math:`z`.

    .. math::

        w = \operatorname*{arg\,min}_{w \in \Delta^{T}}
            \Big\lVert \sum_{t=1}^{T} w_t \nabla_z L_t \Big\rVert_2^2

    where :math:`z` is the output of the shared encoder, passed as
    ``representation=`` at every call. Minimising this upper bound costs
    :math:`T` backward passes through the heads only, instead of through the
    encoder. Parameters are those of :class:`MGDA` (``shared`` is not used).

    Examples
    --------
    >>> import torch, mtlweight as mw
    >>> z = torch.ones(2, requires_grad=True) * 1.0
    >>> ub = mw.MGDAUB()
    >>> w = ub.backward({"a": z[0], "b": 2 * z[1]}, representation=z)
    >>> {k: round(v, 4) for k, v in w.items()}
    {'a': 0.8, 'b': 0.2}
    """

    @property
    def needs_representation(self) -> bool:
        return True
