"""Prototypes: the embeddings that represent a zoo model in the index, since its training data is not at hand.

Two kinds, each row recording its ``origin``:

- **exemplar** prototypes (:func:`exemplar_prototypes`): the encoder's view embeddings of a few example
  inputs supplied with the model;
- **data-free** prototypes (:func:`data_free_prototypes`): embeddings of inputs synthesised from the model
  alone by model inversion (:func:`synthesize_inputs`): starting from smooth noise, an input batch is
  optimised so that the batch statistics entering every batch-norm layer match that layer's
  ``running_mean`` / ``running_var`` (DeepInversion), the model's output is confident and contains
  foreground (for a landmark model: one sharp heatmap peak per landmark), under an image prior (total
  variation, L2, periodic blur, random jitter). The result is mapped back from the network's normalised
  intensities to image units (HU for CT models) and given the bundle's ``target_spacing``, so the encoder
  sees it at the physical scale the model expects.

Prototypes are stored inside the bundle folder::

    BUNDLE/prototypes/prototypes.npz    vectors: float32 (n, 128), unit rows
    BUNDLE/prototypes/prototypes.json   per row: origin, source, view; model name/version; encoder id
    BUNDLE/docs/prototypes/*.png        a few synthesised inputs, for people to look at

Typical use::

    from ModelSelectorLib.prototypes import generate_for_model
    generate_for_model(zoo, "spleen_ct", exemplars=["a.nii.gz", "b.nii.gz"], data_free=4)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np

from .atomic import atomic_dir, atomic_path
from .errors import BundleError, InputError, ModelSelectorError
from .io import Image, read_image
from .progress import check_cancel, progress_bar

PathLike = Union[str, "os.PathLike[str]"]

ORIGINS = ("exemplar", "data-free")
PROTOTYPES_DIR = "prototypes"
VECTORS_FILE = "prototypes.npz"
RECORDS_FILE = "prototypes.json"
PNG_DIR = Path("docs") / "prototypes"
FORMAT = 1

_IMAGE_SUFFIXES = (
    ".nii",
    ".nii.gz",
    ".nrrd",
    ".mha",
    ".mhd",
    ".png",
    ".jpg",
    ".jpeg",
    ".tif",
    ".tiff",
    ".dcm",
)


# --- the prototype set ----------------------------------------------------------------------------------
@dataclasses.dataclass
class PrototypeSet:
    """Prototype vectors of one model with one record per row.

    Attributes:
        vectors: float32 ``(n, d)``, rows of unit L2 norm (encoder embeddings).
        rows: ``n`` dicts with ``origin`` (``"exemplar"`` or ``"data-free"``), ``source`` (file path or
            a name such as ``"synthesised-2"``) and ``view`` (index of the view within its source).
        model: model name.
        version: model version.
        meta: facts about how the prototypes were made, per origin (``meta["data-free"]`` holds the
            inversion settings and whether batch-norm statistics were available); ``meta["encoder"]``
            identifies the encoder (see :func:`encoder_id`).
    """

    vectors: np.ndarray
    rows: list[dict[str, Any]]
    model: str = ""
    version: str = ""
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        vectors = np.asarray(self.vectors, dtype=np.float32)
        if not self.rows:  # numpy cannot infer the width of an empty reshape
            self.vectors = vectors.reshape(0, vectors.shape[-1] if vectors.ndim == 2 else 0)
        else:
            self.vectors = vectors.reshape(len(self.rows), -1)

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1]) if self.vectors.ndim == 2 and len(self.rows) else 0

    def origins(self) -> dict[str, int]:
        """Number of rows per origin."""
        out: dict[str, int] = {}
        for r in self.rows:
            out[r["origin"]] = out.get(r["origin"], 0) + 1
        return out

    def select(self, origins: Sequence[str]) -> PrototypeSet:
        """The rows whose origin is in ``origins``."""
        keep = [i for i, r in enumerate(self.rows) if r["origin"] in set(origins)]
        return PrototypeSet(
            self.vectors[keep] if keep else np.zeros((0, self.vectors.shape[-1]), np.float32),
            [dict(self.rows[i]) for i in keep],
            self.model,
            self.version,
            dict(self.meta),
        )

    def merged(self, other: PrototypeSet) -> PrototypeSet:
        """This set followed by ``other`` (``meta`` of ``other`` wins per key)."""
        if len(self) and len(other) and self.vectors.shape[1] != other.vectors.shape[1]:
            raise ModelSelectorError(
                f"prototype dimensions differ ({self.vectors.shape[1]} vs {other.vectors.shape[1]}); "
                "regenerate all prototypes with the same encoder."
            )
        parts = [v for v in (self.vectors, other.vectors) if len(v)]
        vectors = np.concatenate(parts) if parts else np.zeros((0, max(self.dim, other.dim, 1)), np.float32)
        return PrototypeSet(
            vectors,
            [dict(r) for r in self.rows + other.rows],
            self.model or other.model,
            self.version or other.version,
            {**self.meta, **other.meta},
        )


def encoder_id(encoder: Any) -> str:
    """A short fingerprint of an encoder's weights (sha1 of its parameters, 12 hex digits).

    Prototypes and the index record it, so vectors made by different encoders are never mixed.
    """
    cached = getattr(encoder, "_modelselector_id", None)
    if cached:
        return str(cached)
    h = hashlib.sha1()
    for k, v in sorted(encoder.net.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().numpy().tobytes())
    ident = h.hexdigest()[:12]
    try:
        encoder._modelselector_id = ident
    except AttributeError:
        pass
    return ident


def _as_image(item: Union[Image, PathLike]) -> tuple[Image, str]:
    if isinstance(item, Image):
        return item, str(item.meta.get("path", ""))
    p = Path(item)
    return read_image(p), str(p)


def exemplar_prototypes(
    encoder: Any,
    images: Sequence[Union[Image, PathLike]],
    model: str = "",
    version: str = "",
    cancel: Optional[Any] = None,
) -> PrototypeSet:
    """Embed example inputs of a model: one prototype per encoder view of each image.

    Args:
        encoder: a :class:`~ModelSelectorLib.encoder.Encoder`.
        images: images or image paths (2D or 3D).
        model, version: the model these exemplars belong to (recorded in the set).
        cancel: Event-like; :class:`~ModelSelectorLib.errors.Cancelled` when set.

    Returns:
        a :class:`PrototypeSet` of origin ``"exemplar"``; ``source`` is the image's file path when known,
        else ``"exemplar-<i>"``.

    Raises:
        InputError: no images, or an unreadable image.
    """
    if not images:
        raise InputError("no exemplar images given; pass image files or a folder of them.")
    vecs: list[np.ndarray] = []
    rows: list[dict[str, Any]] = []
    for i, item in enumerate(progress_bar(list(images), desc="exemplar prototypes")):
        check_cancel(cancel)
        img, src = _as_image(item)
        emb = encoder.embed(img)
        vecs.append(emb)
        rows += [{"origin": "exemplar", "source": src or f"exemplar-{i}", "view": j} for j in range(len(emb))]
    meta = {"encoder": encoder_id(encoder), "exemplar": {"n_images": len(images), "created": _now()}}
    return PrototypeSet(np.concatenate(vecs), rows, model, version, meta)


# --- model inversion ------------------------------------------------------------------------------------
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
    """

    lr: float = 0.05
    bn: float = 1.0
    confidence: float = 0.3
    min_foreground: float = 0.15
    tv: float = 0.3
    l2: float = 0.01
    blur_every: int = 10
    jitter: int = 2


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

    Use as a context manager; after a forward pass, ``divergences`` holds one scalar tensor per layer.
    """

    def __init__(self, network: Any) -> None:
        self.layers = _bn_layers(network)
        self.divergences: list[Any] = []
        self._handles: list[Any] = []

    def _hook(self, module: Any, inputs: Any, output: Any) -> None:
        x = inputs[0]
        dims = [0] + list(range(2, x.dim()))
        mean = x.mean(dim=dims)
        var = x.var(dim=dims, unbiased=False)
        self.divergences.append(bn_divergence(mean, var, module.running_mean, module.running_var, module.eps))

    def __enter__(self) -> BNStatHooks:
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
    import torch

    nd = x.dim() - 2
    terms = [torch.diff(x, dim=2 + a).abs().mean() for a in range(nd)]
    return torch.stack(terms).mean()


def _intensity_range(intensity: Optional[dict[str, Any]]) -> tuple[float, float, float]:
    """``(low, high, centre)`` of the network's normalised input intensities for an intensity mode."""
    mode = (intensity or {}).get("mode", "mr")
    if mode in ("ct", "percentile"):
        return 0.0, 1.0, 0.5
    return -3.0, 5.0, 0.0


