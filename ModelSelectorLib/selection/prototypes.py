"""Prototypes: the embeddings that represent a zoo model in the index, since its training data is not at hand.

Two kinds, each row recording its ``origin``:

- **exemplar** prototypes (:func:`exemplar_prototypes`): the encoder's view embeddings of a few example
  inputs supplied with the model;
- **data-free** prototypes (:func:`data_free_prototypes`): embeddings of inputs synthesised from the model
  alone by model inversion (:func:`~.inversion.synthesize_inputs`), embedded like any image.

Prototypes are stored inside the bundle folder::

    BUNDLE/prototypes/prototypes.npz    vectors: float32 (n, 128), unit rows
    BUNDLE/prototypes/prototypes.json   per row: origin, source, view; model name/version; encoder id
    BUNDLE/docs/prototypes/*.png        a few synthesised inputs, for people to look at

Typical use::

    from ModelSelectorLib.selection.prototypes import generate_for_model
    generate_for_model(zoo, "spleen_ct", exemplars=["a.nii.gz", "b.nii.gz"], data_free=4)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Callable, Optional, Union

import numpy as np

from ..atomic import atomic_dir, atomic_path
from ..errors import BundleError, InputError, ModelSelectorError
from ..io.image import IMAGE_2D_SUFFIXES, VOLUME_SUFFIXES, Image, as_image, check_model_input, dicom_series
from ..io.integrity import NPZ_ERRORS, read_npz
from ..io.outputs import check_output_folder
from ..progress import check_cancel, progress_bar
from ..zoo.catalog import open_zoo
from .encoder import EMBED_DIM, default_encoder
from .encoder_guide import domain_classes
from .inversion import InversionSettings, loaded_bundle, synthesize_inputs

PathLike = Union[str, "os.PathLike[str]"]

ORIGINS = ("exemplar", "data-free")
PROTOTYPES_DIR = "prototypes"
VECTORS_FILE = "prototypes.npz"
RECORDS_FILE = "prototypes.json"
PNG_DIR = Path("docs") / "prototypes"
FORMAT = 1

_IMAGE_SUFFIXES = IMAGE_2D_SUFFIXES + VOLUME_SUFFIXES
#: an exemplar that the encoder reads as another modality:region than its card's with at least this probability
#: is named in a warning (a CT series or a chest X-ray given for an MR head model)
DOMAIN_WARN_PROBABILITY = 0.8
#: errors a truncated or damaged ``.npz`` raises when read (numpy reads it as a zip of compressed arrays)
#: widest prototype vectors a file may declare, and most bytes of a further ``.npz`` (feature statistics: KBs)
MAX_VECTOR_DIM, MAX_EXTRA_BYTES = 4096, 64 << 20

Warn = Callable[[str], None]


def _warn(message: str) -> None:
    """The default ``warn``: a Python warning (the command line prints its own)."""
    warnings.warn(message, UserWarning, stacklevel=3)


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
    """An exemplar as an image and its source, refused as ``select`` and ``apply`` refuse it (a label map, an
    icon): a prototype of a label map would draw images of the kind to the model."""
    img = as_image(item)
    src = str(item) if isinstance(item, (str, os.PathLike)) else str(img.meta.get("path", ""))
    check_model_input(img, src or "exemplar")
    return img, src


def recorded_source(src: str, source_root: Optional[PathLike] = None) -> str:
    """How a prototype records the image it came from: relative to ``source_root`` (e.g. the data folder) when
    the file lies inside it, so that a shipped bundle names no machine path; else as given."""
    if not src or source_root is None:
        return src
    try:
        return Path(src).resolve().relative_to(Path(source_root).resolve()).as_posix()
    except ValueError:
        return src


def domain_mismatch(encoder: Any, emb: np.ndarray, image: Image, card: Any,
                    threshold: float = DOMAIN_WARN_PROBABILITY) -> Optional[str]:  # fmt: skip
    """Why ``image`` looks like no input of the card's model, or None: the encoder's class probabilities (as
    selection reads them, :meth:`~.encoder.Encoder.image_probabilities`, from the view embeddings ``emb`` already
    made, so it costs no second pass) give at least ``threshold`` to classes outside the card's modality and
    regions. For a card whose domain the encoder has no class for, only the modality is compared."""
    classes = [str(c) for c in getattr(encoder, "classes", None) or []]
    if card is None or not classes or not hasattr(encoder, "image_probabilities"):
        return None
    probs = np.asarray(encoder.image_probabilities(emb, image), dtype=np.float64)
    own = set(domain_classes(classes, card))
    if not own:  # no class of its regions to compare with: the modality only
        own = {i for i, c in enumerate(classes) if c.partition(":")[0] == card.modality}
    other = [i for i in range(len(classes)) if i not in own]
    p_other = float(probs[other].sum()) if other else 0.0
    if p_other < threshold:
        return None
    top = max(other, key=lambda i: probs[i])
    return (f"the encoder reads it as another domain than the card's {card.modality}:{card.body_region} "
            f"(probability {p_other:.2f}; most likely {classes[top]}, {probs[top]:.2f})")  # fmt: skip


def exemplar_prototypes(
    encoder: Any,
    images: Sequence[Union[Image, PathLike]],
    model: str = "",
    version: str = "",
    cancel: Optional[Any] = None,
    source_root: Optional[PathLike] = None,
    card: Any = None,
    warn: Optional[Warn] = None,
    sources: Optional[Sequence[str]] = None,
) -> PrototypeSet:
    """Embed example inputs of a model: one prototype per encoder view of each image.

    Args:
        encoder: a :class:`~.encoder.Encoder`.
        images: images or image paths (2D or 3D).
        model, version: the model these exemplars belong to (recorded in the set).
        cancel: Event-like; :class:`~ModelSelectorLib.errors.Cancelled` when set.
        source_root: folder the recorded sources are made relative to (:func:`recorded_source`).
        card: the model's card; each exemplar the encoder reads as another modality:region is named to
            ``warn`` (:func:`domain_mismatch`), one line per exemplar.
        warn: called with each warning (default: :func:`warnings.warn`).
        sources: the source to record for each image, in place of its path (re-embedding stored prototypes
            keeps the sources they recorded).

    Returns:
        a :class:`PrototypeSet` of origin ``"exemplar"``; ``source`` is the image's file path when known
        (relative to ``source_root`` when inside it), else ``"exemplar-<i>"``.

    Raises:
        InputError: no images, or an unreadable image.
    """
    if not images:
        raise InputError("no exemplar images given; pass image files or a folder of them.")
    warn = warn or _warn
    vecs: list[np.ndarray] = []
    rows: list[dict[str, Any]] = []
    # the bar waits half a second, so that a refused first image is one line of error, not a bar and a line
    for i, item in enumerate(progress_bar(list(images), desc="exemplar prototypes", delay=0.5)):
        check_cancel(cancel)
        img, src = _as_image(item)
        emb = encoder.embed(img)
        vecs.append(emb)
        src = sources[i] if sources is not None else recorded_source(src, source_root) or f"exemplar-{i}"
        why = domain_mismatch(encoder, emb, img, card)
        if why:
            warn(f"{model or card.name}: exemplar {src}: {why}; check that it is an input of this model.")
        rows += [{"origin": "exemplar", "source": src, "view": j} for j in range(len(emb))]
    meta = {"encoder": encoder_id(encoder), "exemplar": {"n_images": len(images), "created": _now()}}
    return PrototypeSet(np.concatenate(vecs), rows, model, version, meta)


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
    """Data-free prototypes: embeddings of ``n`` inputs synthesised by :func:`synthesize_inputs`, with its
    encoder term asking ``encoder`` to read them as the card's domain (weight ``settings.encoder``).

    Returns:
        a :class:`PrototypeSet` of origin ``"data-free"`` (``meta["data-free"]`` records the inversion:
        method, batch-norm layers used, settings, final losses); with ``return_images=True`` the tuple
        ``(set, images)``.
    """
    lb = loaded_bundle(bundle)
    info: dict[str, Any] = {}
    images = synthesize_inputs(lb, n, steps, seed, size, settings, info, cancel, encoder=encoder)
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


def save_prototypes(
    bundle_dir: PathLike, pset: PrototypeSet, extra: Optional[dict[str, dict[str, np.ndarray]]] = None
) -> Path:
    """Write ``pset`` into ``BUNDLE/prototypes/`` (``prototypes.npz`` + ``prototypes.json``) atomically.

    The folder is written beside the old one and swapped in whole, so readers see the old or the new
    prototypes, never a mix. ``extra`` maps further ``.npz`` file names to their arrays (the model's
    feature statistics, :func:`feature_statistics_of`).

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
        for fname, arrays in (extra or {}).items():
            with open(tmp / fname, "wb") as f:
                np.savez_compressed(f, **arrays)
        for name in (VECTORS_FILE, RECORDS_FILE, *(extra or {})):
            os.chmod(tmp / name, 0o644)
        os.chmod(tmp, 0o755)
    return target


