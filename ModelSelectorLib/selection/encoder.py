"""The bundled image encoder: medical image -> a set of L2-normalised embeddings, one per 2D view.

Views come from :mod:`.views` (one for a 2D image; slices from three planes for a volume, two intensity
channels each that do not depend on the image's units). The network (:class:`EncoderNet`) is a small
plain-torch CNN (about 1.2 M parameters, a stride-2 stem so a 64 px view costs about 50 M multiply-adds)
that maps a view ``(2, S, S)`` to a 64-d embedding on the unit sphere; a cosine classification head over
modality x body region classes (``"CT:CHEST"``, ``"MR:HEAD"``, ..., ``"OT:OOD"`` for non-radiology photos)
is used for training (:mod:`ModelSelectorLib.training.encoder`) and for :meth:`Encoder.classify`.

Typical use::

    from ModelSelectorLib.selection.encoder import Encoder
    from ModelSelectorLib.io import read_image

    enc = Encoder.load()                      # the bundled encoder (resources/encoder/encoder.pt)
    emb = enc.embed(read_image("ct.nii.gz"))  # (n_views, 64), rows of unit norm
    enc.classify(read_image("ct.nii.gz"))     # [("CT:ABDOMEN", 0.83), ...]
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

import numpy as np

from ..atomic import atomic_path
from ..errors import InputError, ModelSelectorError
from ..io.image import Image
from ..resources import encoder_dir
from .views import DEFAULT_IMAGE_SIZE, image_views

#: file names of the encoder folder
WEIGHTS_NAME = "encoder.pt"
CARD_NAME = "card.json"
EMBED_DIM = 64
DEFAULT_CHANNELS = (32, 64, 128, 256)
#: the class of non-radiology images (photographs of skin, tissue, fundus, ...)
OOD_CLASS = "OT:OOD"
WEIGHTS_FORMAT = 2


def default_weights() -> Path:
    """The bundled encoder's weights file."""
    return encoder_dir() / WEIGHTS_NAME


def _build_net(n_classes: int, channels: Sequence[int] = DEFAULT_CHANNELS, embed_dim: int = EMBED_DIM) -> Any:
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    class EncoderNet(nn.Module):
        """Plain CNN: ``(B, 2, S, S)`` -> L2-normalised ``(B, embed_dim)``; ``logits()`` for training.

        A 3x3 stem of stride 2 to ``channels[0]``, then per stage a 3x3 conv (stride 2 from the second stage
        on) and a second 3x3 conv, each with BatchNorm and ReLU; global average pooling, a linear projection
        to ``embed_dim`` and L2 normalisation. The head is a cosine classifier (normalised weights, fixed
        scale 16) so classes live as directions on the embedding sphere.
        """

        def __init__(self) -> None:
            super().__init__()

            def block(c_in: int, c_out: int, stride: int) -> list[nn.Module]:
                return [nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(c_out),
                        nn.ReLU(inplace=True)]  # fmt: skip

            layers: list[nn.Module] = block(2, channels[0], 2)
            c_in = channels[0]
            for i, c in enumerate(channels):
                layers += block(c_in, c, 1 if i == 0 else 2) + block(c, c, 1)
                c_in = c
            self.features = nn.Sequential(*layers)
            self.proj = nn.Linear(c_in, embed_dim)
            self.head = nn.Parameter(torch.randn(max(1, n_classes), embed_dim) * 0.01)
            self.scale = 16.0

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            f = self.features(x).mean(dim=(2, 3))
            return F.normalize(self.proj(f), dim=1)

        def logits(self, emb: torch.Tensor) -> torch.Tensor:
            return self.scale * emb @ F.normalize(self.head, dim=1).t()

    return EncoderNet()


