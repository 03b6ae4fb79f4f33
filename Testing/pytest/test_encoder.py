"""Tests of the image encoder: views, embeddings, weights round trip, a tiny training run, the bundled model."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import SimpleITK as sitk

from ModelSelectorLib.errors import InputError, ModelSelectorError
from ModelSelectorLib.io import Image
from ModelSelectorLib.selection.encoder import Encoder, default_weights
from ModelSelectorLib.selection.views import image_views
from ModelSelectorLib.training.encoder import train_encoder

torch = pytest.importorskip("torch")


def _oblique_dir(deg: float = 25.0) -> tuple:
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    return (c, -s, 0.0, s, c, 0.0, 0.0, 0.0, 1.0)


def _body_volume(nz: int = 40, ny: int = 48, nx: int = 56, seed: int = 0) -> np.ndarray:
    """A CT-like volume (z, y, x): air at -1000, an elliptic 'body' at 40 HU with a bright 'spine'."""
    rng = np.random.RandomState(seed)
    z, y, x = np.mgrid[0:nz, 0:ny, 0:nx]
    body = ((y - ny / 2) / (ny * 0.4)) ** 2 + ((x - nx / 2) / (nx * 0.45)) ** 2 < 1
    arr = np.where(body, 40.0, -1000.0) + rng.normal(0, 10, (nz, ny, nx))
    arr[(np.abs(y - ny * 0.7) < 3) & (np.abs(x - nx / 2) < 3)] = 700.0
    return arr.astype(np.float32)


@pytest.fixture(scope="module")
def encoder() -> Encoder:
    torch.manual_seed(0)
    return Encoder.create(["CT:CHEST", "MR:HEAD", "OT:OOD"], image_size=32, channels=(8, 16, 32))


def _check_emb(e: np.ndarray, n: int = -1) -> None:
    assert e.ndim == 2 and e.shape[1] == 128
    if n >= 0:
        assert e.shape[0] == n
    assert e.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-4)


def test_embed_2d_gray(encoder: Encoder) -> None:
    arr = np.zeros((60, 90), np.uint8)
    arr[10:50, 20:70] = 200
    img = Image(arr, (0.5, 0.5), (0.0, 0.0), (1.0, 0.0, 0.0, 1.0))
    v = image_views(img, size=32)
    assert v.shape == (1, 2, 32, 32)
    assert v.min() >= 0 and v.max() <= 1
    _check_emb(encoder.embed(img), 1)


def test_embed_rgb_photo(encoder: Encoder) -> None:
    rng = np.random.RandomState(1)
    arr = rng.randint(0, 255, (40, 50, 3)).astype(np.uint8)
    img = Image(arr, (1.0, 1.0), (0.0, 0.0), (1.0, 0.0, 0.0, 1.0))
    _check_emb(encoder.embed(img), 1)


def test_embed_oblique_anisotropic_volume(encoder: Encoder) -> None:
    img = Image(_body_volume(), (0.8, 0.8, 3.0), (12.5, -40.0, 7.25), _oblique_dir())
    v = encoder.views(img, n_per_axis=4)
    assert v.shape[1:] == (2, 32, 32) and 3 <= len(v) <= 12
    # HU channel: air saturates at 0, soft tissue near 0.52
    assert v[:, 0].min() == pytest.approx(0.0, abs=0.02)
    _check_emb(encoder.embed(img, n_per_axis=4), len(v))


def test_partial_volume_still_yields_views(encoder: Encoder) -> None:
    img = Image(_body_volume(nz=3), (0.8, 0.8, 5.0), (0.0, 0.0, 0.0), (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0))
    v = image_views(img, n_per_axis=4, size=32)
    assert len(v) >= 1 and v.shape[1:] == (2, 32, 32)
    _check_emb(encoder.embed(img), -1)
    one = Image(_body_volume(nz=1), (0.8, 0.8, 5.0), (0.0, 0.0, 0.0), (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0))
    assert image_views(one, size=32).shape == (1, 2, 32, 32)


def test_bad_input_raises(encoder: Encoder) -> None:
    arr = np.zeros((10, 10), np.float32)
    arr[0, 0] = np.nan
    with pytest.raises(InputError):
        image_views(Image(arr, (1.0, 1.0), (0.0, 0.0), (1.0, 0.0, 0.0, 1.0)))
    with pytest.raises(InputError):
        encoder.embed_views(np.zeros((2, 3, 32, 32), np.float32))


def test_weights_round_trip(encoder: Encoder, tmp_path) -> None:
    p = encoder.save(tmp_path / "enc.pt")
    raw = torch.load(str(p), weights_only=True)  # no pickled code
    assert raw["classes"] == encoder.classes
    enc2 = Encoder.load(p)
    img = Image(_body_volume(), (0.8, 0.8, 3.0), (0.0, 0.0, 0.0), _oblique_dir(10.0))
    np.testing.assert_allclose(enc2.embed(img), encoder.embed(img), atol=1e-5)
    assert enc2.classify(img, top_k=2)[0][0] in encoder.classes


def test_load_missing_or_bad(tmp_path) -> None:
    with pytest.raises(InputError):
        Encoder.load(tmp_path / "nope.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a torch file")
    with pytest.raises(ModelSelectorError):
        Encoder.load(bad)


def _write_synthetic_dataset(root) -> None:
    """3 classes of 6 PNGs each in radiology_2d/ + 2 volumes in manifest.csv (same CSV layouts as ../shared)."""
    rng = np.random.RandomState(0)
    d = root / "radiology_2d"
    d.mkdir(parents=True)
    rows = []
    yy, xx = np.mgrid[0:48, 0:48]
    for cls, (mod, reg) in enumerate([("CT", "HEAD"), ("DX", "CHEST"), ("OT", "OOD:photo")]):
        for i in range(6):
            if cls == 0:
                a = 200.0 * (((yy - 24) ** 2 + (xx - 24) ** 2) < (14 + i) ** 2)
            elif cls == 1:
                a = 100.0 + 100.0 * np.sin(xx / (3.0 + i))
            else:
                a = rng.uniform(0, 255, (48, 48))
            a = np.clip(a + rng.normal(0, 5, a.shape), 0, 255).astype(np.uint8)
            name = f"c{cls}_{i}.png"
            sitk.WriteImage(sitk.GetImageFromArray(a), str(d / name))
            rows.append([name, mod, reg, "synthetic", "test", "none"])
    with open(d / "labels.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "modality", "body_region", "label_origin", "source", "license"])
        w.writerows(rows)
    mrows = []
    for i in range(2):
        img = Image(_body_volume(20, 24, 28, seed=i), (1.5, 1.5, 3.0), (0.0, 0.0, 0.0), _oblique_dir(5.0 * i))
        sitk.WriteImage(img.to_sitk(), str(root / f"vol{i}.nii.gz"))
        mrows.append([f"vol{i}.nii.gz", "CT", "chest", "3", "none", "test", "none", "CT", "CHEST"])
    with open(root / "manifest.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            [
                "path",
                "modality",
                "body_region",
                "ndim",
                "labels",
                "source",
                "license",
                "modality_code",
                "region_code",
            ]
        )
        w.writerows(mrows)


def test_tiny_training_run(tmp_path) -> None:
    data = tmp_path / "data"
    _write_synthetic_dataset(data)
    out = tmp_path / "enc"
    card = train_encoder(
        data,
        out,
        epochs=2,
        image_size=32,
        seed=0,
        max_minutes=1.0,
        batch_size=8,
        min_groups=2,
        views_per_volume=3,
        channels=(8, 16, 32),
    )
    for name in ("encoder.pt", "card.json", "README.md", "confusion.png"):
        assert (out / name).exists()
    saved = json.loads((out / "card.json").read_text(encoding="utf-8"))
    assert saved["classes"] == ["CT:CHEST", "CT:HEAD", "DX:CHEST", "OT:OOD"]
    assert saved["seed"] == 0 and saved["training"]["epochs_run"] == 2
    assert len(saved["validation"]["confusion_matrix"]) == 4
    assert card["n_val_views"]["CT:CHEST"] > 0  # one of the two volumes is held out
    enc = Encoder.load(out / "encoder.pt")
    assert enc.image_size == 32
    img = Image(_body_volume(), (0.8, 0.8, 3.0), (0.0, 0.0, 0.0), _oblique_dir())
    _check_emb(enc.embed(img))


@pytest.mark.skipif(not default_weights().exists(), reason="no bundled encoder weights")
def test_bundled_encoder_loads_and_embeds() -> None:
    enc = Encoder.load()
    assert default_weights().stat().st_size <= 20 * 1024 * 1024
    img = Image(_body_volume(60, 96, 96), (0.9, 0.9, 2.5), (0.0, 0.0, 0.0), _oblique_dir())
    e = enc.embed(img)
    _check_emb(e)
    top = enc.classify(img)
    assert top[0][0] in enc.classes and 0.0 <= top[0][1] <= 1.0


def test_cli_parser_has_encoder() -> None:
    from ModelSelectorLib.cli import build_parser

    args = build_parser().parse_args(["encoder", "classify", "x.png", "--top", "2"])
    assert args.top == 2 and callable(args.func)