def denormalize(array: np.ndarray, intensity: Optional[dict[str, Any]]) -> np.ndarray:
    """Map a network-normalised array back to image units (the inverse of ``infer.normalize_intensity``).

    ``ct``: ``v * (a_max - a_min) + a_min`` (HU). ``percentile``: ``v * 1000``. ``mr`` (z-scores, whose
    scale is lost): the 0.5-99.5 % range mapped linearly to 0-1000, clipped at 0.
    """
    mode = (intensity or {}).get("mode", "mr")
    a = np.asarray(array, dtype=np.float32)
    if mode == "ct":
        a_min = float(intensity.get("a_min", -1000.0))
        a_max = float(intensity.get("a_max", 1000.0))
        return a * (a_max - a_min) + a_min
    if mode == "percentile":
        return a * 1000.0
    lo, hi = np.percentile(a, (0.5, 99.5))
    return np.clip((a - lo) / max(float(hi - lo), 1e-6) * 1000.0, 0.0, None).astype(np.float32)


def _as_loaded(bundle: Any) -> Any:
    if isinstance(bundle, (str, os.PathLike)):
        from .bundle import load_bundle

        return load_bundle(bundle)
    if not hasattr(bundle, "network") or not hasattr(bundle, "card"):
        raise BundleError(f"expected a bundle folder or a loaded bundle, not {type(bundle).__name__}.")
    return bundle


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
) -> list[Image]:
    """Synthesise ``n`` inputs that a model "expects", from the model alone (model inversion).

    The input batch ``x`` of shape ``(n, 1, *size)`` (network layout ``x, y[, z]``, normalised intensities)
    starts as smooth noise and is optimised with Adam for ``steps`` steps on::

        bn * mean_layers KL(batch stats || running stats)          (skipped without running statistics)
      + confidence * (mean voxel entropy + 10 * relu(min_foreground - foreground fraction))
                                                               (landmark models: normalised spatial
                                                                entropy of each landmark's heatmap)
      + tv * total variation + l2 * mean (x - centre)^2

    with a random circular shift of up to ``jitter`` voxels per axis at each step, periodic blur, and ``x``
    clipped to the intensity mode's range. Works for 2D and 3D networks. Cost: one forward and backward
    pass per step; a starter-zoo 3D UNet (channels 16-128) on a batch of 3 at 64x64x16 takes about 0.5 s
    per step on one CPU core, so the default 100 steps take about a minute.

    Args:
        bundle: bundle folder or a :class:`~ModelSelectorLib.bundle.LoadedBundle`.
        n: number of inputs to synthesise (one optimised batch).
        steps: optimisation steps.
        seed: random seed (initial noise and jitter).
        size: spatial size in voxels, network layout ``(x, y[, z])`` (default: the card's ``roi_size``).
        settings: loss weights and schedule (:class:`InversionSettings`).
        info: if a dict is given, it is filled with ``bn_layers``, ``method``, ``final_loss``,
            ``bn_divergence``, ``foreground`` and ``seconds``.
        cancel: Event-like; :class:`~ModelSelectorLib.errors.Cancelled` when set.
        progress: show a progress bar.

    Returns:
        ``n`` :class:`~ModelSelectorLib.io.Image` objects in image units (see :func:`denormalize`), with the
        card's ``target_spacing`` (mm), origin 0 and the canonical RAS direction of the network's grid.

    Raises:
        BundleError: the bundle cannot be loaded or has no usable spatial size.
    """
    import torch

    from .infer import CANONICAL_AXCODES, axcodes_direction
    from .landmarks import heatmap_entropy

    if n < 1 or steps < 0:
        raise InputError(f"n must be >= 1 and steps >= 0 (got n={n}, steps={steps}).")
    lb = _as_loaded(bundle)
    card = lb.card
    st = settings or InversionSettings()
    nd = int(card.spatial_dims)
    shape = [int(s) for s in (size or card.roi_size or [64] * nd)]
    if len(shape) != nd:
        raise BundleError(f"{card.name}: size {shape} does not match the model's {nd} spatial dimensions.")
    lo, hi, centre = _intensity_range(card.intensity)
    t0 = time.monotonic()
    gen = torch.Generator().manual_seed(int(seed))
    network = lb.network
    device = next(network.parameters()).device
    was_training = network.training
    network.eval()
    req = [p.requires_grad for p in network.parameters()]
    for p in network.parameters():
        p.requires_grad_(False)
    x0 = torch.rand([n, 1, *shape], generator=gen)
    for _ in range(3):
        x0 = _blur(x0)
    x0 = lo + (hi - lo) * (0.25 + 0.5 * (x0 - x0.amin()) / (x0.amax() - x0.amin() + 1e-6))
    x = x0.to(device).requires_grad_(True)
    opt = torch.optim.Adam([x], lr=st.lr * (hi - lo))
    hooks = BNStatHooks(network)
    use_bn = bool(hooks.layers) and st.bn > 0
    last: dict[str, float] = {}
    try:
        with hooks:
            bar = progress_bar(range(steps), total=steps, desc=f"inverting {card.name}", disable=not progress)
            for step in bar:
                check_cancel(cancel)
                shifts = [int(s) for s in torch.randint(-st.jitter, st.jitter + 1, (nd,), generator=gen)]
                xin = torch.roll(x, shifts=shifts, dims=list(range(2, 2 + nd))) if st.jitter else x
                hooks.reset()
                out = network(xin)
                if isinstance(out, (list, tuple)):
                    out = out[0]
                if card.task_type == "landmarks":
                    # each channel is a spatial softmax: confident = one sharp peak per landmark
                    conf = entropy = heatmap_entropy(out).mean()
                    fg = (
                        torch.softmax(out.flatten(2), dim=2).amax(2).mean()
                    )  # reported: mean peak probability
                else:
                    p = torch.softmax(out, dim=1)
                    entropy = -(p * torch.log(p.clamp_min(1e-8))).sum(1).mean()
                    fg = (1.0 - p[:, 0]).mean() if p.shape[1] > 1 else p.mean()
                    conf = entropy + 10.0 * torch.relu(st.min_foreground - fg)
                bn = hooks.mean() if use_bn else torch.zeros((), device=device)
                loss = st.bn * bn + st.confidence * conf + st.tv * _tv(x) / (hi - lo)
                loss = loss + st.l2 * ((x - centre) / (hi - lo)).pow(2).mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                with torch.no_grad():
                    if st.blur_every and (step + 1) % st.blur_every == 0:
                        x.copy_(_blur(x))
                    x.clamp_(lo, hi)
                last = {"loss": float(loss.detach()), "bn": float(bn.detach()), "fg": float(fg.detach())}
                if progress and step % 10 == 0:
                    bar.set_postfix(**last)
            if progress:
                bar.close()
    finally:
        for p, r in zip(network.parameters(), req):
            p.requires_grad_(r)
        network.train(was_training)
    arr = x.detach().cpu().numpy()[:, 0]
    spacing = tuple(float(s) for s in (card.target_spacing or [1.0] * nd))
    direction = tuple(float(d) for d in axcodes_direction(CANONICAL_AXCODES, nd).ravel())
    images = []
    for i in range(n):
        a = np.ascontiguousarray(arr[i].transpose(tuple(range(nd))[::-1]))  # (x, y[, z]) -> (z, y, x)
        images.append(
            Image(
                denormalize(a, card.intensity),
                spacing,
                (0.0,) * nd,
                direction,
                {"synthetic": True, "origin": "data-free", "model": card.name, "source": f"synthesised-{i}"},
            )
        )
    if info is not None:
        info.update(
            bn_layers=len(hooks.layers),
            method=(
                "batch-norm statistics + confidence + image prior"
                if use_bn
                else "confidence + image prior (the model has no batch-norm running statistics)"
            ),
            final_loss=last.get("loss"),
            bn_divergence=last.get("bn") if use_bn else None,
            foreground=last.get("fg"),
            steps=steps,
            size=shape,
            seed=int(seed),
            settings=dataclasses.asdict(st),
            seconds=round(time.monotonic() - t0, 2),
        )
    return images


