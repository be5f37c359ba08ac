"""Base class of the gradient-level methods: they combine per-task gradients."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Iterable
from typing import Literal

import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor, nn

from mtlweight._base import Weighting
from mtlweight._validation import Losses, check_finite, normalise_losses
from mtlweight.autograd import as_inputs, task_gradients
from mtlweight.distributed import is_distributed, world_size

__all__ = ["GradientAggregator"]

TaskSpecific = Literal["weighted", "plain"]
Array = NDArray[np.float64]


def gram_matrix(jac: Tensor) -> Tensor:
    """``jac @ jac.T`` in float64, accumulated in float32 (float64 for float64 input).

    On the CPU the entries are pairwise dot products: a BLAS matrix product
    of a few rows can wait tens of milliseconds for its thread pool to wake.
    """
    acc = torch.float64 if jac.dtype == torch.float64 else torch.float32
    mat = jac.to(acc)
    if mat.device.type != "cpu":
        return (mat @ mat.T).to(torch.float64)
    count = mat.shape[0]
    gram = torch.empty(count, count, dtype=torch.float64)
    for i in range(count):
        for k in range(i, count):
            gram[i, k] = gram[k, i] = torch.dot(mat[i], mat[k])
    return gram


class _Replace:
    """Tensor hook that replaces the incoming gradient by a fixed tensor."""

    def __init__(self, value: Tensor) -> None:
        self.value = value

    def __call__(self, grad: Tensor) -> Tensor:
        return self.value.to(grad.dtype)


class GradientAggregator(Weighting):
    r"""Base class of the methods that combine the per-task gradients of shared parameters.

    At each step the per-task gradients of the shared parameters :math:`\theta`
    (or of a shared representation) form the matrix

    .. math::

        J = \begin{bmatrix} \nabla_\theta L_1 & \cdots & \nabla_\theta L_T
            \end{bmatrix}^\top \in \mathbb{R}^{T \times P},
        \qquad d = J^\top w, \quad w = \mathcal{A}(J J^\top)

    where:

    - :math:`J J^\top` is the :math:`T \times T` Gram matrix of the task
      gradients, the only thing a method :math:`\mathcal{A}` looks at;
    - :math:`w \in \mathbb{R}^T` are the coefficients of the combination,
      returned as the weights;
    - :math:`d` is the update direction the shared parameters receive.

    Every method here (PCGrad included: each projection subtracts a multiple
    of a task gradient) is such a linear combination, so the two calling
    conventions of :class:`~mtlweight.Weighting` relate as follows:

    - ``task_specific="weighted"``: ``weighting(losses)`` returns
      :math:`\sum_t \operatorname{sg}(w_t) L_t`, whose backward pass puts
      exactly :math:`d = J^\top w` on the shared parameters and
      :math:`\sum_t w_t \nabla L_t` on every other parameter (the task heads).
      ``weighting.backward(losses)`` is the same as
      ``weighting(losses).backward()``.
    - ``task_specific="plain"``: the shared parameters receive :math:`d` and
      every other parameter the plain gradient of :math:`\sum_t L_t`, as the
      official code of PCGrad, CAGrad, IMTL-G and Aligned-MTL does. No single
      weighted total can do that, so only ``weighting.backward(losses)`` is
      available; ``weighting(losses)`` raises :class:`TypeError`.

    PCGrad defaults to ``"plain"``, the other methods to ``"weighted"`` (so
    that ``weighting(losses)`` works for them as for the loss-level
    strategies); each method's docstring says what its authors' code does,
    and ``task_specific=`` chooses. Either way ``backward`` accumulates into ``.grad`` like
    ``loss.backward()`` and returns the weights :math:`w`.

    :math:`J` costs one backward pass per task that stops at :math:`\theta`
    (see :func:`mtlweight.autograd.task_gradients`) and :math:`T P` numbers of
    memory, so pick :math:`\theta` near the output (the last shared layer) or
    pass ``representation=`` (gradients with respect to a shared tensor).
    Under :mod:`torch.distributed` every rank uses the same :math:`w`,
    computed from the gradients of the whole batch, through
    :meth:`~mtlweight.Weighting.statistic`: for shared parameters :math:`J`
    is averaged across processes (one all-reduce of :math:`T P` numbers);
    for a representation, whose entries are each rank's own samples, the
    Gram matrices are averaged instead (and divided by the number of
    processes, which makes them those of the combined batch for mean
    losses over equal batches). The Gram matrix of the last step is kept in
    ``statistics["gram"]``.

    Parameters
    ----------
    shared
        The shared parameters: a module (its trainable parameters) or an
        iterable of tensors. May be ``None`` if every call passes
        ``representation=``.
    task_specific
        ``"weighted"`` or ``"plain"`` (see above); ``None`` takes the
        method's default.
    **kwargs
        Passed to :class:`~mtlweight.Weighting` (``tasks``, ``history_size``, ``sync``).

    Notes
    -----
    Subclasses implement :meth:`aggregate`, from the Gram matrix (float64,
    on the CPU) to the coefficients :math:`w`.
    """

    default_task_specific: TaskSpecific = "weighted"

    def __init__(
        self,
        shared: nn.Module | Iterable[Tensor] | None = None,
        *,
        task_specific: TaskSpecific | None = None,
        **kwargs: object,
    ) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        mode = self.default_task_specific if task_specific is None else task_specific
        if mode not in ("weighted", "plain"):
            raise ValueError(f"task_specific must be 'weighted' or 'plain'; found {mode!r}")
        self.task_specific: TaskSpecific = mode
        # A plain list: the shared parameters belong to the user's model, not
        # to this module's state_dict.
        self._shared: list[Tensor] | None = None if shared is None else as_inputs(shared)
        self._pending: tuple[list[Tensor], Tensor] | None = None
        self._in_backward = False

    @abstractmethod
    def aggregate(self, gram: Array, values: Tensor) -> Array:
        """Return the coefficients ``w``, shape ``(T,)``, from the ``(T, T)`` Gram matrix.

        ``values`` are the detached losses of this step.
        """

    # ------------------------------------------------------------------ API
    def forward(self, losses: Losses, *, representation: Tensor | None = None) -> Tensor:
        """Return :math:`\\sum_t \\operatorname{sg}(w_t) L_t` (``task_specific="weighted"``)."""
        if self.task_specific == "plain" and not self._in_backward:
            name = type(self).__name__
            raise TypeError(
                f"{name}(task_specific='plain') gives the shared parameters the combined "
                "gradient and the task-specific ones the plain gradient of sum_t L_t, which no "
                f"weighted total can express: call {name}.backward(losses) instead of "
                f"{name}(losses).backward(), or build it with task_specific='weighted'"
            )
        return super().forward(losses, representation=representation)

    def backward(self, losses: Losses, *, representation: Tensor | None = None) -> dict[str, float]:
        """Backpropagate: :math:`d` on the shared inputs, the rest as ``task_specific`` says.

        Returns the weights (coefficients :math:`w` of :math:`d = J^\\top w`) by task.
        """
        if self.task_specific == "weighted":
            return super().backward(losses, representation=representation)
        self._pending = None
        self._in_backward = True
        try:
            self(losses, representation=representation)  # weights, history, forward hooks
            names, tensors = normalise_losses(losses)
            if self._pending is None:  # the method reused earlier weights
                inputs = self._inputs(representation)
                average = representation is None
                self._pending = (inputs, self.jacobian(names, tensors, inputs, average=average))
            inputs, jac = self._pending
        finally:
            self._pending = None
            self._in_backward = False
        acc = torch.float64 if jac.dtype == torch.float64 else torch.float32
        weights = torch.tensor([self._weights[n] for n in names], dtype=acc, device=jac.device)
        direction = weights @ jac.to(acc)
        handles = []
        for tensor, piece in zip(
            inputs, torch.split(direction, [t.numel() for t in inputs]), strict=True
        ):
            # The hook replaces the gradient reaching this shared input by its
            # part of d; everything downstream of it sees plain gradients.
            hook = _Replace(piece.view_as(tensor))
            handles.append(tensor.register_hook(hook))  # type: ignore[no-untyped-call]
        try:
            total = tensors[0].reshape(())
            for t in tensors[1:]:
                total = total + t.reshape(())
            torch.autograd.backward(total)
        finally:
            for handle in handles:
                handle.remove()
        return self.weights

    # -------------------------------------------------------------- helpers
    def compute_weights(
        self,
        names: list[str],
        losses: list[Tensor],
        values: Tensor,
        *,
        representation: Tensor | None = None,
    ) -> Tensor:
        inputs = self._inputs(representation)
        per_sample = representation is not None
        jac = self.jacobian(names, losses, inputs, average=not per_sample)
        if self.task_specific == "plain":
            self._pending = (inputs, jac)
        gram = gram_matrix(jac)
        if per_sample and self.sync and is_distributed():
            # Each rank's columns are its own samples: Gram matrices add up over
            # samples. With mean losses over equal batches, the combined batch's
            # Gram matrix is the mean over ranks divided by their number.
            gram = self.statistic("gram", gram) / world_size()
        self.statistics["gram"] = gram
        gram_np = gram.cpu().numpy()
        coefficients = self.aggregate((gram_np + gram_np.T) / 2, values)
        return torch.as_tensor(coefficients, dtype=values.dtype, device=values.device)

    def jacobian(
        self, names: list[str], losses: list[Tensor], inputs: list[Tensor], *, average: bool = True
    ) -> Tensor:
        """The ``(T, P)`` task gradients, checked finite; ``average``: across processes."""
        jac = task_gradients(losses, inputs)
        if average:
            jac = self.statistic("jacobian", jac)
            del self.statistics["jacobian"]  # T x P numbers: not kept between steps
        acc = torch.float64 if jac.dtype == torch.float64 else torch.float32
        check_finite(names, jac.to(acc).norm(dim=1), "gradient norm")
        return jac

    def _inputs(self, representation: Tensor | None) -> list[Tensor]:
        name = type(self).__name__
        if representation is not None:
            return as_inputs(representation)
        if self.needs_representation:
            raise ValueError(
                f"{name} takes the gradients with respect to a shared representation: call "
                f"it with representation=features (the output of the shared encoder)"
            )
        if self._shared is None:
            raise ValueError(
                f"{name} needs the shared parameters ({name}(shared=...)) or a shared tensor "
                f"({name.lower()}(losses, representation=features))"
            )
        return self._shared

    def extra_repr(self) -> str:
        parts = [super().extra_repr(), f"task_specific={self.task_specific!r}"]
        return ", ".join(p for p in parts if p)
