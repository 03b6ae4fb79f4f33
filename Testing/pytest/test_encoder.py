"""Tests of the image encoder: views, embeddings, weights round trip, a tiny training run, the bundled model."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import SimpleITK as sitk

from ModelSelectorLib.errors import InputError, ModelSelectorError
from ModelSelectorLib.io import Image, read_image, write_image
from ModelSelectorLib.selection.encoder import EMBED_DIM, Encoder, default_weights
from ModelSelectorLib.selection.views import decimated, encoder_channels, image_views
from ModelSelectorLib.training.encoder import train_encoder
from ModelSelectorLib.training.view_augment import augment_views

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
    assert e.ndim == 2 and e.shape[1] == EMBED_DIM
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
    # percentile channel: air at the bottom of the range; rank channel: every value in [0, 1]
    assert v[:, 0].min() == pytest.approx(0.0, abs=0.02) and 0.0 < v[:, 1].min() and v[:, 1].max() <= 1.0
    _check_emb(encoder.embed(img, n_per_axis=4), len(v))


def test_partial_volume_still_yields_views(encoder: Encoder) -> None:
    img = Image(_body_volume(nz=3), (0.8, 0.8, 5.0), (0.0, 0.0, 0.0), (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0))
    v = image_views(img, n_per_axis=4, size=32)
    assert len(v) >= 1 and v.shape[1:] == (2, 32, 32)
    _check_emb(encoder.embed(img), -1)
    one = Image(_body_volume(nz=1), (0.8, 0.8, 5.0), (0.0, 0.0, 0.0), (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0))
    assert image_views(one, size=32).shape == (1, 2, 32, 32)
    # a two-slice slab: on the 2 mm grid its side views are one pixel thick (and were flipped: a negative
    # stride that numpy calls contiguous and torch refuses)
    slab = np.random.default_rng(0).normal(100, 20, (2, 40, 40)).astype(np.float32)
    v = image_views(Image(slab, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0)), size=32)
    assert v.shape[1:] == (2, 32, 32) and np.isfinite(v).all()


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


def _radiograph(seed: int = 0) -> np.ndarray:
    """A smooth 16-bit-range radiograph-like picture (two dark fields in a bright body, graded)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:96, :80].astype(np.float32)
    a = 40000.0 - 150.0 * y
    a[(np.abs(x - 24) < 12) & (np.abs(y - 48) < 34)] = 9000.0
    a[(np.abs(x - 56) < 12) & (np.abs(y - 46) < 32)] = 11000.0
    return np.round(np.clip(a + rng.normal(0, 300, a.shape), 0, 65535))  # integer grey values, as stored


def test_channels_do_not_depend_on_units_or_windowing() -> None:
    v = _radiograph()[None]
    base = encoder_channels(v)
    assert base.shape == (1, 2, 96, 80) and base.dtype == np.float32 and 0 <= base.min() and base.max() <= 1
    np.testing.assert_allclose(encoder_channels(v * 0.37 - 1024.0), base, atol=1e-5)  # DICOM-style rescale
    gamma = encoder_channels((v / 65535.0) ** 2.2)  # a contrast curve keeps every rank
    np.testing.assert_allclose(gamma[:, 1], base[:, 1], atol=1e-6)
    ranks = encoder_channels(np.array([[[3.0, 1.0], [3.0, 7.0]]]))[0, 1]  # ties share the mid-rank
    np.testing.assert_allclose(ranks, [[0.5, 0.125], [0.5, 0.875]])  # (mid-rank - 0.5) / n
    flat = encoder_channels(np.full((1, 4, 4), 5.0))
    assert (flat[0, 0] == 0).all() and (flat[0, 1] == 0.5).all()