def data_free_prototypes(
    encoder: Any,
    bundle: Any,
    n: int = 4,
    steps: int = 100,
    seed: int = 0,
    size: Optional[Sequence[int]] = None,
    settings: Optional[InversionSettings] = None,
    cancel: Optional[Any] = None,
    return_images: bool = False,
) -> Any:
    """Data-free prototypes: embeddings of ``n`` inputs synthesised by :func:`synthesize_inputs`.

    Returns:
        a :class:`PrototypeSet` of origin ``"data-free"`` (``meta["data-free"]`` records the inversion:
        method, batch-norm layers used, settings, final losses); with ``return_images=True`` the tuple
        ``(set, images)``.
    """
    lb = _as_loaded(bundle)
    info: dict[str, Any] = {}
    images = synthesize_inputs(lb, n, steps, seed, size, settings, info, cancel)
    vecs, rows = [], []
    for i, img in enumerate(images):
        emb = encoder.embed(img)
        vecs.append(emb)
        rows += [{"origin": "data-free", "source": f"synthesised-{i}", "view": j} for j in range(len(emb))]
    info["n_inputs"] = n
    info["created"] = _now()
    pset = PrototypeSet(
        np.concatenate(vecs),
        rows,
        lb.card.name,
        lb.card.version,
        {"encoder": encoder_id(encoder), "data-free": info},
    )
    return (pset, images) if return_images else pset


