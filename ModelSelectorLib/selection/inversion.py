"""Model inversion: synthesise the inputs a model "expects" from the model alone (DeepInversion-style).

Starting from smooth noise, an input batch is optimised so that the batch statistics entering every
batch-norm layer match that layer's ``running_mean`` / ``running_var``, the model's output is confident the
way its task's outputs are (the runtime's :meth:`~ModelSelectorLib.models.base.TaskRuntime.inversion_objective`:
confident foreground for a segmentation model, one sharp heatmap peak per landmark for a landmark model),
under an image prior (total variation, L2, periodic blur, random jitter), and, given the selector's encoder,
so that the encoder reads the input as the card's modality and region (:mod:`.encoder_guide`: the model's
card is all that term needs, no training image). The result is mapped back from
the network's normalised intensities to image units (HU for CT models) and given the bundle's
``target_spacing``, so the encoder sees it at the physical scale the model expects.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from collections.abc import Sequence
from typing import Any, Optional

import numpy as np

from ..errors import BundleError, InputError
from ..io.geometry import CANONICAL_AXCODES, axcodes_direction
from ..io.image import Image
from ..models.bnstats import BNStatHooks
from ..models.preprocessing import effective_intensity
from ..models.registry import runtime_for
from ..progress import check_cancel, progress_bar
from ..zoo.bundle import load_bundle
from .encoder_guide import EncoderGuide


@dataclasses.dataclass
class InversionSettings:
    """Weights and schedule of :func:`synthesize_inputs`.

    Attributes:
        lr: Adam learning rate on the input (normalised intensity units).
        bn: weight of the batch-norm statistics term (mean Gaussian KL per channel, averaged over layers).
        confidence: weight of the output term (mean voxel entropy + missing-foreground penalty).
        min_foreground: foreground fraction (1 - p(background), batch mean) below which the output term
            pushes for more foreground.
        tv: weight of the total-variation prior (mean absolute difference of neighbours).
        l2: weight of the L2 prior (squared distance from the intensity range's centre).
        blur_every: every this many steps the input is smoothed with a 3-tap binomial filter (0: never).
        jitter: maximum random circular shift (voxels) per spatial axis at each step.
        encoder: weight of the encoder term (:class:`~.encoder_guide.EncoderGuide`: cross-entropy of the
            selector's encoder reading the input as the card's modality and region); used when an encoder is
            given and it has a class of the card's domain.
    """

    lr: float = 0.05
    bn: float = 1.0
    confidence: float = 0.3
    min_foreground: float = 0.15
    tv: float = 0.3
    l2: float = 0.01
    blur_every: int = 10
    jitter: int = 2
    encoder: float = 0.3


def _blur(x: Any) -> Any:
    """Separable 3-tap binomial smoothing of ``(B, 1, *spatial)`` along every spatial axis (replicate edges)."""
    import torch.nn.functional as F

    nd = x.dim() - 2
    for axis in range(nd):
        pad = [0, 0] * nd
        pad[2 * (nd - 1 - axis)] = 1
        pad[2 * (nd - 1 - axis) + 1] = 1
        xp = F.pad(x, pad, mode="replicate")
        n = x.shape[2 + axis]
        a = xp.narrow(2 + axis, 0, n)
        b = xp.narrow(2 + axis, 1, n)
        c = xp.narrow(2 + axis, 2, n)
        x = 0.25 * a + 0.5 * b + 0.25 * c
    return x


def _tv(x: Any) -> Any:
    """Mean absolute difference of neighbouring voxels of ``x`` ``(B, C, *spatial)``, averaged over the axes
    longer than one voxel (a slice-wise model's one-voxel axis has no neighbours: its term would be NaN)."""
    import torch

    terms = [torch.diff(x, dim=d).abs().mean() for d in range(2, x.dim()) if x.shape[d] > 1]
    return torch.stack(terms).mean() if terms else x.new_zeros(())


def _output_range(intensity: dict[str, Any]) -> tuple[float, float]:
    """``(b_min, b_max)``: where a range or percentile normalisation puts its input range (default 0, 1)."""
    return float(intensity.get("b_min", 0.0)), float(intensity.get("b_max", 1.0))


def _intensity_range(
    intensity: Optional[dict[str, Any]], modality: Optional[str] = None
) -> tuple[float, float, float]:
    """``(low, high, centre)`` of the network's normalised input intensities for the card's normalisation
    (:func:`~ModelSelectorLib.models.preprocessing.effective_intensity` of its ``intensity`` and modality)."""
    intensity = effective_intensity(intensity, modality)
    if intensity.get("mode", "mr") in ("ct", "percentile"):
        b_min, b_max = _output_range(intensity)
        return min(b_min, b_max), max(b_min, b_max), (b_min + b_max) / 2
    return -3.0, 5.0, 0.0


def denormalize(
    array: np.ndarray, intensity: Optional[dict[str, Any]], modality: Optional[str] = None
) -> np.ndarray:
    """Map a network-normalised array back to image units (the inverse of ``normalize_intensity`` for the card's
    ``intensity`` and ``modality``, :func:`~ModelSelectorLib.models.preprocessing.effective_intensity`).

    ``ct``: ``[b_min, b_max]`` (default ``[0, 1]``) back to ``[a_min, a_max]`` (HU). ``percentile``: ``[b_min,
    b_max]`` to 0-1000. ``mr`` (z-scores, whose scale is lost): the 0.5-99.5 % range mapped linearly to 0-1000,
    clipped at 0.
    """
    intensity = effective_intensity(intensity, modality)
    mode = intensity.get("mode", "mr")
    a = np.asarray(array, dtype=np.float32)
    if mode in ("ct", "percentile"):
        b_min, b_max = _output_range(intensity)
        unit = (a - b_min) / (b_max - b_min if b_max != b_min else 1.0)
        if mode == "percentile":
            return unit * 1000.0
        a_min, a_max = float(intensity.get("a_min", -1000.0)), float(intensity.get("a_max", 1000.0))
        return unit * (a_max - a_min) + a_min
    lo, hi = np.percentile(a, (0.5, 99.5))
    return np.clip((a - lo) / max(float(hi - lo), 1e-6) * 1000.0, 0.0, None).astype(np.float32)


def loaded_bundle(bundle: Any) -> Any:
    """A loaded bundle: ``bundle`` itself, or the bundle folder ``bundle`` loaded."""
    if isinstance(bundle, (str, os.PathLike)):
        return load_bundle(bundle)
    if not hasattr(bundle, "network") or not hasattr(bundle, "card"):
        raise BundleError(f"expected a bundle folder or a loaded bundle, not {type(bundle).__name__}.")
    return bundle


def _start_batch(n: int, shape: Sequence[int], lo: float, hi: float, gen: Any) -> Any:
    """Smooth noise ``(n, 1, *shape)`` in the middle half of the intensity range ``[lo, hi]``."""
    import torch

    x0 = torch.rand([n, 1, *shape], generator=gen)
    for _ in range(3):
        x0 = _blur(x0)
    return lo + (hi - lo) * (0.25 + 0.5 * (x0 - x0.amin()) / (x0.amax() - x0.amin() + 1e-6))


def _optimise(
    runtime: Any, x: Any, steps: int, st: InversionSettings, hooks: BNStatHooks, gen: Any, lo: float, hi: float,
    centre: float, cancel: Optional[Any], progress: bool, guide: Optional[EncoderGuide] = None,
) -> dict[str, float]:  # fmt: skip
    """Adam on the input batch ``x`` (in place) for ``steps`` steps; returns the last step's loss terms (with
    ``guide``, also ``domain``: the guide's mean probability of the card's domain)."""
    import torch

    nd = x.dim() - 2
    network = runtime.network
    use_bn = bool(hooks.layers) and st.bn > 0
    opt = torch.optim.Adam([x], lr=st.lr * (hi - lo))
    last: dict[str, float] = {}
    bar = progress_bar(range(steps), total=steps, desc=f"inverting {runtime.card.name}", disable=not progress)
    for step in bar:
        check_cancel(cancel)
        shifts = [int(s) for s in torch.randint(-st.jitter, st.jitter + 1, (nd,), generator=gen)]
        xin = torch.roll(x, shifts=shifts, dims=list(range(2, 2 + nd))) if st.jitter else x
        hooks.reset()
        out = network(xin)
        if isinstance(out, (list, tuple)):
            out = out[0]
        conf, fg = runtime.inversion_objective(out, st.min_foreground)
        bn = hooks.mean() if use_bn else torch.zeros((), device=x.device)
        loss = st.bn * bn + st.confidence * conf + st.tv * _tv(x) / (hi - lo)
        loss = loss + st.l2 * ((x - centre) / (hi - lo)).pow(2).mean()
        if guide is not None:
            enc_loss, domain = guide.loss(xin)
            loss = loss + st.encoder * enc_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            if st.blur_every and (step + 1) % st.blur_every == 0:
                x.copy_(_blur(x))
            x.clamp_(lo, hi)
        last = {"loss": float(loss.detach()), "bn": float(bn.detach()), "fg": float(fg.detach())}
        if guide is not None:
            last["domain"] = float(domain.detach())
        if progress and step % 10 == 0:
            bar.set_postfix(**last)
    if progress:
        bar.close()
    return last


def synthesize_inputs(
    bundle: Any,
    n: int = 4,
    steps: int = 100,
    seed: int = 0,
    size: Optional[Sequence[int]] = None,
    settings: Optional[InversionSettings] = None,
    info: Optional[dict[str, Any]] = None,
    cancel: Optional[Any] = None,
    progress: bool = True,
    encoder: Optional[Any] = None,
) -> list[Image]:
    """Synthesise ``n`` inputs that a model "expects", from the model alone (model inversion).

    The input batch ``x`` of shape ``(n, 1, *size)`` (network layout ``x, y[, z]``, normalised intensities)
    starts as smooth noise and is optimised with Adam for ``steps`` steps on::

        bn * mean_layers KL(batch stats || running stats)          (skipped without running statistics)
      + confidence * the runtime's inversion objective             (segmentation: mean voxel entropy +
                                                                    10 * relu(min_foreground - foreground);
                                                                    landmarks: normalised spatial entropy
                                                                    of each landmark's heatmap)
      + tv * total variation + l2 * mean (x - centre)^2
      + encoder * -log p(the card's modality and region)           (with ``encoder``: the selector's encoder
                                                                    reading the input, :class:`~.encoder_guide.
                                                                    EncoderGuide`; the model's card is all
                                                                    it needs)

    with a random circular shift of up to ``jitter`` voxels per axis at each step, periodic blur, and ``x``
    clipped to the intensity mode's range. Works for 2D and 3D networks. Cost: one forward and backward
    pass per step of the model (and of the encoder on up to nine 64 px views per input, with the encoder term); on
    one CPU core the default 100 steps for 4 inputs take 13-23 s for the starter zoo's chest models and 45-200 s
    for its 3D models (mr-hippocampus the longest).

    Args:
        bundle: a bundle folder or a loaded bundle (:func:`ModelSelectorLib.zoo.load_bundle`).
        n: number of inputs to synthesise (one optimised batch).
        steps: optimisation steps.
        seed: random seed (initial noise and jitter).
        size: spatial size in voxels, network layout ``(x, y[, z])`` (default: the card's ``roi_size``).
        settings: loss weights and schedule (:class:`InversionSettings`).
        info: if a dict is given, it is filled with ``bn_layers``, ``method``, ``final_loss``,
            ``bn_divergence``, ``foreground``, ``encoder_classes`` (the card's classes the encoder term asked
            for; empty without the term), ``encoder_domain`` (the term's last probability of them) and
            ``seconds``.
        cancel: Event-like; :class:`~ModelSelectorLib.errors.Cancelled` when set.
        progress: show a progress bar.
        encoder: the selector's :class:`~.encoder.Encoder`, for the encoder term (``settings.encoder`` > 0).

    Returns:
        ``n`` :class:`~ModelSelectorLib.io.Image` objects in image units (see :func:`denormalize`), with the
        card's ``target_spacing`` (mm), origin 0 and the canonical RAS direction of the network's grid.

    Raises:
        BundleError: the bundle has no usable spatial size.
    """
    import torch

    if n < 1 or steps < 0:
        raise InputError(f"n must be >= 1 and steps >= 0 (got n={n}, steps={steps}).")
    runtime = runtime_for(loaded_bundle(bundle))
    card, network = runtime.card, runtime.network
    st = settings or InversionSettings()
    nd = int(card.spatial_dims)
    shape = [int(s) for s in (size or card.roi_size or [64] * nd)]
    if len(shape) != nd:
        raise BundleError(f"{card.name}: size {shape} does not match the model's {nd} spatial dimensions.")
    lo, hi, centre = _intensity_range(card.intensity, card.modality)
    t0 = time.monotonic()
    gen = torch.Generator().manual_seed(int(seed))
    was_training = network.training
    network.eval()
    req = [p.requires_grad for p in network.parameters()]
    for p in network.parameters():
        p.requires_grad_(False)
    x = _start_batch(n, shape, lo, hi, gen).to(next(network.parameters()).device).requires_grad_(True)
    hooks = BNStatHooks(network)
    guide = EncoderGuide(encoder, card) if encoder is not None and st.encoder > 0 else None
    guide = guide if guide is not None and guide.active else None
    try:
        with hooks, guide or contextlib.nullcontext():
            last = _optimise(runtime, x, steps, st, hooks, gen, lo, hi, centre, cancel, progress, guide)
    finally:
        for p, r in zip(network.parameters(), req):
            p.requires_grad_(r)
        network.train(was_training)
    images = _to_images(x.detach().cpu().numpy()[:, 0], card)
    if info is not None:
        info.update(_record(last, len(hooks.layers), st, guide), steps=steps, size=shape, seed=int(seed),
                    seconds=round(time.monotonic() - t0, 2))  # fmt: skip
    return images


def _record(last: dict[str, float], bn_layers: int, st: InversionSettings, guide: Optional[EncoderGuide]
            ) -> dict[str, Any]:  # fmt: skip
    """What a synthesis records: its method, the last step's loss terms and its settings."""
    use_bn = bool(bn_layers) and st.bn > 0
    method = ("batch-norm statistics + confidence + image prior" if use_bn
              else "confidence + image prior (the model has no batch-norm running statistics)")  # fmt: skip
    if guide is not None:
        method += f" + the encoder's reading as {' or '.join(guide.names)}"
    return {"bn_layers": bn_layers, "method": method, "final_loss": last.get("loss"),
            "bn_divergence": last.get("bn") if use_bn else None, "foreground": last.get("fg"),
            "settings": dataclasses.asdict(st), "encoder_classes": guide.names if guide is not None else [],
            "encoder_domain": last.get("domain")}  # fmt: skip


def _to_images(arr: np.ndarray, card: Any) -> list[Image]:
    """Optimised inputs ``(n, x, y[, z])`` as images in image units on the model's canonical grid."""
    nd = int(card.spatial_dims)
    spacing = tuple(float(s) for s in (card.target_spacing or [1.0] * nd))
    direction = tuple(float(d) for d in axcodes_direction(CANONICAL_AXCODES, nd).ravel())
    images = []
    for i in range(len(arr)):
        a = np.ascontiguousarray(arr[i].transpose(tuple(range(nd))[::-1]))  # (x, y[, z]) -> (z, y, x)
        meta = {"synthetic": True, "origin": "data-free", "model": card.name, "source": f"synthesised-{i}"}
        images.append(
            Image(denormalize(a, card.intensity, card.modality), spacing, (0.0,) * nd, direction, meta)
        )
    return images
