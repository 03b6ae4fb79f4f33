"""Batch-norm statistics of a network's inputs compared with the layers' running statistics.

A batch-norm layer's ``running_mean`` / ``running_var`` summarise the features its training data produced:
a model-alone description of that data. The divergence of a new input's feature statistics from them says
how familiar the input is (the selector's verification) and, minimised, synthesises inputs the model
expects (model inversion, DeepInversion).
"""

from __future__ import annotations

import threading
from typing import Any


def _bn_layers(network: Any) -> list[Any]:
    """The batch-norm layers of ``network`` that hold running statistics."""
    from torch.nn.modules.batchnorm import _BatchNorm

    return [
        m
        for m in network.modules()
        if isinstance(m, _BatchNorm) and m.track_running_stats and m.running_mean is not None
    ]


def bn_divergence(mean: Any, var: Any, running_mean: Any, running_var: Any, eps: float = 1e-5) -> Any:
    """Mean over channels of KL( N(mean, var) || N(running_mean, running_var) ) (torch tensors ``(C,)``).

    Zero when the batch statistics equal the running ones; scale-free per channel.
    """
    import torch

    v = var + eps
    rv = running_var + eps
    return 0.5 * (torch.log(rv / v) + (v + (mean - running_mean) ** 2) / rv - 1.0).mean()


class BNStatHooks:
    """Forward hooks that compute, for every batch-norm layer with running statistics, the divergence of
    the current batch's input statistics from the layer's running ones (see :func:`bn_divergence`).

    Use as a context manager; after a forward pass, ``divergences`` holds one scalar tensor per layer. Only
    the passes of the thread that entered the context count: another thread running the same network
    meanwhile (a user's own ``predict``) would otherwise add its input's statistics to this one's.
    """

    def __init__(self, network: Any) -> None:
        self.layers = _bn_layers(network)
        self.divergences: list[Any] = []
        self._handles: list[Any] = []
        self._thread: int | None = None

    def _hook(self, module: Any, inputs: Any, output: Any) -> None:
        if threading.get_ident() != self._thread:
            return
        x = inputs[0]
        dims = [0] + list(range(2, x.dim()))
        mean = x.mean(dim=dims)
        var = x.var(dim=dims, unbiased=False)
        self.divergences.append(bn_divergence(mean, var, module.running_mean, module.running_var, module.eps))

    def __enter__(self) -> BNStatHooks:
        self._thread = threading.get_ident()
        self._handles = [m.register_forward_hook(self._hook) for m in self.layers]
        return self

    def __exit__(self, *exc: Any) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def reset(self) -> None:
        self.divergences = []

    def mean(self) -> Any:
        import torch

        return torch.stack(self.divergences).mean() if self.divergences else torch.zeros(())
