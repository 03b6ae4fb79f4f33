"""Training a slice-wise 3D network through its 2D twin.

A slice-wise model is a 3D ``DynUNet`` whose kernels and strides are 1 along the last axis, trained and applied on
patches one voxel thick there (``roi_size`` ``(x, y, 1)``). On such a patch every 3D convolution is a 2D one and
every instance norm takes the same statistics, so the 2D ``DynUNet`` with the in-plane kernels and strides
computes the same function with the same parameters (each 2D kernel is the 3D one without its trailing axis of
size 1). On CPU, PyTorch's 2D convolutions are faster than 3D ones with a 1-voxel axis (the FLAIR recipe's
epoch: 42 s against 66 s with 2 threads), so training runs on the twin and the weights go back into the 3D network
that the bundle ships.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Optional

import torch

from .networks import build_network


def slice_twin_def(net_def: Mapping[str, Any], roi_size: Sequence[int]) -> Optional[dict[str, Any]]:
    """The 2D ``DynUNet`` config equivalent to ``net_def`` on ``roi_size`` patches, or ``None`` when there is none.

    There is one when ``net_def`` is a 3D ``DynUNet`` with per-axis kernels, strides and upsampling kernels that
    are all 1 along the last axis and ``roi_size`` is 1 voxel along it.
    """
    if net_def.get("_target_") != "monai.networks.nets.DynUNet" or int(net_def.get("spatial_dims", 0)) != 3:
        return None
    if len(roi_size) != 3 or int(roi_size[2]) != 1:
        return None
    per_axis = [net_def.get(k) for k in ("kernel_size", "strides", "upsample_kernel_size")]
    if not all(
        isinstance(v, Sequence) and all(isinstance(s, Sequence) and len(s) == 3 for s in v) for v in per_axis
    ):
        return None
    if any(int(s[2]) != 1 for v in per_axis for s in v):
        return None
    kernels, strides, up = ([[int(a) for a in s[:2]] for s in v] for v in per_axis)
    return {
        **net_def,
        "spatial_dims": 2,
        "kernel_size": kernels,
        "strides": strides,
        "upsample_kernel_size": up,
    }


class SliceTwin(torch.nn.Module):
    """A 2D network in place of a slice-wise 3D one: takes ``(B, C, H, W, 1)`` and returns ``(B, K, H, W, 1)``,
    so that training, sliding-window validation and losses see the 3D shapes.

    Args:
        net2d: the 2D network (:func:`slice_twin_def`).
    """

    def __init__(self, net2d: torch.nn.Module) -> None:
        super().__init__()
        self.net = net2d

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x[..., 0])[..., None]

    def load_volume_state(self, state: Mapping[str, torch.Tensor]) -> None:
        """Load the parameters of the 3D network (its ``state_dict``)."""
        own = self.net.state_dict()
        self.net.load_state_dict({k: v.reshape(own[k].shape) for k, v in state.items()})

    def volume_state(self, like: Mapping[str, torch.Tensor], state: Optional[Mapping[str, torch.Tensor]] = None
                     ) -> dict[str, torch.Tensor]:  # fmt: skip
        """The twin's parameters (or ``state``, a ``state_dict`` of this twin) shaped as the 3D network's
        ``state_dict`` ``like``."""
        state = self.state_dict() if state is None else state
        return {k: state[f"net.{k}"].detach().clone().reshape(ref.shape) for k, ref in like.items()}

    def export_to(
        self, network: torch.nn.Module, state: Mapping[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """Load the twin's current parameters into the 3D ``network``; return ``state`` (a ``state_dict`` of
        this twin, e.g. the kept best weights) shaped as ``network``'s."""
        like = network.state_dict()
        network.load_state_dict(self.volume_state(like))
        return self.volume_state(like, state)


def slice_twin(
    network: torch.nn.Module, net_def: Mapping[str, Any], roi_size: Sequence[int]
) -> Optional[SliceTwin]:
    """The :class:`SliceTwin` of ``network`` (built from ``net_def``) holding its current weights, on its
    device; ``None`` when ``net_def`` is not slice-wise on ``roi_size`` (:func:`slice_twin_def`)."""
    twin_def = slice_twin_def(net_def, roi_size)
    if twin_def is None:
        return None
    device = next(network.parameters()).device
    twin = SliceTwin(build_network(twin_def)).to(device)
    twin.load_volume_state(network.state_dict())
    return twin


__all__ = ["SliceTwin", "slice_twin", "slice_twin_def"]
