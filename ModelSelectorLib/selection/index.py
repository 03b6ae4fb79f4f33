"""The zoo's prototype index: hnswlib (cosine) over every model's prototypes, with a JSON sidecar.

Layout of an index folder (default ``ZOO/index/``)::

    index.json          sidecar: format, dim, encoder id, hnswlib settings, the graph file's name,
                        per model {version, prototypes digest, labels}, per label {model, version,
                        origin, source, view}, next label, calibration of the selector's threshold
    graph-<token>.bin   the hnswlib graph (``Index.save_index``)

Saving is atomic: the graph goes to a new file with a fresh token, then the sidecar naming it replaces the
old sidecar in one rename (the commit point), and only then is the old graph deleted. An interrupted save
therefore leaves the previous index loadable. Models are added incrementally and removed with hnswlib's
``mark_deleted`` (the graph keeps the deleted points; :func:`build_index` compacts).

Typical use::

    from ModelSelectorLib.selection.calibration import build_index
    from ModelSelectorLib.selection.index import load_index
    idx = build_index(zoo)            # every model's stored prototypes; calibrates; not yet saved
    idx.save(zoo.path / "index")
    idx = load_index(zoo)             # ZOO/index
    idx.check_against(zoo)            # IndexMismatchError when they disagree, naming the fixing command
    labels, distances = idx.query(vectors, k=10)
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shlex
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np

from ..atomic import remove_leftovers, write_json, writer_lock
from ..errors import BundleError, IndexMismatchError
from ..progress import check_cancel, progress_bar
from ..zoo.catalog import open_zoo
from .encoder import EMBED_DIM
from .hnsw_file import check_graph_file, file_digest
from .prototypes import (
    ORIGINS,
    PROTOTYPES_DIR,
    RECORDS_FILE,
    PrototypeSet,
    has_prototypes,
    load_prototypes,
    prototypes_digest,
)

PathLike = Union[str, "os.PathLike[str]"]

SIDECAR = "index.json"
INDEX_DIRNAME = "index"
FORMAT = 1


def default_index_dir(zoo: Any) -> Path:
    """``ZOO/index`` for a zoo (a :class:`~ModelSelectorLib.zoo.Zoo` or its folder)."""
    return Path(getattr(zoo, "path", zoo)) / INDEX_DIRNAME


def _zoo_arg(zoo: Any) -> str:
    """The zoo's folder as a shell word for the commands printed in messages."""
    return shlex.quote(str(getattr(zoo, "path", zoo)))


def build_hint(directory: PathLike, zoo: Any = None) -> str:
    """The command that builds the index in ``directory`` for ``zoo`` (default: the folder above an
    ``index`` folder), with ``--index`` when the folder is not the zoo's default one."""
    d = Path(directory)
    if zoo is None and d.name != INDEX_DIRNAME:  # a folder of its own: its zoo is unknown here
        return f"`modelselector index build --zoo ZOO --index {shlex.quote(str(d))}`"
    zoo = d.parent if zoo is None else zoo
    cmd = f"modelselector index build --zoo {_zoo_arg(zoo)}"
    if d.absolute() != default_index_dir(zoo).absolute():
        cmd += f" --index {shlex.quote(str(d))}"
    return f"`{cmd}`"


