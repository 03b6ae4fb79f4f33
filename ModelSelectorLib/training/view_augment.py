"""Augmentation of the encoder's raw views that imitates other scanners and sites.

Views are augmented in their raw grey values (each view scaled to ``[0, 1]``), *before* the encoder's
unit-free channels are computed (:func:`~ModelSelectorLib.selection.views.encoder_channels`), so every
intensity change below is one a real acquisition could make. :func:`augment_views` applies, each with its
own probability and random strength per view:

- geometry: random resized crop (zoom 1-1.6, shift), rotation (+-15 deg), horizontal flip (p 0.5), vertical
  flip (p 0.1), in one affine resampling;
- field of view: a smaller rectangular field (60-100 % of each side, p 0.25) or a circular one (p 0.15),
  the rest set to the background value;
- resolution: down- and up-sampling by 1.5-4 along each axis independently (p 0.3);
- contrast curves: gamma 0.5-2 (p 0.5); a window that clips the darkest and brightest 0-15 % (p 0.3);
- bias field: a smooth multiplicative field ``exp(low-order polynomial)`` of up to +-40 % (p 0.35);
- noise: Gaussian (std 0-0.05, p 0.4) or Rician (magnitude of complex Gaussian noise, as MR, p 0.15);
- burned-in text: 1-4 short lines of glyph-like bright marks near the corners (p 0.3);
- borders: a black or white frame of 1-5 px on one to four sides (p 0.2).

Typical use::

    gen = torch.Generator().manual_seed(0)
    x = augment_views(x, gen)          # (B, S, S) raw views in [0, 1] -> augmented, same shape
"""

from __future__ import annotations

import math
from typing import Any


def _uniform(gen: Any, lo: float, hi: float, n: int) -> Any:
    import torch

    return lo + (hi - lo) * torch.rand(n, generator=gen)


def _chance(gen: Any, p: float, n: int) -> Any:
    import torch

    return torch.rand(n, generator=gen) < p


def affine(x: Any, gen: Any) -> Any:
    """Random resized crop, rotation and flips of views ``(B, S, S)`` (background = each view's minimum)."""
    import torch
    import torch.nn.functional as F

    b = x.shape[0]
    sc = 1.0 / _uniform(gen, 1.0, 1.6, b)
    ang = _uniform(gen, -15.0, 15.0, b) * math.pi / 180.0
    flip_h = torch.where(_chance(gen, 0.5, b), -1.0, 1.0)
    flip_v = torch.where(_chance(gen, 0.1, b), -1.0, 1.0)
    tx, ty = _uniform(gen, -1, 1, b) * (1 - sc), _uniform(gen, -1, 1, b) * (1 - sc)
    cos, sin = torch.cos(ang) * sc, torch.sin(ang) * sc
    theta = torch.stack(
        [torch.stack([cos * flip_h, -sin * flip_v, tx], 1), torch.stack([sin * flip_h, cos * flip_v, ty], 1)],
        1,
    )
    xi = x[:, None]
    grid = F.affine_grid(theta, list(xi.shape), align_corners=False)
    mins = xi.amin(dim=(2, 3), keepdim=True)
    return (
        F.grid_sample(xi - mins, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + mins
    )[:, 0]


def field_of_view(x: Any, gen: Any, p_rect: float = 0.25, p_circle: float = 0.15) -> Any:
    """Keep a smaller rectangular or circular field of view; the rest becomes the view's minimum."""
    import torch

    b, s, _ = x.shape
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, s), torch.linspace(-1, 1, s), indexing="ij")
    keep = torch.ones_like(x, dtype=torch.bool)
    rect = _chance(gen, p_rect, b)
    hw, hh = _uniform(gen, 0.6, 1.0, b), _uniform(gen, 0.6, 1.0, b)
    cx, cy = _uniform(gen, -1, 1, b) * (1 - hw), _uniform(gen, -1, 1, b) * (1 - hh)
    in_rect = ((xx[None] - cx[:, None, None]).abs() <= hw[:, None, None]) & (
        (yy[None] - cy[:, None, None]).abs() <= hh[:, None, None]
    )
    keep &= ~rect[:, None, None] | in_rect
    circ = _chance(gen, p_circle, b)
    r = _uniform(gen, 0.8, 1.1, b)
    keep &= ~circ[:, None, None] | (xx[None] ** 2 + yy[None] ** 2 <= r[:, None, None] ** 2)
    return torch.where(keep, x, x.amin(dim=(1, 2), keepdim=True))


def resolution(x: Any, gen: Any, p: float = 0.3) -> Any:
    """Down- and up-sample the chosen views by 1.5-4 along each axis independently (one factor per batch)."""
    import torch.nn.functional as F

    b, s, _ = x.shape
    pick = _chance(gen, p, b)
    if not bool(pick.any()):
        return x
    fy, fx = (float(_uniform(gen, 1.5, 4.0, 1)) for _ in range(2))
    sub = x[pick][:, None]
    small = F.interpolate(sub, size=(max(8, int(s / fy)), max(8, int(s / fx))), mode="bilinear",
                          align_corners=False, antialias=True)  # fmt: skip
    x = x.clone()
    x[pick] = F.interpolate(small, size=(s, s), mode="bilinear", align_corners=False)[:, 0]
    return x