def test_same_radiograph_in_8_12_and_16_bits_gets_the_same_answer(tmp_path) -> None:
    """One picture written as 8-, 12- and 16-bit PNG files: same views (up to quantisation), same class.

    The reader brings deeper PNGs to the 8-bit range; the encoder's rank channels must not depend on that.
    """
    enc = Encoder.create(["DX:CHEST", "MR:HEAD", "OT:OOD"], image_size=32, channels=(8, 16, 32))
    torch.manual_seed(0)
    base = _radiograph() / 65535.0
    embs, classes = [], []
    for bits, dtype in ((8, np.uint8), (12, np.uint16), (16, np.uint16)):
        arr = np.round(base * (2**bits - 1)).astype(dtype)
        p = write_image(Image(arr, (0.2, 0.2), (0.0, 0.0), (1.0, 0.0, 0.0, 1.0)), tmp_path / f"cxr{bits}.png")
        img = read_image(p)
        assert img.meta["bit_depth"] == bits
        embs.append(enc.embed(img)[0])
        classes.append(enc.classify(img, top_k=1)[0][0])
    assert classes[0] == classes[1] == classes[2]
    for e in embs[1:]:
        assert float(e @ embs[0]) > 0.995  # cosine similarity of the embeddings


def test_volume_in_hounsfield_units_or_raw_stored_values_embeds_alike(encoder: Encoder) -> None:
    """A CT volume in Hounsfield units and the same volume as stored integers (slope 1, intercept -1100)."""
    hu = np.round(_body_volume())  # integer Hounsfield units, as stored
    img_hu = Image(hu, (0.8, 0.8, 3.0), (0.0, 0.0, 0.0), _oblique_dir())
    img_raw = Image((hu + 1100.0).astype(np.uint16), img_hu.spacing, img_hu.origin, img_hu.direction)
    a, b = encoder.embed(img_hu), encoder.embed(img_raw)
    assert a.shape == b.shape
    assert float(np.min(np.sum(a * b, axis=1))) > 0.99


def test_decimation_keeps_geometry_and_voxels_no_coarser_than_the_views() -> None:
    img = Image(_body_volume(40, 48, 56), (0.7, 0.9, 2.5), (3.0, -2.0, 7.0), _oblique_dir())
    d = decimated(img, 2.0)
    assert (
        d.spacing == pytest.approx((1.4, 1.8, 2.5))
        and d.origin == img.origin
        and d.direction == img.direction
    )
    assert d.array.shape == (40, 24, 28)
    np.testing.assert_array_equal(d.array, img.array[:, ::2, ::2])
    # a voxel of the decimated volume lies where the same voxel of the original does
    np.testing.assert_allclose(d.ijk_to_lps() @ [1, 1, 1, 1], img.ijk_to_lps() @ [2, 2, 1, 1], atol=1e-9)
    assert decimated(img, 0.5) is img


def test_augmentation_keeps_shape_and_is_reproducible() -> None:
    x = torch.rand(6, 32, 32)
    a = augment_views(x.clone(), torch.Generator().manual_seed(3))
    b = augment_views(x.clone(), torch.Generator().manual_seed(3))
    assert a.shape == x.shape and torch.isfinite(a).all()
    assert torch.equal(a, b)
    assert not torch.allclose(a, x)


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
    train_encoder(data, out, epochs=2, image_size=32, seed=0, max_minutes=1.0, batch_size=8, min_groups=2,
                  views_per_volume=3, channels=(8, 16, 32))  # fmt: skip
    for name in ("encoder.pt", "card.json", "README.md", "confusion.png", "split.json"):
        assert (out / name).exists()
    saved = json.loads((out / "card.json").read_text(encoding="utf-8"))
    assert saved["classes"] == ["DX:CHEST", "OT:OOD"]  # the other classes have too few training patients
    assert set(saved["excluded_classes_groups"]) == {"CT:CHEST", "CT:HEAD"}
    assert saved["seed"] == 0 and saved["training"]["epochs_run"] == 2
    assert len(saved["validation"]["confusion_matrix"]) == 2 and saved["validation"]["split"] == "dev"
    split = json.loads((out / "split.json").read_text(encoding="utf-8"))
    assert split["digest"] == saved["split_digest"]
    assert {r["split"] for r in split["items"]} == {"train", "dev", "test"}
    assert "bias field" in saved["augmentation"] and "README" not in saved["augmentation"]
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