def prototypes_encoder(bundle_dir: PathLike) -> str:
    """The id of the encoder that made a bundle's stored prototypes ("" when unknown or unreadable)."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        records = json.loads((Path(bundle_dir) / PROTOTYPES_DIR / RECORDS_FILE).read_text(encoding="utf-8"))
        return str((records.get("meta") or {}).get("encoder", ""))
    return ""


def _replaced(d: Path, graph: Path) -> bool:
    """True when ``graph`` is gone or the sidecar in ``d`` no longer names it (another process saved)."""
    if not graph.is_file():
        return True
    try:
        return json.loads((d / SIDECAR).read_text(encoding="utf-8")).get("graph") != graph.name
    except (OSError, ValueError, AttributeError):
        return True  # the sidecar is being replaced


class ZooIndex:
    """An hnswlib index over prototype vectors with per-label metadata.

    Args:
        dim: vector dimension (the encoder's embedding size).
        M, ef_construction: hnswlib graph settings (more = better recall, slower build).
        ef: hnswlib query-time candidate list size (raised to ``k`` when smaller).
        capacity: initial number of elements (grows as needed).
        encoder: id of the encoder that made the vectors (see :func:`~ModelSelectorLib.prototypes.encoder_id`).

    Attributes:
        items: label -> ``{"model", "version", "origin", "source", "view"}`` of every live prototype.
        models: model name -> ``{"version", "digest", "labels"}``.
        calibration: the selector's calibrated threshold (see :func:`ModelSelectorLib.selection.calibration.calibrate`).
        path: folder it was loaded from or last saved to.
    """

    def __init__(
        self,
        dim: int = EMBED_DIM,
        M: int = 16,
        ef_construction: int = 200,
        ef: int = 64,
        capacity: int = 1024,
        encoder: str = "",
    ) -> None:
        import hnswlib

        self.dim = int(dim)
        self.M = int(M)
        self.ef_construction = int(ef_construction)
        self.ef = int(ef)
        self.encoder = encoder
        self.items: dict[int, dict[str, Any]] = {}
        self.models: dict[str, dict[str, Any]] = {}
        self.calibration: dict[str, Any] = {}
        self.next_label = 0
        self.path: Optional[Path] = None
        self._graph_file: Optional[str] = None
        self._index = hnswlib.Index(space="cosine", dim=self.dim)
        self._index.init_index(
            max_elements=max(16, int(capacity)), ef_construction=self.ef_construction, M=self.M
        )
        self._index.set_ef(self.ef)
        self._vector_cache: dict[str, np.ndarray] = {}

    # --- contents -------------------------------------------------------------------------------------
    def __len__(self) -> int:
        """Number of live (not deleted) prototypes."""
        return len(self.items)

    def model_names(self) -> list[str]:
        return sorted(self.models)

    def add_vectors(self, vectors: np.ndarray, records: Sequence[dict[str, Any]]) -> np.ndarray:
        """Add vectors ``(n, dim)`` with one metadata record each; returns their labels ``(n,)`` int64."""
        v = np.ascontiguousarray(vectors, dtype=np.float32)
        if v.ndim != 2 or v.shape[1] != self.dim:
            raise IndexMismatchError(
                f"prototype vectors have shape {v.shape}; the index holds {self.dim}-d vectors. "
                "Regenerate the prototypes with the index's encoder or rebuild the index."
            )
        if len(v) != len(records):
            raise ValueError("one record per vector is needed")
        labels = np.arange(self.next_label, self.next_label + len(v), dtype=np.int64)
        need = self._index.get_current_count() + len(v)
        if need > self._index.get_max_elements():
            self._index.resize_index(max(need, 2 * self._index.get_max_elements()))
        if len(v):
            self._index.add_items(v, labels)
        for lab, rec in zip(labels.tolist(), records):
            self.items[int(lab)] = dict(rec)
        self.next_label += len(v)
        return labels

    def add_prototypes(self, pset: PrototypeSet, digest: str = "", zoo: Any = "ZOO") -> int:
        """Add (or replace) one model's prototypes; returns the number added (``zoo``: named in error messages)."""
        if not pset.model:
            raise IndexMismatchError("prototypes without a model name cannot be indexed.")
        enc = str(pset.meta.get("encoder", ""))
        if self.encoder and enc and enc != self.encoder:
            raise IndexMismatchError(
                f"the prototypes of {pset.model} were made with encoder {enc}, the index with {self.encoder}; "
                f"make them again with the zoo's encoder: `modelselector prototypes --zoo {_zoo_arg(zoo)} --model "
                f"{pset.model}`."
            )
        self.encoder = self.encoder or enc
        indexed = self.models.get(pset.model) or {}
        # the same prototypes of the same version again (a refresh): the operating points calibrated on them hold
        kept = self.operating_points(pset.model) if digest and (indexed.get("digest"), indexed.get("version")) == (
            digest, pset.version) else {}  # fmt: skip
        if pset.model in self.models:
            self.remove_model(pset.model)
        records = [{"model": pset.model, "version": pset.version, **r} for r in pset.rows]
        labels = self.add_vectors(pset.vectors, records)
        self.models[pset.model] = {"version": pset.version, "digest": digest, "labels": labels.tolist(),
                                   "origins": pset.origins()}  # fmt: skip
        for key, point in kept.items():
            self.calibration["settings"][key]["models"][pset.model] = point
        return len(labels)

    def operating_points(self, name: str) -> dict[str, Any]:
        """Model ``name``'s own calibrated operating points, per calibration setting (none: it uses the pooled one)."""
        return {key: setting["models"][name] for key, setting in (self.calibration.get("settings") or {}).items()
                if isinstance(setting, dict) and isinstance(setting.get("models"), dict) and name in setting["models"]}  # fmt: skip

    def add_model(self, zoo: Any, name: str, version: Optional[str] = None) -> int:
        """Add model ``name`` (its current version unless ``version``) from the zoo, replacing an older entry.

        Raises:
            ZooError: unknown model. IndexMismatchError: the model has no prototypes (the message gives the
            command that makes them) or they were made with another encoder.
        """
        bundle = zoo.get(name, version)
        if not has_prototypes(bundle):
            raise IndexMismatchError(
                f"model {name!r} has no prototypes; make them with `modelselector prototypes --zoo "
                f"{_zoo_arg(zoo)} --model {name} --exemplars IMAGES --data-free 4`, then run "
                f"`modelselector index add --zoo {_zoo_arg(zoo)} --model {name}`."
            )
        try:
            pset = load_prototypes(bundle)
        except BundleError as e:
            raise IndexMismatchError(str(e)) from e
        card = zoo.card(name, version)
        made_for = (pset.model, pset.version)
        source = zoo.version_info(name, card.version).get("source_card") or {}
        # a promoted version carries the prototypes of the candidate it copies, made for the same weights
        if pset.model and made_for not in ((name, card.version), (source.get("name"), source.get("version"))):
            raise IndexMismatchError(
                f"{bundle}: its prototypes were made for {made_for[0]} {made_for[1]}, not {name} {card.version} (a "
                "bundle copied with another model's prototypes, or a new version with its predecessor's: other "
                f"weights); make them for this model with `modelselector prototypes --zoo {_zoo_arg(zoo)} --model "
                f"{name} --exemplars IMAGES --data-free 4`, then run `modelselector index add --zoo {_zoo_arg(zoo)} "
                f"--model {name}`."
            )
        pset.model, pset.version = name, card.version
        return self.add_prototypes(pset, prototypes_digest(bundle), zoo)

    def remove_model(self, name: str) -> int:
        """Remove a model's prototypes (hnswlib ``mark_deleted``) and its calibrated operating points; returns the
        number of prototypes removed.

        Raises:
            IndexMismatchError: the model is not in the index.
        """
        if name not in self.models:
            known = ", ".join(self.model_names()) or "none"
            raise IndexMismatchError(f"model {name!r} is not in the index; indexed models: {known}.")
        labels = self.models.pop(name)["labels"]
        for lab in labels:
            with contextlib.suppress(RuntimeError):
                self._index.mark_deleted(int(lab))
            self.items.pop(int(lab), None)
        self._vector_cache.pop(name, None)
        for setting in (self.calibration.get("settings") or {}).values():  # its operating point goes with it
            if isinstance(setting, dict) and isinstance(setting.get("models"), dict):
                setting["models"].pop(name, None)
        return len(labels)

    def labels_of(
        self, name: str, origins: Sequence[str] = ORIGINS, exclude_sources: Sequence[str] = ()
    ) -> list[int]:
        """Live labels of model ``name`` whose origin is in ``origins`` and whose source is not excluded."""
        ex = set(exclude_sources)
        return [
            lab
            for lab in self.models.get(name, {}).get("labels", [])
            if lab in self.items
            and self.items[lab]["origin"] in origins
            and self.items[lab].get("source") not in ex
        ]

    def vectors(self, labels: Sequence[int]) -> np.ndarray:
        """The stored vectors of ``labels`` as float32 ``(n, dim)`` (unit rows)."""
        if not len(labels):
            return np.zeros((0, self.dim), np.float32)
        v = np.asarray(self._index.get_items(list(labels)), dtype=np.float32)
        return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)

    def model_vectors(self, name: str) -> tuple[np.ndarray, list[int]]:
        """All live vectors of a model and their labels (cached)."""
        labels = self.labels_of(name)
        cached = self._vector_cache.get(name)
        if cached is None or len(cached) != len(labels):
            cached = self.vectors(labels)
            self._vector_cache[name] = cached
        return cached, labels

    # --- search ---------------------------------------------------------------------------------------
    def query(
        self,
        vectors: np.ndarray,
        k: int = 10,
        origins: Optional[Sequence[str]] = None,
        ef: Optional[int] = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` nearest live prototypes of each query vector.

        Args:
            vectors: float32 ``(m, dim)`` (or ``(dim,)``).
            k: neighbours per query (clipped to the number of eligible prototypes).
            origins: only prototypes of these origins (default: all).
            ef: hnswlib search width (default ``max(self.ef, k)``).

        Returns:
            ``(labels, distances)``, both ``(m, k')``: int64 labels and float32 cosine distances
            (``1 - cos``), nearest first.
        """
        q = np.ascontiguousarray(np.atleast_2d(vectors), dtype=np.float32)
        if q.shape[1] != self.dim:
            raise IndexMismatchError(
                f"query vectors are {q.shape[1]}-d; the index holds {self.dim}-d vectors."
            )
        flt = None
        n_ok = len(self.items)
        if origins is not None and set(origins) != set(ORIGINS):
            allowed = {lab for lab, r in self.items.items() if r["origin"] in set(origins)}
            n_ok = len(allowed)
            flt = allowed.__contains__
        k = min(int(k), n_ok)
        if k <= 0 or not len(q):
            return np.zeros((len(q), 0), np.int64), np.zeros((len(q), 0), np.float32)
        self._index.set_ef(max(int(ef or self.ef), k))
        try:
            labels, dist = self._index.knn_query(q, k=k, filter=flt)
        except RuntimeError:  # too few reachable points for k with a filter: ask for a wider search
            self._index.set_ef(max(4 * k, 200))
            labels, dist = self._index.knn_query(q, k=k, filter=flt)
        return labels.astype(np.int64), dist.astype(np.float32)

    # --- persistence ----------------------------------------------------------------------------------
    def _sidecar(self, graph_file: str, digest: dict[str, Any]) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "space": "cosine",
            "dim": self.dim,
            "M": self.M,
            "ef_construction": self.ef_construction,
            "ef": self.ef,
            "encoder": self.encoder,
            "graph": graph_file,
            "graph_digest": digest,
            "n_elements": int(self._index.get_current_count()),
            "next_label": self.next_label,
            "saved": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "calibration": self.calibration,
            "models": self.models,
            "items": {str(k): v for k, v in sorted(self.items.items())},
        }

    def save(self, directory: Optional[PathLike] = None) -> Path:
        """Save graph + sidecar into ``directory`` (default: where it was loaded from) atomically, holding the
        folder's write lock; the sidecar records the graph's size and SHA-256.

        Returns:
            the folder.

        Raises:
            IndexMismatchError: another process saved the index in ``directory`` after this one was loaded
                from there (saving would lose its changes). LockedError: the folder stayed locked too long.
        """
        if directory is None and self.path is None:
            raise IndexMismatchError("no folder to save the index to; pass one (e.g. ZOO/index).")
        d = Path(directory) if directory is not None else self.path
        assert d is not None
        with writer_lock(d):
            self._check_unchanged(d)
            remove_leftovers(d)
            graph = f"graph-{time.strftime('%Y%m%d%H%M%S')}-{secrets.token_hex(4)}.bin"
            try:
                self._index.save_index(str(d / graph))
                os.chmod(d / graph, 0o644)
                write_json(d / SIDECAR, self._sidecar(graph, file_digest(d / graph)))  # the commit point
                os.chmod(d / SIDECAR, 0o644)
            except BaseException:
                with contextlib.suppress(OSError):
                    (d / graph).unlink()
                raise
            for f in d.glob("graph-*.bin"):  # the old graph and leftovers of interrupted saves
                if f.name != graph:
                    with contextlib.suppress(OSError):
                        f.unlink()
        self.path, self._graph_file = d, graph
        return d

    def _check_unchanged(self, d: Path) -> None:
        """Refuse to overwrite an index that another process saved after this one was loaded from ``d``."""
        if self.path is None or self._graph_file is None or self.path.resolve() != d.resolve():
            return
        with contextlib.suppress(OSError, ValueError, TypeError, AttributeError):
            now = json.loads((d / SIDECAR).read_text(encoding="utf-8")).get("graph")
            if now != self._graph_file:
                raise IndexMismatchError(
                    f"{d}: another process saved this index after it was loaded here; saving now would lose "
                    "its changes. Load the index again and repeat the change."
                )

    @classmethod
    def load(cls, directory: PathLike, zoo: Any = None) -> ZooIndex:
        """Load an index saved by :meth:`save`, after checking its graph file (size and SHA-256 recorded in
        the sidecar, and the file's structure) so that a damaged file cannot crash hnswlib.

        Args:
            directory: the index folder.
            zoo: the zoo it belongs to (a :class:`~ModelSelectorLib.zoo.Zoo` or folder), named in the command
                that rebuilds it (default: the folder above ``directory``).

        Raises:
            IndexMismatchError: no index there, or a corrupt sidecar or graph (the message says how to
            rebuild it).
        """
        d = Path(directory)
        zoo_hint = build_hint(d, zoo)
        if not (d / SIDECAR).is_file():
            raise IndexMismatchError(f"{d}: no prototype index there; build it with {zoo_hint}.")
        missing: Optional[FileNotFoundError] = None
        for attempt in range(5):  # a writer may replace the graph between reading the sidecar and the graph
            try:
                return cls._load_once(d, zoo_hint)
            except FileNotFoundError as e:
                missing = e
                time.sleep(0.1 * (attempt + 1))
        name = getattr(missing, "filename", None) or d / SIDECAR
        raise IndexMismatchError(f"{name}: the index graph is missing; rebuild it with {zoo_hint}.")

    @classmethod
    def _load_once(cls, d: Path, zoo_hint: str) -> ZooIndex:
        import hnswlib

        try:
            side = json.loads((d / SIDECAR).read_text(encoding="utf-8"))
            if not isinstance(side, dict) or side.get("format") != FORMAT:
                raise ValueError(f"unknown format {side.get('format') if isinstance(side, dict) else side!r}")
            graph = d / Path(str(side["graph"])).name
            items = {int(k): dict(v) for k, v in side["items"].items()}
            models = {str(k): dict(v) for k, v in side["models"].items()}
            idx = cls(int(side["dim"]), int(side.get("M", 16)), int(side.get("ef_construction", 200)),
                      int(side.get("ef", 64)), 16, str(side.get("encoder", "")))  # fmt: skip
            n = int(side.get("n_elements", len(items)))
        except FileNotFoundError:
            raise
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise IndexMismatchError(
                f"{d / SIDECAR}: corrupt index sidecar ({e}); rebuild it with {zoo_hint}."
            ) from e
        if not graph.is_file():
            raise FileNotFoundError(2, "no such file", str(graph))
        recorded = side.get("graph_digest")
        try:
            if isinstance(recorded, dict) and recorded != file_digest(graph):
                raise ValueError("its size or SHA-256 differs from the one recorded in index.json")
            check_graph_file(graph, idx.dim, n, idx.M)
            h = hnswlib.Index(space="cosine", dim=idx.dim)
            h.load_index(str(graph), max_elements=max(n, 16))
        except FileNotFoundError:
            raise
        except (OSError, RuntimeError, ValueError, MemoryError) as e:
            if _replaced(d, graph):  # a writer saved a new index meanwhile: read that one (load retries)
                raise FileNotFoundError(2, f"replaced while loading ({e})", str(graph)) from e
            raise IndexMismatchError(
                f"{graph}: corrupt index graph ({e}); rebuild it with {zoo_hint}."
            ) from e
        h.set_ef(idx.ef)
        idx._index = h
        idx.items, idx.models = items, models
        idx.next_label = int(side.get("next_label", max(items, default=-1) + 1))
        idx.calibration = dict(side.get("calibration") or {})
        idx.path, idx._graph_file = d, graph.name
        return idx

    # --- consistency ----------------------------------------------------------------------------------
    def problems(self, zoo: Any, encoder: str = "", models: Optional[Sequence[str]] = None) -> list[str]:
        """Every disagreement between the index and ``zoo``, each with the command that fixes it.

        Args:
            encoder: id of the encoder in use (:func:`~.prototypes.encoder_id`); when a model's prototypes were
                made with another encoder than the index's, it tells which of the two is out of date.
            models: the zoo models to look at (default: all of them); models the index holds and the zoo does not
                are named either way.
        """
        z = _zoo_arg(zoo)
        names = zoo.names() if models is None else models
        out = [p for p in (self._model_problem(zoo, name, z, encoder) for name in names) if p]
        for name in self.model_names():
            if name not in zoo:
                out.append(
                    f"model {name!r} is in the index but not in the zoo; run "
                    f"`modelselector index remove --zoo {z} --model {name}`"
                )
        return out

    def _model_problem(self, zoo: Any, name: str, z: str, encoder: str) -> Optional[str]:
        """What is wrong with the index's entry of zoo model ``name`` (None when nothing is)."""
        bundle = zoo.get(name)
        current = zoo.card(name).version
        entry = self.models.get(name)
        fix = f"`modelselector index add --zoo {z} --model {name}`"
        found = has_prototypes(bundle)
        make = f"`modelselector prototypes --zoo {z} --model {name} --exemplars IMAGES --data-free 4`, then {fix}"
        if entry is None and not found:
            return f"model {name!r} is in the zoo but has no prototypes and is not in the index; run {make}"
        if not found and entry.get("version") != current:  # a new version (trained again) without prototypes
            return (f"the index holds version {entry.get('version')} of {name!r} but the zoo's current version is "
                    f"{current} (stale), which has no prototypes yet; run {make}")  # fmt: skip
        if entry is None:
            problem = f"model {name!r} (version {current}) is in the zoo but not in the index; run {fix}"
        elif entry.get("version") != current:
            problem = (
                f"the index holds version {entry.get('version')} of {name!r} but the zoo's current version is "
                f"{current} (stale); run {fix}"
            )
        elif found and entry.get("digest") and prototypes_digest(bundle) != entry["digest"]:
            problem = f"the prototypes of {name!r} changed after it was indexed (stale); run {fix}"
        else:
            return None
        made_with = prototypes_encoder(bundle) if found else ""
        if made_with and self.encoder and made_with != self.encoder:  # `index add` would refuse them
            return self._encoder_problem(name, made_with, encoder, z)
        return problem

    def _encoder_problem(self, name: str, made_with: str, encoder: str, z: str) -> str:
        """The problem of prototypes made with another encoder than the index's, with the command that fixes it:
        the index is rebuilt when the prototypes are the encoder in use's, else the prototypes are made again."""
        head = f"the prototypes of {name!r} were made with encoder {made_with}, the index with {self.encoder}"
        if encoder and made_with == encoder:  # the index is the one out of date
            return (
                f"{head} (the encoder in use); rebuild the index with `modelselector index build --zoo {z}`"
            )
        return (
            f"{head}; make its prototypes again with the zoo's encoder (`modelselector prototypes --zoo {z} --model "
            f"{name}`), then run `modelselector index add --zoo {z} --model {name}`"
        )

    def check_against(self, zoo: Any, encoder: str = "", allow_unindexed: bool = False) -> list[str]:
        """Raise :class:`IndexMismatchError` when the index and ``zoo`` disagree (missing or stale models, or
        prototypes made with another encoder; ``encoder``: id of the encoder in use, see :meth:`problems`).

        The message names each model concerned and the command that fixes it. With ``allow_unindexed``, a zoo model
        the index does not hold at all (trained or added since) is no disagreement: it is never scored, so never
        offered, and its problem is returned for a warning (``[]`` otherwise).
        """
        waived = [n for n in zoo.names() if n not in self.models] if allow_unindexed else []
        z = _zoo_arg(zoo)
        notes = [p for p in (self._model_problem(zoo, n, z, encoder) for n in waived) if p]
        probs = self.problems(zoo, encoder, [n for n in zoo.names() if n not in waived])
        if probs:
            raise IndexMismatchError(
                f"the index {self.path or ''} does not match the zoo {_zoo_arg(zoo)}: "
                + "; ".join(probs)
                + "."
            )
        return notes

    def __repr__(self) -> str:
        return f"ZooIndex(models={self.model_names()}, prototypes={len(self)}, dim={self.dim})"


