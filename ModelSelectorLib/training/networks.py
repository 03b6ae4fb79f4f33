"""The segmentation networks a :class:`~.config.TrainConfig` describes, as MONAI configs and modules."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Optional

from .config import TrainConfig
from .planning import dynunet_kernels_strides


def network_def(
    config: TrainConfig, spatial_dims: int, n_classes: int,
    roi_size: Optional[Sequence[int]] = None, spacing: Optional[Sequence[float]] = None,
) -> dict[str, Any]:  # fmt: skip
    """MONAI config (``_target_`` + arguments) of the network to train.

    ``dynunet`` takes per-axis kernels and strides from :func:`dynunet_kernels_strides` for ``roi_size``
    (default ``config.roi_size``) and ``spacing`` (default isotropic), with at most ``len(config.channels)``
    levels; with ``config.slab_levels`` the kernels span 3 slices along the last axis in that many finest
    levels and 1 slice below them."""
    n_levels = len(config.channels)
    if config.architecture == "attentionunet":
        return {"_target_": "monai.networks.nets.AttentionUnet", "spatial_dims": spatial_dims, "in_channels": 1,
                "out_channels": n_classes, "channels": [int(c) for c in config.channels],
                "strides": [2] * (n_levels - 1)}  # fmt: skip
    if config.architecture == "dynunet":
        roi = [int(r) for r in (roi_size or config.roi_size)]
        # a slab is planned as its slices, then its neighbours reach the finest slab_levels levels
        slab = config.slab_levels is not None
        plan_roi = [*roi[:2], 1] if slab else roi
        kernels, strides = dynunet_kernels_strides(plan_roi, spacing or [1.0] * len(roi), n_levels)
        if slab:
            kernels = [[*k[:2], 3 if level < config.slab_levels else 1] for level, k in enumerate(kernels)]
        filters = [int(c) for c in config.channels[: len(strides)]]
        return {"_target_": "monai.networks.nets.DynUNet", "spatial_dims": spatial_dims, "in_channels": 1,
                "out_channels": n_classes, "kernel_size": kernels, "strides": strides,
                "upsample_kernel_size": strides[1:], "filters": filters, "norm_name": config.norm,
                "res_block": True}  # fmt: skip
    if config.architecture == "segresnet":
        return {"_target_": "monai.networks.nets.SegResNet", "spatial_dims": spatial_dims,
                "in_channels": 1, "out_channels": n_classes, "init_filters": int(config.channels[0]),
                "norm": config.norm.upper()}  # fmt: skip
    return {
        "_target_": "monai.networks.nets.UNet",
        "spatial_dims": spatial_dims,
        "in_channels": 1,
        "out_channels": n_classes,
        "channels": [int(c) for c in config.channels],
        "strides": [2] * (len(config.channels) - 1),
        "num_res_units": 1,
        "norm": config.norm.upper(),
    }


def build_network(net_def: dict[str, Any]) -> Any:
    """Instantiate a network config the way bundles are loaded (``monai.bundle.ConfigParser``)."""
    from monai.bundle import ConfigParser

    return ConfigParser({"network_def": net_def}).get_parsed_content("network_def", instantiate=True)
