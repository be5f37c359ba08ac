"""The gradient engine: per-task gradients, the Gram matrix, and the update, below both wings.

Nothing here knows a weighting strategy; :mod:`mtlweight.gradient_level` and
:mod:`mtlweight.loss_level` both stand on it. Its modules, from the bottom up:

- :mod:`.targets`: what is differentiated (a module, tensors, a representation),
  resolved at each step;
- :mod:`.passes`: the one per-task pass (the package's only calls of
  :func:`torch.autograd.grad`);
- :mod:`.grads`: the task-gradient containers: :math:`J`, :math:`G = J J^\\top`
  and the combinations :math:`\\sum_t c_t \\nabla L_t`;
- :mod:`.graph`: reading the losses' graph (its leaves, where passes may stop);
- :mod:`.linear`: the per-task gradients of shared linear layers as activations;
- :mod:`.instance`: the Gram matrix of per-sample losses from one backward pass
  (:class:`~mtlweight.InstanceGram`, instance-wise weighting);
- :mod:`.update`: ``.grad`` writes and the backward passes that finish a step;
- :mod:`.plans`: the named backward plans and :func:`~.plans.choose_plan`, the
  entry point of a gradient-level step (``plan.run(combine, plain=...)``).
"""