def index_zoo(
    zoo: Any,
    models: Optional[Sequence[str]] = None,
    M: int = 16,
    ef_construction: int = 200,
    cancel: Optional[Any] = None,
) -> ZooIndex:
    """A new, uncalibrated index over the stored prototypes of every model of ``zoo`` (or of ``models``).

    :func:`ModelSelectorLib.selection.calibration.build_index` builds and calibrates. The index is not saved:
    call :meth:`ZooIndex.save` (e.g. to :func:`default_index_dir`).

    Raises:
        IndexMismatchError: the zoo is empty, or a model has no prototypes (the message names it and the
        command that makes them).
    """
    zoo = open_zoo(zoo)
    names = list(models) if models is not None else zoo.names()
    if not names:
        raise IndexMismatchError(
            f"the zoo {zoo.path} holds no models; add one with `modelselector zoo add BUNDLE --zoo {_zoo_arg(zoo)}` "
            f"or `modelselector train ... --out {_zoo_arg(zoo)}` first."
        )
    dims = {load_prototypes(zoo.get(n)).dim for n in names if has_prototypes(zoo.get(n))}
    idx = ZooIndex(dim=max(dims) if dims else EMBED_DIM, M=M, ef_construction=ef_construction)
    for name in progress_bar(names, desc="indexing prototypes"):
        check_cancel(cancel)
        idx.add_model(zoo, name)
    return idx