# --- storage --------------------------------------------------------------------------------------------
def prototypes_dir(bundle_dir: PathLike) -> Path:
    return Path(bundle_dir) / PROTOTYPES_DIR


def has_prototypes(bundle_dir: PathLike) -> bool:
    d = prototypes_dir(bundle_dir)
    return (d / VECTORS_FILE).is_file() and (d / RECORDS_FILE).is_file()


def save_prototypes(bundle_dir: PathLike, pset: PrototypeSet) -> Path:
    """Write ``pset`` into ``BUNDLE/prototypes/`` (``prototypes.npz`` + ``prototypes.json``) atomically.

    The folder is written beside the old one and swapped in whole, so readers see the old or the new
    prototypes, never a mix.

    Returns:
        the ``prototypes`` folder.
    """
    target = prototypes_dir(bundle_dir)
    if not Path(bundle_dir).is_dir():
        raise BundleError(f"{bundle_dir}: no bundle folder to store prototypes in.")
    records = {
        "format": FORMAT,
        "model": pset.model,
        "version": pset.version,
        "n": len(pset),
        "dim": pset.dim,
        "origins": pset.origins(),
        "meta": pset.meta,
        "rows": pset.rows,
    }
    with atomic_dir(target) as tmp:
        with open(tmp / VECTORS_FILE, "wb") as f:
            np.savez_compressed(f, vectors=pset.vectors.astype(np.float32))
        (tmp / RECORDS_FILE).write_text(json.dumps(records, indent=1) + "\n", encoding="utf-8")
        for name in (VECTORS_FILE, RECORDS_FILE):
            os.chmod(tmp / name, 0o644)
        os.chmod(tmp, 0o755)
    return target