class Encoder:
    """A trained encoder: network, class list, view size and the training config.

    Attributes:
        net: the torch module (eval mode, CPU unless moved).
        classes: class names of the training head, ``"MODALITY:REGION"`` (``"OT:OOD"`` for photos).
        image_size: side of the square views in pixels.
        config: dict with ``image_size``, ``channels``, ``embed_dim``, ``spacing_mm``, ``n_per_axis``.
    """

    def __init__(self, net: Any, classes: Sequence[str], config: dict[str, Any]) -> None:
        self.net = net.eval()
        self.classes = list(classes)
        self.config = dict(config)
        self.image_size = int(config.get("image_size", DEFAULT_IMAGE_SIZE))

    @classmethod
    def create(
        cls,
        classes: Sequence[str],
        image_size: int = DEFAULT_IMAGE_SIZE,
        channels: Sequence[int] = DEFAULT_CHANNELS,
    ) -> Encoder:
        """A new, untrained encoder for ``classes``."""
        config = {
            "image_size": int(image_size),
            "channels": [int(c) for c in channels],
            "embed_dim": EMBED_DIM,
            "spacing_mm": 2.0,
            "n_per_axis": 8,
        }
        return cls(_build_net(len(classes), channels, EMBED_DIM), classes, config)

    # --- persistence ------------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """What :meth:`save` writes: plain tensors, lists, numbers and strings (``weights_only``-safe)."""
        return {
            "format": WEIGHTS_FORMAT,
            "config": self.config,
            "classes": self.classes,
            "state_dict": {k: v.detach().cpu() for k, v in self.net.state_dict().items()},
        }

    def save(self, path: os.PathLike | str) -> Path:
        """Save weights, classes and config to ``path`` atomically (``torch.save``)."""
        import torch

        path = Path(path)
        with atomic_path(path) as tmp:
            torch.save(self.state(), str(tmp))
        return path

    @classmethod
    def load(cls, path: Optional[os.PathLike | str] = None, device: str = "cpu") -> Encoder:
        """Load an encoder saved by :meth:`save` (default: the bundled encoder, :func:`default_weights`).

        Weights are read with ``torch.load(weights_only=True)``: no code in the file is executed.

        Raises:
            InputError: the file does not exist.
            ModelSelectorError: the file is not an encoder weights file of a known format.
        """
        import torch

        p = Path(path) if path is not None else default_weights()
        if not p.exists():
            hint = (
                "train one with `modelselector encoder train --data ../shared/data --out Resources/encoder`"
                if path is None
                else "check the path"
            )
            raise InputError(f"{p}: no encoder weights file; {hint}.")
        try:
            d = torch.load(str(p), map_location=device, weights_only=True)
        except Exception as e:  # pickle/zip errors of several kinds
            raise ModelSelectorError(
                f"{p}: not a readable encoder weights file ({type(e).__name__}: {e})."
            ) from e
        if not isinstance(d, dict) or d.get("format") != WEIGHTS_FORMAT or "state_dict" not in d:
            raise ModelSelectorError(
                f"{p}: not an encoder weights file of format {WEIGHTS_FORMAT}; retrain it."
            )
        config = dict(d["config"])
        classes = list(d["classes"])
        net = _build_net(
            len(classes), config.get("channels", DEFAULT_CHANNELS), int(config.get("embed_dim", EMBED_DIM))
        )
        try:
            net.load_state_dict(d["state_dict"])
        except RuntimeError as e:
            raise ModelSelectorError(f"{p}: weights do not match the encoder network ({e}).") from e
        return cls(net.to(device), classes, config)

    # --- inference --------------------------------------------------------------------------------------
    @property
    def device(self) -> Any:
        return next(self.net.parameters()).device

    def views(self, image: Image, n_per_axis: Optional[int] = None) -> np.ndarray:
        """:func:`image_views` with this encoder's view size, spacing and views per axis."""
        return image_views(
            image,
            spacing_mm=float(self.config.get("spacing_mm", 2.0)),
            n_per_axis=int(n_per_axis or self.config.get("n_per_axis", 8)),
            size=self.image_size,
        )

    def _forward(self, views: np.ndarray, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
        import torch

        v = np.asarray(views, dtype=np.float32)
        if v.ndim == 3:
            v = v[None]
        if v.ndim != 4 or v.shape[1] != 2:
            raise InputError(f"views must have shape (n, 2, H, W); got {v.shape}.")
        embs, probs = [], []
        with torch.inference_mode():
            for i in range(0, len(v), batch_size):
                x = torch.from_numpy(v[i : i + batch_size]).to(self.device)
                e = self.net(x)
                embs.append(e.cpu().numpy())
                probs.append(torch.softmax(self.net.logits(e), dim=1).cpu().numpy())
        return np.concatenate(embs), np.concatenate(probs)

    def embed_views(self, views: np.ndarray) -> np.ndarray:
        """Embeddings of views ``(n, 2, H, W)`` -> float32 ``(n, embed_dim)``, each row of unit L2 norm."""
        return self._forward(views)[0].astype(np.float32)

    def embed(self, image: Image, n_per_axis: Optional[int] = None) -> np.ndarray:
        """Embeddings of an image's views (see :func:`image_views`): float32 ``(n_views, embed_dim)``, unit rows."""
        return self.embed_views(self.views(image, n_per_axis))

    def predict_proba(self, image: Image) -> np.ndarray:
        """Class probabilities of ``image`` (:meth:`image_probabilities` of its views): ``(len(classes),)``."""
        return self.image_probabilities(self.embed(image), image)

    def image_probabilities(self, emb: np.ndarray, image: Image) -> np.ndarray:
        """The head's class probabilities of ``image`` from its view embeddings ``emb`` ``(m, d)``: the mean over
        the views, a volume's without radiography classes (:func:`volume_prior`): ``(len(classes),)``."""
        import torch

        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(emb, dtype=np.float32)).to(self.device)
            probs = torch.softmax(self.net.logits(x), dim=1).mean(dim=0).cpu().numpy()
        return volume_prior(probs, self.classes, image)

    def classify(self, image: Image, top_k: int = 3) -> list[tuple[str, float]]:
        """The ``top_k`` modality x region classes of ``image`` with probabilities (mean over views)."""
        p = self.predict_proba(image)
        order = np.argsort(-p)[:top_k]
        return [(self.classes[i], float(p[i])) for i in order]


