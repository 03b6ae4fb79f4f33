"""The encoder's reading of an input being synthesised, in a form that gradients pass through, so that model
inversion (:mod:`.inversion`) can also ask for inputs that the selector's own encoder reads as the model
card's modality and body region.

Inversion alone makes inputs that satisfy the model (its batch-norm statistics, a confident output) but often
look like textures to the encoder, which then places them far from every real image of the model's domain.
:class:`EncoderGuide` adds a cross-entropy term on the encoder's class probabilities of the card's modality x
region classes. It needs nothing but the model's card and the bundled encoder: no training image.

What is differentiable here, against the exact pipeline (:func:`~.views.image_views`):

- views: the synthesised grid's middle slices (3 per plane, at 30, 50 and 70 % of each axis) in the
  pipeline's orientation (LPS, radiological, superior up), resized to the view size keeping their physical
  aspect and padded with their minimum, instead of slices of a 2 mm resampling;
- channel 0: the 1-99 % percentiles scaled to ``[0, 1]`` with :func:`torch.quantile` (linear interpolation
  instead of nearest rank);
- channel 1: each pixel's rank as the mean of ``sigmoid((v - r_k) / (temperature * span))`` over ``n_refs``
  quantiles ``r_k`` of the view (:func:`soft_encoder_channels`), instead of the exact mid-rank.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .views import THIN_PLANE_VOXELS, fit_views, is_thin_plane

#: fractions of each axis at which the guide takes its slices of a synthesised volume
SLICE_FRACTIONS = (0.3, 0.5, 0.7)


def domain_classes(classes: Sequence[str], card: Any) -> list[int]:
    """Indices of the encoder classes (``"MODALITY:REGION"``) of the card's modality and one of its regions."""
    regions = set(str(card.body_region).split(";"))
    return [
        i
        for i, c in enumerate(classes)
        if c.partition(":")[0] == card.modality and c.partition(":")[2] in regions
    ]


def soft_encoder_channels(views: Any, temperature: float = 0.01, n_refs: int = 128) -> Any:
    """A differentiable :func:`~.views.encoder_channels`.

    Args:
        views: float tensor ``(B, H, W)`` in any units.
        temperature: width of the soft rank's step, as a fraction of the view's 1-99 % range.
        n_refs: number of the view's quantiles that each pixel is compared with.

    Returns:
        tensor ``(B, 2, H, W)``: channel 0 the 1-99 % percentiles scaled to ``[0, 1]`` (clipped), channel 1 the
        soft rank in ``[0, 1]``.
    """
    import torch

    b, h, w = views.shape
    flat = views.reshape(b, h * w)
    q = torch.quantile(flat, torch.tensor([0.01, 0.99], dtype=flat.dtype, device=flat.device), dim=1)
    lo, span = q[0][:, None], (q[1] - q[0]).clamp_min(1e-6)[:, None]
    c0 = ((flat - lo) / span).clamp(0.0, 1.0)
    refs = torch.quantile(
        flat, torch.linspace(0.0, 1.0, n_refs, dtype=flat.dtype, device=flat.device), dim=1
    ).t()
    c1 = torch.sigmoid((flat[:, :, None] - refs[:, None, :]) / (temperature * span[:, :, None])).mean(-1)
    return torch.stack([c0, c1], dim=1).reshape(b, 2, h, w)


def grid_views(x: Any, spacing: Sequence[float], size: int, view_spacing_mm: float = 2.0) -> Any:
    """The guide's views ``(n, size, size)`` of a batch on a model's grid.

    Args:
        x: ``(B, 1, X, Y)`` or ``(B, 1, X, Y, Z)``, the network layout on the canonical RAS grid
            (:func:`~.inversion.synthesize_inputs`); a volume one slice deep counts as a 2D image, as in the
            exact pipeline.
        spacing: the grid's spacing ``(x, y[, z])`` in mm.
        size: the view side in pixels.
        view_spacing_mm: the pipeline's view grid spacing, which sets how narrow a thin plane is.
    """
    import torch

    sx, sy = float(spacing[0]), float(spacing[1])
    if x.dim() == 4 or x.shape[-1] == 1:
        img = x[:, 0] if x.dim() == 4 else x[:, 0, :, :, 0]
        return fit_views(img.transpose(1, 2), sy / sx, size)  # rows y, columns x, as the image array
    sz = float(spacing[2])
    a = x[:, 0].permute(0, 3, 2, 1).flip(2).flip(3)  # (B, Z, Y, X) on LPS axes: rows posterior, columns left
    nz, ny, nx = a.shape[1:]
    planes = [  # (slices, in-plane extents in mm, aspect), each slice (rows, columns)
        ([a[:, int(round(f * (nz - 1)))] for f in SLICE_FRACTIONS], (ny * sy, nx * sx), sy / sx),
        ([a[:, :, int(round(f * (ny - 1)))].flip(1) for f in SLICE_FRACTIONS], (nz * sz, nx * sx), sz / sx),
        (
            [a[:, :, :, int(round(f * (nx - 1)))].flip(1) for f in SLICE_FRACTIONS],
            (nz * sz, ny * sy),
            sz / sy,
        ),
    ]
    # as the exact pipeline: planes that are thin strips only when nothing else is left; padded with the
    # volume's minimum
    wide = [p for p in planes if not is_thin_plane(p[1], THIN_PLANE_VOXELS * view_spacing_mm)] or planes
    fill = a.amin(dim=(1, 2, 3))
    return torch.cat([fit_views(s, aspect, size, fill) for slices, _, aspect in wide for s in slices])


class EncoderGuide:
    """The cross-entropy of the encoder's reading of a synthesised batch against the card's domain.

    Args:
        encoder: a :class:`~.encoder.Encoder`.
        card: the model's card (modality, body region, target spacing).
    """

    def __init__(self, encoder: Any, card: Any) -> None:
        self.encoder = encoder
        self.targets = domain_classes(encoder.classes, card)
        self.names = [encoder.classes[i] for i in self.targets]
        nd = int(card.spatial_dims)
        self.spacing = [float(s) for s in (card.target_spacing or [1.0] * nd)]

    @property
    def active(self) -> bool:
        """Whether the encoder has a class of the card's domain (else the guide has nothing to ask for)."""
        return bool(self.targets)

    def __enter__(self) -> EncoderGuide:
        params = list(self.encoder.net.parameters())
        self._req = [p.requires_grad for p in params]
        for p in params:
            p.requires_grad_(False)
        return self

    def __exit__(self, *exc: Any) -> None:
        for p, r in zip(self.encoder.net.parameters(), self._req):
            p.requires_grad_(r)

    def loss(self, x: Any) -> tuple[Any, Any]:
        """``(-mean log p(domain), mean p(domain))`` over the guide's views of ``x`` (see :func:`grid_views`),
        ``p(domain)`` being the encoder's probability of any of the card's modality x region classes."""
        import torch

        views = grid_views(x, self.spacing, self.encoder.image_size,
                           float(self.encoder.config.get("spacing_mm", 2.0)))  # fmt: skip
        net = self.encoder.net
        # the encoder may sit on another device than the model being inverted
        channels = soft_encoder_channels(views).to(device=self.encoder.device, dtype=torch.float32)
        logp = torch.log_softmax(net.logits(net(channels)), dim=1)
        domain = torch.logsumexp(logp[:, self.targets], dim=1).to(x.device)
        return -domain.mean(), domain.exp().mean()


__all__ = [
    "EncoderGuide",
    "SLICE_FRACTIONS",
    "domain_classes",
    "grid_views",
    "soft_encoder_channels",
]
