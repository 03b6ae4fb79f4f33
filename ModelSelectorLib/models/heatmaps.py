"""Heatmaps of landmark networks: sub-pixel decoding of points and the spatial entropy of the maps.

A landmark network outputs one logit map per landmark, read as a spatial softmax. Maps are in MONAI's spatial
layout ``(x, y)``; points are ``(x, y)`` = indices along the maps' last two axes.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..errors import InputError


def decode_heatmaps(
    heatmaps: Any, method: str = "centroid", radius: int = 5, logits: bool = False
) -> np.ndarray:
    """Sub-pixel landmark positions from heatmaps.

    Args:
        heatmaps: ``(..., P, X, Y)`` probability maps (or logits of a spatial softmax with
            ``logits=True``), numpy or torch.
        method: ``"centroid"``: probability-weighted centroid in a ``(2 radius + 1)^2`` window around the
            maximum (robust to secondary modes); ``"softargmax"``: expectation over the whole map.
        radius: window half-width in pixels for ``"centroid"``.

    Returns:
        ``(..., P, 2)`` float64 ``(x, y)`` in pixels of the heatmap grid.
    """
    import torch

    h = heatmaps if isinstance(heatmaps, torch.Tensor) else torch.as_tensor(np.asarray(heatmaps))
    h = h.detach().float().cpu()
    lead = h.shape[:-2]
    nx, ny = h.shape[-2:]
    flat = h.reshape(-1, nx * ny)
    prob = torch.softmax(flat, dim=1) if logits else flat.clamp_min(0)
    if method == "softargmax":
        prob = prob / prob.sum(1, keepdim=True).clamp_min(1e-12)
        p = prob.reshape(-1, nx, ny)
        xs = (p.sum(2) * torch.arange(nx, dtype=torch.float32)).sum(1)
        ys = (p.sum(1) * torch.arange(ny, dtype=torch.float32)).sum(1)
        return torch.stack([xs, ys], 1).double().numpy().reshape(*lead, 2)
    if method != "centroid":
        raise InputError(f"unknown decoding {method!r}; use 'centroid' or 'softargmax'.")
    idx = prob.argmax(1)
    cx, cy = idx // ny, idx % ny
    offs = torch.arange(-radius, radius + 1)
    wx = (cx[:, None] + offs[None]).clamp(0, nx - 1)  # (N, W)
    wy = (cy[:, None] + offs[None]).clamp(0, ny - 1)
    p = prob.reshape(-1, nx, ny)
    n = p.shape[0]
    win = p[torch.arange(n)[:, None, None], wx[:, :, None], wy[:, None, :]]  # (N, W, W)
    # clamped window indices repeat border pixels: count each pixel once
    valid_x = (cx[:, None] + offs[None] >= 0) & (cx[:, None] + offs[None] < nx)
    valid_y = (cy[:, None] + offs[None] >= 0) & (cy[:, None] + offs[None] < ny)
    win = win * (valid_x[:, :, None] & valid_y[:, None, :])
    total = win.sum((1, 2)).clamp_min(1e-12)
    xs = (win.sum(2) * wx.float()).sum(1) / total
    ys = (win.sum(1) * wy.float()).sum(1) / total
    return torch.stack([xs, ys], 1).double().numpy().reshape(*lead, 2)


def decode_logits(logits: Any, method: str = "centroid", radius: int = 5) -> np.ndarray:
    """Landmarks ``(N, P, 2)`` ``(x, y)`` of heatmap logits ``(N, P, X, Y)``: spatial softmax, then
    :func:`decode_heatmaps`."""
    import torch

    prob = torch.softmax(logits.flatten(2), 2).reshape(logits.shape)
    return decode_heatmaps(prob, method, radius)


def heatmap_entropy(logits: Any) -> Any:
    """Normalised spatial entropy of heatmap logits ``(N, P, X, Y)``, mean over the landmarks: a ``(N,)``
    torch tensor in [0, 1] (0: every landmark a one-pixel peak; 1: uniform maps), differentiable. A
    model-alone sign of how familiar an input is: a landmark network's maps are sharp on the images it
    learnt from and diffuse elsewhere (used by model inversion and the selector's verification)."""
    import torch

    q = torch.softmax(torch.as_tensor(logits).float().flatten(2), dim=2)
    h = -(q * torch.log(q.clamp_min(1e-12))).sum(2) / math.log(q.shape[2])
    return h.mean(1)


__all__ = ["decode_heatmaps", "decode_logits", "heatmap_entropy"]