def load_prototypes(bundle_dir: PathLike) -> PrototypeSet:
    """Read the prototypes stored in a bundle.

    Raises:
        BundleError: there are none (the message gives the command that makes them) or they are corrupt.
    """
    d = prototypes_dir(bundle_dir)
    if not has_prototypes(bundle_dir):
        raise BundleError(
            f"{bundle_dir}: the bundle has no prototypes; make them with `modelselector prototypes --zoo ZOO "
            "--model NAME --exemplars IMAGES --data-free 4`."
        )
    try:
        records = json.loads((d / RECORDS_FILE).read_text(encoding="utf-8"))
        with np.load(d / VECTORS_FILE, allow_pickle=False) as z:
            vectors = np.asarray(z["vectors"], dtype=np.float32)
    except (OSError, ValueError, KeyError, json.JSONDecodeError) as e:
        raise BundleError(
            f"{d}: corrupt prototypes ({e}); regenerate them with `modelselector prototypes`."
        ) from e
    rows = records.get("rows") if isinstance(records, dict) else None
    if not isinstance(rows, list) or len(rows) != len(vectors):
        raise BundleError(
            f"{d}: prototype records and vectors disagree; regenerate them with `modelselector prototypes`."
        )
    return PrototypeSet(vectors, rows, str(records.get("model", "")), str(records.get("version", "")),
                        dict(records.get("meta") or {}))  # fmt: skip