def _remake_command(bundle_dir: PathLike) -> str:
    """The command that makes a bundle's prototypes again, naming its zoo (the folder above it that holds
    ``zoo.json``) and model (from its card) when they can be found."""
    b = Path(bundle_dir).resolve()
    zoo = next((str(a) for a in b.parents if (a / "zoo.json").is_file()), "ZOO")
    try:
        name = str(json.loads((b / "configs" / "metadata.json").read_text(encoding="utf-8"))["name"])
    except (OSError, ValueError, KeyError, TypeError):
        name = "NAME"
    return f"modelselector prototypes --zoo {zoo} --model {name}"


def load_prototypes(bundle_dir: PathLike) -> PrototypeSet:
    """Read the prototypes stored in a bundle.

    Raises:
        BundleError: there are none (the message gives the command that makes them) or they are corrupt
            (a truncated file: the message names it and the command that makes them again).
    """
    d = prototypes_dir(bundle_dir)
    if not has_prototypes(bundle_dir):
        raise BundleError(
            f"{bundle_dir}: the bundle has no prototypes; make them with `modelselector prototypes --zoo ZOO "
            "--model NAME --exemplars IMAGES --data-free 4`."
        )
    try:
        records = json.loads((d / RECORDS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as e:
        raise BundleError(f"{d / RECORDS_FILE}: unreadable prototype records ({str(e)[:120]}); make the "
                          f"prototypes again with `{_remake_command(bundle_dir)}`.") from e  # fmt: skip
    rows = records.get("rows") if isinstance(records, dict) else None
    if not isinstance(rows, list):
        raise BundleError(f"{d}: prototype records and vectors disagree; make the prototypes again with "
                          f"`{_remake_command(bundle_dir)}`.")  # fmt: skip
    try:  # the header's shape first: a small file may declare any size
        dim = records["dim"] if isinstance(records.get("dim"), int) else None
        stored = read_npz(d / VECTORS_FILE, len(rows) * MAX_VECTOR_DIM * 8, {"vectors": (len(rows), dim)})
        vectors = np.asarray(stored["vectors"], dtype=np.float32)
    except NPZ_ERRORS as e:
        raise BundleError(f"{d / VECTORS_FILE}: truncated or damaged prototype vectors ({str(e)[:120]}); make the "
                          f"prototypes again with `{_remake_command(bundle_dir)}`.") from e  # fmt: skip
    if len(rows) != len(vectors):
        raise BundleError(f"{d}: prototype records and vectors disagree; make the prototypes again with "
                          f"`{_remake_command(bundle_dir)}`.")  # fmt: skip
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


def _dicom_exemplars(folder: Path, files: Sequence[Path]) -> list[Path]:
    """The DICOM exemplars directly in ``folder``: the folder when it is one series (read whole, as ``select``
    reads it), each file when every series is one file (radiographs); refused when it mixes series of several
    files, since ``prototypes`` names folders, not series."""
    if not any(f.suffix.lower() == ".dcm" or not f.name.lower().endswith(_IMAGE_SUFFIXES) for f in files):
        return []  # only known image files: no header to scan
    try:
        series = list(dicom_series(folder).values())
    except RuntimeError:  # a folder GDCM cannot scan holds no series
        series = []
    if len(series) == 1:
        return [folder]
    if all(len(s) == 1 for s in series):
        return sorted(Path(s[0]) for s in series)
    raise InputError(f"{folder}: the folder mixes {len(series)} DICOM series; an exemplar is one series: put each "
                     "series in its own folder and pass those folders (or the folder above them).")  # fmt: skip


def _expand_folder(folder: Path, warn: Warn) -> list[Path]:
    """The exemplars of a folder: the folder itself when it is one DICOM series, else its image files (sorted),
    and below it every folder (at any depth) that is one DICOM series (or holds single-file DICOM images); other
    subfolders are skipped with a warning (an MSD folder's ``labelsTr`` holds label maps, not inputs)."""
    out: list[Path] = []
    skipped: list[str] = []
    for here, dirs, names in os.walk(folder):
        dirs.sort()
        d = Path(here)
        files = [d / n for n in sorted(names) if not n.startswith(".")]
        dicom = _dicom_exemplars(d, files)
        out += dicom
        if d in dicom:
            dirs[:] = []  # a series folder is one exemplar, whatever lies below it
        elif d == folder:
            out += [
                f for f in files if f.name.lower().endswith(_IMAGE_SUFFIXES) and f.suffix.lower() != ".dcm"
            ]
        elif not dicom and any(f.name.lower().endswith(_IMAGE_SUFFIXES) for f in files):
            skipped.append(d.relative_to(folder).as_posix())
    if skipped:
        warn(f"{folder}: skipped the image files of subfolder(s) {', '.join(skipped)} (only DICOM series folders "
             "below the folder are taken); pass those folders as well to use them.")  # fmt: skip
    if not out:
        raise InputError(f"{folder}: the folder holds no image files or DICOM series to use as exemplars; pass "
                         "image files, a folder of them, or DICOM series folders.")  # fmt: skip
    return out


def _expand(
    exemplars: Union[PathLike, Image, Sequence[Union[PathLike, Image]]], warn: Optional[Warn] = None
) -> list[Union[Image, Path]]:
    """Exemplar arguments -> a list of images/paths; a folder gives its exemplars (:func:`_expand_folder`)."""
    items = [exemplars] if isinstance(exemplars, (str, os.PathLike, Image)) else list(exemplars)
    out: list[Union[Image, Path]] = []
    for it in items:
        if isinstance(it, Image):
            out.append(it)
            continue
        p = Path(it)
        if p.is_dir():
            out.extend(_expand_folder(p, warn or _warn))
        elif p.exists():
            out.append(p)
        else:
            raise InputError(f"{p}: no such exemplar image or folder.")
    return out


def resolve_recorded_source(src: str, bases: Sequence[PathLike] = ()) -> Optional[Path]:
    """The existing file or series folder that a prototype's recorded ``source`` names, or None: ``src`` as
    given (absolute, or relative to the working folder), relative to one of ``bases`` (the bundle, data
    folders), or a tail of it under a base (``../shared/data/ct/a.nii.gz`` is found as ``DATA/ct/a.nii.gz``).
    The same rule as the evaluation's ``resolve_source``."""
    p = Path(src)
    cands = [p] if p.is_absolute() else [Path.cwd() / p]
    parts = [q for q in p.parts if q not in ("..", ".", p.anchor)]
    for b in bases:
        cands += [Path(b) / p] + [Path(b).joinpath(*parts[i:]) for i in range(len(parts)) if parts[i:]]
    return next((c.resolve() for c in cands if c.exists()), None)


def _stored_rows(bundle_dir: Path, ident: str) -> tuple[Optional[PrototypeSet], list[dict[str, Any]]]:
    """The stored prototypes when usable with encoder ``ident``, and the records of those that are not (made by
    another encoder, or vectors unreadable while their records can be read): ``(set or None, rows)``."""
    if not has_prototypes(bundle_dir):
        return None, []
    try:
        old = load_prototypes(bundle_dir)
    except BundleError:  # damaged vectors: their records still say which exemplars to embed again
        try:
            rows = json.loads((prototypes_dir(bundle_dir) / RECORDS_FILE).read_text(encoding="utf-8"))["rows"]
        except (OSError, ValueError, KeyError, TypeError, RecursionError):
            return None, []
        return None, [r for r in rows if isinstance(r, dict)] if isinstance(rows, list) else []
    return (old, []) if old.meta.get("encoder") == ident else (None, old.rows)


def stale_exemplar_sources(
    bundle_dir: PathLike, encoder: Any, data_roots: Sequence[PathLike] = ()
) -> tuple[list[str], dict[str, Path]]:
    """The exemplars of stored prototypes that must be embedded again (made by another encoder, or with
    damaged vectors): their recorded sources, and those found (:func:`resolve_recorded_source` against the
    bundle and ``data_roots``) with their paths. Both empty when the stored prototypes are usable."""
    return _found_sources(_stored_rows(Path(bundle_dir), encoder_id(encoder))[1], [bundle_dir, *data_roots])


def _found_sources(
    rows: Sequence[dict[str, Any]], bases: Sequence[PathLike]
) -> tuple[list[str], dict[str, Path]]:
    """The distinct sources of the exemplar ``rows``, and those found under ``bases`` with their paths."""
    sources = list(dict.fromkeys(str(r.get("source", "")) for r in rows if r.get("origin") == "exemplar"))
    found = {s: resolve_recorded_source(s, bases) for s in sources if s}
    return sources, {s: f for s, f in found.items() if f is not None}


def check_stale_sources(
    name: str, sources: Sequence[str], found: dict[str, Path], drop_missing: bool, warn: Optional[Warn] = None
) -> None:
    """Refuse to drop exemplars of stored prototypes that cannot be found, unless ``drop_missing``: then warn
    (naming the model and how many are dropped)."""
    missing = [s for s in sources if s not in found]
    if not missing:
        return
    what = f"{name}: {len(missing)} of the {len(sources)} exemplar(s) of its stored prototypes"
    if not drop_missing:
        raise InputError(f"{what} cannot be found to embed again with this encoder (e.g. {missing[0]}); pass the "
                         "data folder they are recorded in (--data DIR), give the exemplars again (--exemplars), "
                         "or drop them (--drop-missing).")  # fmt: skip
    (warn or _warn)(f"{what} were not found and are dropped (e.g. {missing[0]}); the model is represented by the "
                    f"{len(sources) - len(missing)} found and its data-free prototypes.")  # fmt: skip


def _empty(card: Any) -> PrototypeSet:
    return PrototypeSet(np.zeros((0, EMBED_DIM), np.float32), [], card.name, card.version)


def _exemplar_part(
    bundle_dir: Path, card: Any, enc: Any, exemplars: Any, old: Optional[PrototypeSet], stale: list[dict[str, Any]],
    opts: dict[str, Any], info: dict[str, Any],
) -> tuple[PrototypeSet, Optional[dict[str, dict[str, np.ndarray]]]]:  # fmt: skip
    """The exemplar rows of a refresh and the feature statistics to store (None: keep the stored ones); fills
    ``info["exemplar"]`` with what was done (``made``, ``re-embedded``, ``kept`` or ``none``)."""
    warn = opts["warn"]
    if exemplars is not None:
        files = _expand(exemplars, warn)
        ex = exemplar_prototypes(enc, files, card.name, card.version, opts["cancel"], opts["source_root"],
                                 card, warn)  # fmt: skip
        info["exemplar"] = "made"
        return ex, feature_statistics_of(bundle_dir, files, opts["seed"])
    if old is not None:
        info["exemplar"] = "kept" if old.origins().get("exemplar") else "none"
        return old.select(["exemplar"]), None
    sources, found = _found_sources(stale, [bundle_dir, *opts["data_roots"]])
    check_stale_sources(card.name, sources, found, opts["drop_missing"], warn)
    info["dropped_exemplars"] = len(sources) - len(found)
    if not found:
        info["exemplar"] = "none"
        return _empty(card), None
    # the same images embedded by this encoder, recorded under the sources they had (the bottleneck statistics
    # do not depend on the encoder and are kept)
    ex = exemplar_prototypes(enc, list(found.values()), card.name, card.version, opts["cancel"], None, card, warn,
                             sources=list(found))  # fmt: skip
    info["exemplar"] = "re-embedded"
    return ex, None


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
    source_root: Optional[PathLike] = None,
    data_roots: Sequence[PathLike] = (),
    drop_missing: bool = False,
    warn: Optional[Warn] = None,
    info: Optional[dict[str, Any]] = None,
) -> PrototypeSet:
    """Make (or refresh) the prototypes of one zoo model and store them in its bundle.

    Exemplar prototypes are made from ``exemplars`` when given (replacing older exemplar rows), else from
    the card's ``example_inputs`` when it lists any, else the stored exemplar rows are kept. Stored rows made
    by another encoder (or whose vectors are damaged) are embedded again from their recorded sources, found
    against the bundle and ``data_roots`` (:func:`resolve_recorded_source`); when some cannot be found this
    is refused, unless ``drop_missing`` (then a warning names the model and how many were dropped).
    Data-free prototypes are made when ``data_free > 0`` (replacing older data-free rows); with ``data_free=0``
    the stored ones are kept, unless another encoder made them (they are dropped, with a warning). Up to
    ``pngs`` synthesised inputs are written to ``BUNDLE/docs/prototypes/``.

    Args:
        zoo: a :class:`~ModelSelectorLib.zoo.Zoo` or a zoo folder.
        name: model name; ``version``: its version (default: current).
        exemplars: image(s), image path(s) or folders (:func:`_expand_folder` says what a folder gives).
        data_free: number of inputs to synthesise (0: none).
        encoder: the encoder (default: the bundled one).
        steps, seed, size, settings: see :func:`synthesize_inputs`.
        source_root: exemplar sources are recorded relative to it (see :func:`exemplar_prototypes`).
        data_roots: folders where recorded exemplar sources are looked for when they are embedded again.
        drop_missing: embed again only the stored exemplars found, dropping the others.
        warn: called with each warning (exemplars of another domain, dropped prototypes, skipped subfolders).
        info: filled with what this call did: ``exemplar`` and ``data-free`` (``made``, ``re-embedded`` (exemplar
            only), ``kept``, ``dropped`` (data-free only) or ``none``) and ``dropped_exemplars``.

    Returns:
        the stored :class:`PrototypeSet`.

    Raises:
        ZooError: unknown model. InputError: nothing to make prototypes from, or stored exemplars that cannot be
        found. BundleError: bad bundle.
    """
    zoo = open_zoo(zoo)
    info = info if info is not None else {}
    warn = warn or _warn
    bundle_dir = zoo.get(name, version)
    check_output_folder(
        bundle_dir, "bundle folder"
    )  # a read-only zoo is said before the synthesis, not after
    card = zoo.card(name, version)
    enc = encoder if encoder is not None else default_encoder()
    ident = encoder_id(enc)
    old, stale = _stored_rows(bundle_dir, ident)
    if exemplars is None and card.example_inputs:
        exemplars = [bundle_dir / p for p in card.example_inputs]
    opts = dict(warn=warn, cancel=cancel, source_root=source_root, seed=seed, data_roots=list(data_roots),
                drop_missing=drop_missing)  # fmt: skip
    ex, extra = _exemplar_part(bundle_dir, card, enc, exemplars, old, stale, opts, info)
    if extra is None:
        extra = stored_extras(bundle_dir)
    n_stale_df = sum(r.get("origin") == "data-free" for r in stale)
    if data_free > 0:
        lb = loaded_bundle(bundle_dir)
        df, images = data_free_prototypes(enc, lb, data_free, steps, seed, size, settings, cancel, True)
        info["data-free"] = "made"
    elif old is not None:
        df = old.select(["data-free"])
        info["data-free"] = "kept" if len(df) else "none"
    else:
        df = _empty(card)
        info["data-free"] = "dropped" if n_stale_df else "none"
    if not len(ex) and not len(df):
        raise InputError(
            f"{name}: nothing to make prototypes from; pass exemplar images (--exemplars) and/or --data-free N."
        )
    if info["data-free"] == "dropped":
        warn(f"{name}: its {n_stale_df} stored data-free prototype(s) are unusable with this encoder (made by "
             "another, or damaged) and are dropped; make new ones with --data-free N.")  # fmt: skip
    meta = {**(old.meta if old is not None else {}), **ex.meta, **df.meta, "encoder": ident}
    if not len(df):
        meta.pop("data-free", None)
    if not len(ex):
        meta.pop("exemplar", None)
    pset = ex.merged(df)
    pset = PrototypeSet(pset.vectors, pset.rows, card.name, card.version, meta)
    check_cancel(cancel)
    with zoo.writing():  # zoo writers remove what a killed save left in the bundle, so never this one's
        save_prototypes(bundle_dir, pset, extra)
        if data_free > 0 and pngs:  # pictures of the prototypes just saved, never of ones a cancel kept out
            save_pngs(bundle_dir, images, pngs)
    return pset


def stored_extras(bundle_dir: PathLike) -> dict[str, dict[str, np.ndarray]]:
    """The ``.npz`` files stored beside a bundle's prototypes other than the vectors (kept on a refresh that
    does not remake them)."""
    out = {}
    for f in sorted(prototypes_dir(bundle_dir).glob("*.npz")):
        if f.name != VECTORS_FILE:
            try:
                out[f.name] = read_npz(f, MAX_EXTRA_BYTES)
            except NPZ_ERRORS as e:
                raise BundleError(f"{f}: truncated or damaged ({str(e)[:120]}); make the prototypes again with "
                                  f"`{_remake_command(bundle_dir)} --exemplars IMAGES`.") from e  # fmt: skip
    return out


def feature_statistics_of(
    bundle_dir: PathLike, images: Sequence[Union[Image, PathLike]], seed: int = 0
) -> dict[str, dict[str, np.ndarray]]:
    """The model's own feature statistics on its example inputs, when its runtime makes them
    (``fit_feature_statistics``, e.g. the segmentation runtime's bottleneck features for a Mahalanobis
    fit signal): ``{file name: arrays}``, empty otherwise."""
    from ..models.registry import runtime_for

    runtime = runtime_for(loaded_bundle(bundle_dir))
    fit = getattr(runtime, "fit_feature_statistics", None)
    if fit is None:
        return {}
    stats = fit([_as_image(i)[0] for i in images], seed=seed)
    from ..models.segmentation import FEATURE_STATS_FILE

    return {FEATURE_STATS_FILE: stats} if stats is not None else {}


__all__ = [
    "ORIGINS",
    "PrototypeSet",
    "data_free_prototypes",
    "encoder_id",
    "exemplar_prototypes",
    "generate_for_model",
    "has_prototypes",
    "load_prototypes",
    "prototypes_digest",
    "recorded_source",
    "resolve_recorded_source",
    "stale_exemplar_sources",
    "check_stale_sources",
    "domain_mismatch",
    "save_prototypes",
    "feature_statistics_of",
    "stored_extras",
]