@contextlib.contextmanager
def updating_index(directory: PathLike, zoo: Any = None) -> Iterator[ZooIndex]:
    """Load the index in ``directory`` while holding its write lock; change and :meth:`~ZooIndex.save` it in
    the block. Concurrent updates (``modelselector index add`` in several processes) then take turns and each
    starts from the index the previous one saved, so none is lost.

    ``zoo`` (its folder or :class:`~ModelSelectorLib.zoo.Zoo`) is named in the command of an error message.

    Raises:
        IndexMismatchError: no index there, or a corrupt one. LockedError: the folder stayed locked too long.
    """
    d = Path(directory)
    if not (d / SIDECAR).is_file():
        ZooIndex.load(d, zoo)  # raises with the command that builds one
    with writer_lock(d):
        yield ZooIndex.load(d, zoo)


def load_index(zoo_or_dir: Any) -> ZooIndex:
    """Load ``ZOO/index`` of a zoo (a :class:`~ModelSelectorLib.zoo.Zoo`), or an index folder."""
    p = Path(getattr(zoo_or_dir, "path", zoo_or_dir))
    if (p / INDEX_DIRNAME / SIDECAR).is_file() or (p / "zoo.json").is_file():
        return ZooIndex.load(p / INDEX_DIRNAME, p)
    return ZooIndex.load(p)


__all__ = [
    "ZooIndex",
    "build_hint",
    "default_index_dir",
    "index_zoo",
    "load_index",
    "prototypes_encoder",
    "updating_index",
]