def contrast(x: Any, gen: Any, p_gamma: float = 0.5, p_window: float = 0.3) -> Any:
    """Gamma curves and clipping windows on views in ``[0, 1]`` (rescaled to ``[0, 1]`` first)."""
    import torch

    b = x.shape[0]
    lo, hi = x.amin(dim=(1, 2), keepdim=True), x.amax(dim=(1, 2), keepdim=True)
    x = (x - lo) / (hi - lo).clamp_min(1e-6)
    gamma = torch.where(_chance(gen, p_gamma, b), torch.exp(_uniform(gen, -0.7, 0.7, b)), torch.ones(b))
    x = x.pow(gamma[:, None, None])
    win = _chance(gen, p_window, b)
    a = torch.where(win, _uniform(gen, 0.0, 0.15, b), torch.zeros(b))[:, None, None]
    c = torch.where(win, _uniform(gen, 0.85, 1.0, b), torch.ones(b))[:, None, None]
    return ((x - a) / (c - a)).clamp(0.0, 1.0)


def bias_field(x: Any, gen: Any, p: float = 0.35, strength: float = 0.4) -> Any:
    """Multiply the chosen views by ``exp`` of a random quadratic polynomial of the pixel position."""
    import torch

    b, s, _ = x.shape
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, s), torch.linspace(-1, 1, s), indexing="ij")
    basis = torch.stack([xx, yy, xx * yy, xx**2, yy**2])  # (5, S, S)
    coef = (torch.rand(b, 5, generator=gen) * 2 - 1) * strength / 2.0
    coef = coef * _chance(gen, p, b)[:, None]
    return x * torch.exp(torch.einsum("bk,kyx->byx", coef, basis))


def noise(x: Any, gen: Any, p_gauss: float = 0.4, p_rice: float = 0.15) -> Any:
    """Gaussian noise, or Rician noise (the magnitude of complex Gaussian noise, as in MR magnitude images)."""
    import torch

    b = x.shape[0]
    std = _uniform(gen, 0.0, 0.05, b)[:, None, None]
    g = _chance(gen, p_gauss, b)[:, None, None]
    r = _chance(gen, p_rice, b)[:, None, None] & ~g
    n1 = torch.randn(x.shape, generator=gen) * std
    n2 = torch.randn(x.shape, generator=gen) * std
    x = torch.where(g, x + n1, x)
    return torch.where(r, torch.sqrt((x + n1) ** 2 + n2**2), x)


def text_overlay(x: Any, gen: Any, p: float = 0.3) -> Any:
    """Burn 1-4 short lines of glyph-like marks (random 3 x 5 px patterns) in the view's brightest value
    into a corner region, as scanners and viewers print patient data and annotations."""
    import torch

    b, s, _ = x.shape
    x = x.clone()
    for i in torch.nonzero(_chance(gen, p, b)).flatten().tolist():
        top = float(x[i].max())
        n_lines = int(torch.randint(1, 5, (1,), generator=gen))
        right = bool(torch.rand(1, generator=gen) < 0.5)
        bottom = bool(torch.rand(1, generator=gen) < 0.5)
        for line in range(n_lines):
            n_chars = int(torch.randint(2, 9, (1,), generator=gen))
            y0 = (s - 7 * (line + 1)) if bottom else 1 + 7 * line
            x0 = s - 1 - 4 * n_chars if right else 1
            if y0 < 0 or x0 < 0:
                continue
            glyphs = torch.rand(5, 4 * n_chars, generator=gen) < 0.45
            glyphs[:, 3::4] = False  # a gap between characters
            region = x[i, y0 : y0 + 5, x0 : x0 + 4 * n_chars]
            region[glyphs[: region.shape[0], : region.shape[1]]] = top
    return x


def borders(x: Any, gen: Any, p: float = 0.2) -> Any:
    """A black or white frame 1-5 px wide on one to four sides of the chosen views."""
    import torch

    b, s, _ = x.shape
    x = x.clone()
    for i in torch.nonzero(_chance(gen, p, b)).flatten().tolist():
        value = float(x[i].max()) if bool(torch.rand(1, generator=gen) < 0.5) else float(x[i].min())
        width = int(torch.randint(1, 6, (1,), generator=gen))
        sides = torch.rand(4, generator=gen) < 0.6
        if not bool(sides.any()):
            sides[0] = True
        if sides[0]:
            x[i, :width] = value
        if sides[1]:
            x[i, -width:] = value
        if sides[2]:
            x[i, :, :width] = value
        if sides[3]:
            x[i, :, -width:] = value
    return x


def augment_views(x: Any, gen: Any) -> Any:
    """All the augmentations of the module docstring, in acquisition order, on raw views ``(B, S, S)``.

    Args:
        x: float tensor ``(B, S, S)``, each view's grey values in ``[0, 1]``.
        gen: a ``torch.Generator`` (reproducible runs).

    Returns:
        float tensor ``(B, S, S)``, not rescaled (the encoder's channels do not depend on units).
    """
    x = affine(x, gen)
    x = field_of_view(x, gen)
    x = bias_field(x, gen)
    x = resolution(x, gen)
    x = contrast(x, gen)
    x = noise(x, gen)
    x = text_overlay(x, gen)
    return borders(x, gen)


__all__ = ["affine", "augment_views", "bias_field", "borders", "contrast", "field_of_view", "noise",
           "resolution", "text_overlay"]  # fmt: skip