def prototypes_digest(bundle_dir: PathLike) -> str:
    """sha1 (12 hex digits) of the stored prototype vectors and records; changes when they are regenerated."""
    d = prototypes_dir(bundle_dir)
    h = hashlib.sha1()
    for name in (VECTORS_FILE, RECORDS_FILE):
        h.update((d / name).read_bytes())
    return h.hexdigest()[:12]


def _png_of(image: Image) -> np.ndarray:
    """A grey uint8 picture of an image: the 2D image, or the three central orthogonal slices side by side."""
    a = np.asarray(image.array, dtype=np.float32)
    if a.ndim == 3:
        z, y, x = a.shape
        parts = [a[z // 2], a[:, y // 2, :][::-1], a[:, :, x // 2][::-1]]
        h = max(p.shape[0] for p in parts)
        parts = [np.pad(p, ((0, h - p.shape[0]), (0, 2)), constant_values=float(a.min())) for p in parts]
        a = np.concatenate(parts, axis=1)
    lo, hi = np.percentile(a, (0.5, 99.5))
    g = np.clip((a - lo) / max(float(hi - lo), 1e-6), 0, 1)
    scale = max(1, int(math.ceil(256 / max(g.shape))))
    g = np.kron(g, np.ones((scale, scale)))
    return (g * 255).astype(np.uint8)


def save_pngs(bundle_dir: PathLike, images: Sequence[Image], limit: int = 4) -> list[Path]:
    """Save up to ``limit`` synthesised inputs as PNGs into ``BUNDLE/docs/prototypes/`` (atomically)."""
    from PIL import Image as PILImage

    out = []
    folder = Path(bundle_dir) / PNG_DIR
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("data-free-*.png"):
        old.unlink()
    for i, img in enumerate(images[:limit]):
        path = folder / f"data-free-{i}.png"
        with atomic_path(path) as tmp:
            PILImage.fromarray(_png_of(img)).save(str(tmp), format="PNG")
        os.chmod(path, 0o644)
        out.append(path)
    return out


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _expand(exemplars: Union[PathLike, Image, Sequence[Union[PathLike, Image]]]) -> list[Union[Image, Path]]:
    """Exemplar arguments -> a list of images/paths; a folder gives its image files (sorted)."""
    items = [exemplars] if isinstance(exemplars, (str, os.PathLike, Image)) else list(exemplars)
    out: list[Union[Image, Path]] = []
    for it in items:
        if isinstance(it, Image):
            out.append(it)
            continue
        p = Path(it)
        if p.is_dir() and not any(p.glob("*.dcm")):
            files = sorted(f for f in p.iterdir() if f.is_file() and f.name.lower().endswith(_IMAGE_SUFFIXES))
            if not files:
                raise InputError(f"{p}: the folder holds no image files to use as exemplars.")
            out.extend(files)
        elif p.exists():
            out.append(p)
        else:
            raise InputError(f"{p}: no such exemplar image or folder.")
    return out


def generate_for_model(
    zoo: Any,
    name: str,
    exemplars: Optional[Union[PathLike, Image, Sequence[Union[PathLike, Image]]]] = None,
    data_free: int = 4,
    version: Optional[str] = None,
    encoder: Any = None,
    steps: int = 100,
    seed: int = 0,
    size: Optional[Sequence[int]] = None,
    settings: Optional[InversionSettings] = None,
    pngs: int = 4,
    cancel: Optional[Any] = None,
) -> PrototypeSet:
    """Make (or refresh) the prototypes of one zoo model and store them in its bundle.

    Exemplar prototypes are made from ``exemplars`` when given (replacing older exemplar rows), else from
    the card's ``example_inputs`` when it lists any, else the stored exemplar rows are kept. Data-free
    prototypes are made when ``data_free > 0`` (replacing older data-free rows); with ``data_free=0`` the
    stored ones are kept. Up to ``pngs`` synthesised inputs are written to ``BUNDLE/docs/prototypes/``.

    Args:
        zoo: a :class:`~ModelSelectorLib.zoo.Zoo` or a zoo folder.
        name: model name; ``version``: its version (default: current).
        exemplars: image(s), image path(s) or a folder of images.
        data_free: number of inputs to synthesise (0: none).
        encoder: the encoder (default: the bundled one).
        steps, seed, size, settings: see :func:`synthesize_inputs`.

    Returns:
        the stored :class:`PrototypeSet`.

    Raises:
        ZooError: unknown model. InputError: nothing to make prototypes from. BundleError: bad bundle.
    """
    from .encoder import Encoder
    from .zoo import Zoo

    zoo = zoo if isinstance(zoo, Zoo) else Zoo(zoo)
    bundle_dir = zoo.get(name, version)
    card = zoo.card(name, version)
    enc = encoder if encoder is not None else Encoder.load()
    ident = encoder_id(enc)
    old = load_prototypes(bundle_dir) if has_prototypes(bundle_dir) else None
    if old is not None and old.meta.get("encoder") != ident:
        old = None  # made with another encoder: unusable
    if exemplars is None and card.example_inputs:
        exemplars = [bundle_dir / p for p in card.example_inputs]
    if exemplars is not None:
        ex = exemplar_prototypes(enc, _expand(exemplars), card.name, card.version, cancel)
    elif old is not None:
        ex = old.select(["exemplar"])
    else:
        ex = PrototypeSet(np.zeros((0, 128), np.float32), [], card.name, card.version)
    if data_free > 0:
        lb = _as_loaded(bundle_dir)
        df, images = data_free_prototypes(enc, lb, data_free, steps, seed, size, settings, cancel, True)
        if pngs:
            save_pngs(bundle_dir, images, pngs)
    elif old is not None:
        df = old.select(["data-free"])
    else:
        df = PrototypeSet(np.zeros((0, 128), np.float32), [], card.name, card.version)
    if not len(ex) and not len(df):
        raise InputError(
            f"{name}: nothing to make prototypes from; pass exemplar images (--exemplars) and/or --data-free N."
        )
    meta = {**(old.meta if old is not None else {}), **ex.meta, **df.meta, "encoder": ident}
    if not len(df):
        meta.pop("data-free", None)
    if not len(ex):
        meta.pop("exemplar", None)
    pset = ex.merged(df)
    pset = PrototypeSet(pset.vectors, pset.rows, card.name, card.version, meta)
    check_cancel(cancel)
    save_prototypes(bundle_dir, pset)
    return pset


__all__ = [
    "ORIGINS",
    "InversionSettings",
    "PrototypeSet",
    "data_free_prototypes",
    "denormalize",
    "encoder_id",
    "exemplar_prototypes",
    "generate_for_model",
    "has_prototypes",
    "load_prototypes",
    "prototypes_digest",
    "save_prototypes",
    "synthesize_inputs",
]