@pytest.mark.skipif(not default_weights().exists(), reason="no bundled encoder weights")
def test_bundled_encoder_reads_the_sample_radiograph_alike_in_8_12_and_16_bits(tmp_path) -> None:
    from ModelSelectorLib.resources import samples_dir

    enc = Encoder.load()
    img8 = read_image(samples_dir() / "cxr_chest.png")
    assert img8.array.dtype == np.uint8
    answers = []
    for bits in (8, 12, 16):
        arr = (img8.array.astype(np.uint32) * (2**bits - 1) // 255).astype(
            np.uint8 if bits == 8 else np.uint16
        )
        img = read_image(write_image(img8.with_array(arr), tmp_path / f"cxr{bits}.png"))
        answers.append((enc.classify(img, top_k=1)[0], enc.embed(img)[0]))
    assert answers[0][0][0] == "DX:CHEST" and {a[0][0] for a in answers} == {"DX:CHEST"}
    for (_, p), e in [(a[0], a[1]) for a in answers[1:]]:
        assert abs(p - answers[0][0][1]) < 0.01
        assert float(e @ answers[0][1]) > 0.999


@pytest.mark.skipif(not default_weights().exists(), reason="no bundled encoder weights")
def test_a_volume_is_not_read_as_a_radiograph_while_its_slice_may_be() -> None:
    """Views of a volume can look like a radiograph (a skull-stripped brain's slices read as DX:ARM), but a
    volume of several slices is not one: its reading leaves the DX and CR classes out, in the encoder and in
    the selector's evidence. Here, a stack of copies of the sample radiograph, whose lone slice reads DX:CHEST."""
    from ModelSelectorLib.resources import samples_dir
    from ModelSelectorLib.selection.encoder import volume_prior
    from ModelSelectorLib.selection.scoring import clear_cache, evidence

    enc = Encoder.load()
    radiograph = read_image(samples_dir() / "cxr_chest.png").as_3d()
    stack = Image(np.repeat(radiograph.array, 24, axis=0), (0.7, 0.7, 3.0), (0.0,) * 3, radiograph.direction)
    raw = enc._forward(enc.views(stack))[1].mean(axis=0)
    projection = np.array([c.split(":")[0] in ("DX", "CR") for c in enc.classes])
    assert enc.classes[int(np.argmax(raw))] == "DX:CHEST"  # what the views alone say
    for probs in (enc.predict_proba(stack), evidence(enc, stack).probs):
        assert np.all(probs[projection] == 0.0) and probs.sum() == pytest.approx(1.0, abs=1e-5)
        assert probs[~projection] == pytest.approx(raw[~projection] / raw[~projection].sum(), rel=1e-4)
    assert enc.classify(radiograph, top_k=1)[0][0] == "DX:CHEST"  # one slice: a radiograph may be one
    flat = np.full(len(enc.classes), 1.0 / len(enc.classes))
    assert np.array_equal(volume_prior(flat, enc.classes, radiograph), flat)  # a lone slice: unchanged
    clear_cache()


def test_cli_parser_has_encoder() -> None:
    from ModelSelectorLib.cli import build_parser

    args = build_parser().parse_args(["encoder", "classify", "x.png", "--top", "2"])
    assert args.top == 2 and callable(args.func)


def test_classify_refuses_a_label_map_and_train_asks_where_to_write(tmp_path, capsys) -> None:
    from ModelSelectorLib.cli import build_parser, main
    from ModelSelectorLib.io import write_image

    mask = np.zeros((64, 64), np.uint8)
    mask[10:40, 12:30] = 1
    write_image(Image(mask, (1.0, 1.0), (0.0, 0.0), (1.0, 0.0, 0.0, 1.0)), tmp_path / "mask.nrrd")
    assert main(["encoder", "classify", str(tmp_path / "mask.nrrd")]) == 2  # as `select` does: no class of it
    assert "looks like a label map" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:  # no default: it would replace the bundled encoder
        build_parser().parse_args(["encoder", "train", "--data", str(tmp_path)])
    assert exit_info.value.code == 2 and "--out" in capsys.readouterr().err