#: modalities whose images are one projection each, never a volume of several slices (not mammography: a breast
#: tomosynthesis is an MG volume; nor fluoroscopy and angiography, whose cines load as stacks of frames)
PROJECTION_ONLY_MODALITIES = ("DX", "CR")


def volume_prior(probs: np.ndarray, classes: Sequence[str], image: Image) -> np.ndarray:
    """``probs`` over ``classes`` as they hold for ``image``: for a volume of several slices, renormalised without
    the classes of projection radiography (:data:`PROJECTION_ONLY_MODALITIES`), since a slice of a volume can
    look like a radiograph (the slices of a skull-stripped brain MR read as DX:ARM) but a volume is not one;
    for a 2D image or a lone slice, ``probs`` unchanged (also when every class would go)."""
    p = np.asarray(probs, dtype=np.float64)
    if image.is_single_slice:
        return np.asarray(probs)
    keep = np.array([str(c).split(":")[0] not in PROJECTION_ONLY_MODALITIES for c in classes])
    total = float(p[keep].sum())
    if not keep.any() or total <= 0.0:
        return np.asarray(probs)
    return np.where(keep, p / total, 0.0).astype(np.asarray(probs).dtype)


def load_card(path: Optional[os.PathLike | str] = None) -> dict[str, Any]:
    """The bundled encoder's card (``card.json`` in :func:`~ModelSelectorLib.resources.encoder_dir`), or the one at ``path``."""
    p = Path(path) if path is not None else encoder_dir() / CARD_NAME
    if not p.exists():
        raise InputError(f"{p}: no encoder card; train the encoder first.")
    return json.loads(p.read_text(encoding="utf-8"))


_DEFAULT: dict[str, Encoder] = {}


def default_encoder() -> Encoder:
    """The bundled encoder, loaded once per process."""
    if "default" not in _DEFAULT:
        _DEFAULT["default"] = Encoder.load()
    return _DEFAULT["default"]
