"""The task-gradient containers: the per-task gradients of one step, and what is made of them.

``T`` backward passes give, for each task ``t`` and each differentiated tensor
(a *target*) ``j``, the gradient ``grads[t][j]``. The methods need three things
of them: the Gram matrix :math:`G = J J^\\top` (or only its diagonal), the
matrix :math:`J` itself (the few methods that are not functions of ``G``), and
the combinations :math:`\\sum_t c_t \\nabla L_t` that become the ``.grad`` of
each target. :class:`TaskGrads` computes each from the per-task tensors
directly: ``G`` from pairwise dot products, the combinations with ``torch``'s
multi-tensor (``_foreach``) kernels, in place in task 0's buffers when the
graph is gone. Nothing is stacked into a ``(T, P)`` copy unless ``J`` is asked
for: at 5.3M shared parameters, stacking alone cost more than a backward pass.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 for float64 gradients, float32 for every other floating type."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def gram_pairs(count: int, diagonal_only: bool) -> list[tuple[int, int]]:
    """The ``(i, k)``, ``i <= k``, of the Gram entries to compute (the diagonal only, or all)."""
    if diagonal_only:
        return [(i, i) for i in range(count)]
    return [(i, k) for i in range(count) for k in range(i, count)]


def symmetric(count: int, pairs: list[tuple[int, int]], values: Tensor) -> Tensor:
    """The ``(T, T)`` float64 matrix with ``values`` at ``pairs`` and their mirror images."""
    result = torch.zeros(count, count, dtype=torch.float64)
    index = torch.tensor(pairs, dtype=torch.long).T
    result[index[0], index[1]] = values
    result[index[1], index[0]] = values
    return result


def _dense(t: Tensor) -> bool:
    """Whether ``t`` owns every element it shows once (no expanded or overlapping strides)."""
    return (
        t.is_contiguous()
        or (t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last))
        or (t.dim() == 5 and t.is_contiguous(memory_format=torch.channels_last_3d))
    )


class TaskGrads:
    """``grads[t][j]``: the gradient of task ``t``'s loss with respect to target ``j``.

    Parameters
    ----------
    grads
        One list per task, each with one tensor per target (shaped like the
        target).
    owned
        Whether the tensors belong to this object alone (fresh results of
        ``torch.autograd.grad``): only then may :meth:`combine` reuse task 0's
        buffers.
    matrix
        ``(count, J)`` when the first ``count`` targets' gradients are views of
        the ``(T, P)`` matrix ``J`` (see :func:`~mtlweight._engine.passes.task_pass`):
        :meth:`matrix` returns it without a copy, and those views are never
        reused in place (a ``.grad`` must not keep ``J`` alive).

    Examples
    --------
    >>> import torch
    >>> g = TaskGrads([[torch.tensor([1.0, 0.0])], [torch.tensor([0.0, 2.0])]])
    >>> g.gram(0, 1)
    tensor([[1., 0.],
            [0., 4.]], dtype=torch.float64)
    >>> g.combine(torch.tensor([0.5, 0.25]), 0, 1, in_place=False)
    [tensor([0.5000, 0.5000])]
    """

    def __init__(
        self,
        grads: list[list[Tensor]],
        *,
        owned: bool = True,
        matrix: tuple[int, Tensor] | None = None,
    ) -> None:
        self.grads = grads
        self.owned = owned
        self._matrix = matrix
        self._rows: list[Tensor] | None = None

    @classmethod
    def of_rows(cls, rows: Sequence[Tensor]) -> TaskGrads:
        """Wrap ``(T, *shape)`` tensors, one per target (views: nothing is copied)."""
        count = rows[0].shape[0]
        found = cls([[r[t] for r in rows] for t in range(count)], owned=False)
        found._rows = list(rows)
        return found

    @property
    def tasks(self) -> int:
        return len(self.grads)

    @property
    def targets(self) -> int:
        return len(self.grads[0]) if self.grads else 0

    def column(self, j: int) -> list[Tensor]:
        """Every task's gradient of target ``j``."""
        return [row[j] for row in self.grads]

    def rows(self, start: int = 0, stop: int | None = None) -> list[Tensor]:
        """``(T, *shape)`` per target in ``[start, stop)`` (stacked: a copy unless wrapped rows)."""
        stop = self.targets if stop is None else stop
        if self._rows is not None:
            return self._rows[start:stop]
        return [torch.stack(self.column(j)) for j in range(start, stop)]

    def matrix(self, start: int = 0, stop: int | None = None) -> Tensor:
        """``J``: the ``(T, P)`` matrix of the targets in ``[start, stop)``, side by side."""
        stop = self.targets if stop is None else stop
        if self._matrix is not None and start == 0 and stop == self._matrix[0]:
            return self._matrix[1]
        if self._rows is not None:
            return torch.cat([r.reshape(r.shape[0], -1) for r in self._rows[start:stop]], dim=1)
        first = self.grads[0][start:stop]
        dtype = first[0].dtype
        for g in first[1:]:
            dtype = torch.promote_types(dtype, g.dtype)
        size = sum(g.numel() for g in first)
        jac = torch.empty(self.tasks, size, dtype=dtype, device=first[0].device)
        for t, row in enumerate(self.grads):
            torch.cat([row[j].reshape(-1) for j in range(start, stop)], out=jac[t])
        return jac

    def gram(
        self, start: int = 0, stop: int | None = None, *, diagonal_only: bool = False
    ) -> Tensor:
        """:math:`G = J J^\\top` of the targets in ``[start, stop)``, ``(T, T)`` float64 on the CPU.

        Each entry is a sum over the targets of dot products, taken in float32
        (float64 for float64 gradients) and added in float64. With
        ``diagonal_only`` the off-diagonal entries are left at zero (``T`` norms
        instead of ``T (T + 1) / 2`` dot products).
        """
        stop = self.targets if stop is None else stop
        count = self.tasks
        pairs = gram_pairs(count, diagonal_only)
        parts: list[Tensor] = []
        for i, k in pairs:
            if i == k:  # a norm: one multi-tensor kernel over the targets
                norms = torch._foreach_norm([self._acc(g) for g in self.grads[i][start:stop]])
                parts.append(torch.stack(norms).double().square().sum())
                continue
            dots = [
                torch.dot(self._acc(a).reshape(-1), self._acc(b).reshape(-1))
                for a, b in zip(self.grads[i][start:stop], self.grads[k][start:stop], strict=True)
            ]
            parts.append(torch.stack(dots).double().sum())
        return symmetric(count, pairs, torch.stack(parts).cpu())  # one transfer

    def combine(
        self, coefficients: Tensor, start: int = 0, stop: int | None = None, *, in_place: bool
    ) -> list[Tensor]:
        """:math:`\\sum_t c_t \\nabla_j L_t` for each target ``j`` in ``[start, stop)``.

        In float32 (float64 for float64 gradients). ``in_place``: accumulate
        into task 0's buffers where they are this object's own, dense and of
        that type (the graph must not need them any more); otherwise new
        tensors.
        """
        stop = self.targets if stop is None else stop
        if start == stop:
            return []
        c = [float(v) for v in coefficients.tolist()]
        first = self.grads[0][start:stop]
        viewed = 0 if self._matrix is None else self._matrix[0]  # views of J
        own = [
            in_place
            and self.owned
            and j >= viewed
            and g.dtype == accumulation_dtype(g.dtype)
            and _dense(g)
            for j, g in enumerate(first, start)
        ]
        mine = [g for g, o in zip(first, own, strict=True) if o]
        if mine:
            torch._foreach_mul_(mine, c[0])
        rest = [self._acc(g) for g, o in zip(first, own, strict=True) if not o]
        scaled = torch._foreach_mul(rest, c[0]) if rest else []
        taken, made = iter(mine), iter(scaled)
        result = [next(taken) if o else next(made) for o in own]
        for t in range(1, self.tasks):
            torch._foreach_add_(
                result, [self._acc(g) for g in self.grads[t][start:stop]], alpha=c[t]
            )
        return result

    @staticmethod
    def _acc(g: Tensor) -> Tensor:
        acc = accumulation_dtype(g.dtype)
        return g if g.dtype == acc else g.to(acc)


def gram(jac: Tensor) -> Tensor:
    """``jac @ jac.T`` in float64 on the CPU, accumulated in float32 (float64 for float64 input).

    On the CPU the entries are pairwise dot products: a BLAS matrix product
    of a few rows can wait tens of milliseconds for its thread pool to wake.

    Examples
    --------
    >>> gram(torch.tensor([[1.0, 0.0], [1.0, 2.0]]))
    tensor([[1., 1.],
            [1., 5.]], dtype=torch.float64)
    """
    acc = accumulation_dtype(jac.dtype)
    mat = jac.to(acc)
    if mat.device.type != "cpu":
        return (mat @ mat.T).to(device="cpu", dtype=torch.float64)
    count = mat.shape[0]
    result = torch.empty(count, count, dtype=torch.float64)
    for i in range(count):
        for k in range(i, count):
            result[i, k] = result[k, i] = torch.dot(mat[i], mat[k])
    return result


def unflat_row(vector: Tensor, like: Sequence[Tensor]) -> list[Tensor]:
    """Views of a ``(P,)`` vector shaped like the tensors ``like``, side by side."""
    pieces = torch.split(vector, [t.numel() for t in like])
    return [p.view(t.shape) for p, t in zip(pieces, like, strict=True)]


def flat(rows: Sequence[Tensor]) -> Tensor:
    """The ``(T, P)`` matrix of the rows of several targets side by side."""
    if len(rows) == 1:
        return rows[0].reshape(rows[0].shape[0], -1)
    return torch.cat([r.reshape(r.shape[0], -1) for r in rows], dim=1)


def split_columns(jac: Tensor, targets: Sequence[Tensor]) -> list[Tensor]:
    """Views of a ``(T, P)`` matrix as ``(T, *shape)`` tensors, one per target, side by side."""
    pieces = torch.split(jac, [t.numel() for t in targets], dim=1)
    return [p.reshape(jac.shape[0], *t.shape) for p, t in zip(pieces, targets, strict=True)]


def weighted_sum(weights: Tensor, rows: Tensor) -> Tensor:
    """``sum_t weights[t] * rows[t]``, shaped like one row, in float32 (float64 for float64)."""
    acc = accumulation_dtype(rows.dtype)
    flat_rows = rows.reshape(rows.shape[0], -1).to(acc)
    w = weights.to(device=rows.device, dtype=acc)
    return torch.mv(flat_rows.T, w).reshape(rows.shape[1:])  # a GEMV: faster than tensordot
