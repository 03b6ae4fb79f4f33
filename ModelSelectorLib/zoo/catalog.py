"""The model zoo: a folder of versioned MONAI bundles and a catalog ``zoo.json``.

Layout::

    ZOO/
      zoo.json                       {"format": 1, "models": {NAME: {"current": VERSION, "versions": {...}}}}
      models/NAME/VERSION/           one MONAI bundle per version (see :mod:`.bundle`)

Each version entry holds ``path``, ``added``, ``metrics`` and, once promoted, ``promoted`` (date) and the
gate's ``evaluation``; a model entry may hold ``history``: one ``{"date", "action", "version", "from", ...}``
per promotion, refusal or restore (see :mod:`ModelSelectorLib.ranking.promotion`) and per new recipe version
built by ``build-starter-zoo``. Promoting or restoring only moves ``current``; a version is replaced only when
``build-starter-zoo`` retrains the same recipe version (another seed, or ``--force``), and then keeps its
``added`` date (its place in :meth:`Zoo.versions`) and gains ``rebuilt``.

Every change is crash-safe: a bundle is copied into a temporary sibling folder, checked, and renamed into
place; only then is the catalog rewritten atomically. An interrupted ``add`` therefore leaves the previous
catalog intact and lists no partial model. ``remove`` rewrites the catalog first and deletes files after.

Every change holds the zoo's write lock (``ZOO/.lock``, :func:`~ModelSelectorLib.atomic.writer_lock`), so
concurrent writers take turns and each sees the catalog the previous one wrote. The writer that holds the lock
first removes what killed writers left: temporary files and folders, and bundle folders that ``zoo.json`` does
not list and that are marked as pending (:data:`PENDING_MARKER`: a copy renamed into place just before its
``add`` was killed, or the files of a killed ``remove``). An unlisted bundle without the mark was put there by
someone else and is left alone.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional, Union

from .. import atomic
from ..errors import BundleError, ZooError
from ..models.registry import runtime_class
from ..provenance import file_digest, utc_timestamp
from ..resources import default_zoo_path
from .bundle import (
    WEIGHTS_FILE,
    copy_bundle,
    import_monai_bundle,
    is_standard_monai_bundle,
    load_bundle,
    read_metadata,
    validate_bundle,
    write_card,
)
from .card import ModelCard
from .trust import recorded_trust, remember_trust

PathLike = Union[str, "os.PathLike[str]"]

CATALOG = "zoo.json"
MODELS = "models"
#: a zoo's folder of sweeps (``ZOO/sweeps/TASK``: candidates' splits, evaluations and reports)
SWEEPS = "sweeps"
FORMAT = 1
#: a file in a bundle folder that an ``add`` or ``remove`` of this zoo is under way for
PENDING_MARKER = ".modelselector-pending"
_ZOO_OWN_NAMES = frozenset({MODELS, atomic.LOCK_NAME})  # what an interrupted create may have left
_CREATE_HINT = "create one with `modelselector zoo init --zoo PATH` or `modelselector train --out PATH`"
_REBUILD_HINT = ("restore it from a backup, or make a new zoo (`modelselector zoo init --zoo NEW`) and `modelselector "
                 "zoo add` the bundles under this zoo's models/ folder to it")  # fmt: skip


class Zoo:
    """A model zoo folder with its catalog.

    Args:
        path: the zoo folder (holding ``zoo.json``).

    Raises:
        ZooError: the folder or ``zoo.json`` is missing or corrupt; the message says how to create one.
    """

    def __init__(self, path: PathLike) -> None:
        self.path = Path(path)
        self._catalog = self._read_catalog()

    # --- catalog --------------------------------------------------------------------------------------
    @property
    def catalog_path(self) -> Path:
        return self.path / CATALOG

    def _read_catalog(self) -> dict[str, Any]:
        if not self.path.is_dir():
            raise ZooError(f"{self.path}: no zoo folder there; {_CREATE_HINT}.")
        if not self.catalog_path.is_file():
            raise ZooError(f"{self.path}: is not a zoo (no {CATALOG}); {_CREATE_HINT}.")
        try:
            data = json.loads(self.catalog_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ZooError(f"{self.catalog_path}: corrupt catalog ({e}); {_REBUILD_HINT}.") from e
        if not isinstance(data, dict) or not isinstance(data.get("models"), dict):
            raise ZooError(f"{self.catalog_path}: corrupt catalog (no 'models' object); {_REBUILD_HINT}.")
        if data.get("format") != FORMAT:
            raise ZooError(
                f"{self.catalog_path}: catalog format {data.get('format')!r} is not supported (expected {FORMAT})."
            )
        for name, entry in data["models"].items():
            if (
                not isinstance(entry, dict)
                or not isinstance(entry.get("versions"), dict)
                or entry.get("current") not in entry["versions"]
            ):
                raise ZooError(
                    f"{self.catalog_path}: corrupt entry for model {name!r}; remove it with a text editor."
                )
        return data

    def _write_catalog(self, data: dict[str, Any]) -> None:
        atomic.write_json(self.catalog_path, data)
        self._catalog = data

    @contextlib.contextmanager
    def writing(self) -> Iterator[dict[str, Any]]:
        """Hold the zoo's write lock; yield a fresh copy of the catalog after removing what killed writers
        left (see the module's docstring). Re-entrant, so a caller may group several changes.

        Raises:
            LockedError: another writer held the lock too long, or the zoo folder is read-only.
        """
        with atomic.writer_lock(self.path):
            data = self._read_catalog()
            self._remove_leftovers(data)
            yield json.loads(json.dumps(data))

    def _remove_leftovers(self, data: dict[str, Any]) -> None:
        atomic.remove_leftovers(self.path)
        models = self.path / MODELS
        atomic.remove_leftovers(models)
        listed = {Path(v["path"]).as_posix() for e in data["models"].values() for v in e["versions"].values()}
        for model_dir in sorted(models.iterdir()) if models.is_dir() else []:
            if not model_dir.is_dir() or model_dir.is_symlink() or model_dir.name.startswith("."):
                continue
            atomic.remove_leftovers(model_dir)
            for version_dir in sorted(model_dir.iterdir()):
                rel = version_dir.relative_to(self.path).as_posix()
                pending = version_dir / PENDING_MARKER
                if rel in listed:  # an add killed after its catalog write
                    pending.unlink(missing_ok=True)
                    # what a killed `prototypes` left (it saves holding the lock)
                    atomic.remove_leftovers(version_dir)
                elif pending.is_file():  # left by a killed add or remove; a bundle put here by hand stays
                    shutil.rmtree(version_dir, ignore_errors=True)
            if model_dir.name not in data["models"] and not any(model_dir.iterdir()):
                model_dir.rmdir()

    def reload(self) -> Zoo:
        """Re-read ``zoo.json`` (after another process changed it)."""
        self._catalog = self._read_catalog()
        return self

    @classmethod
    def create(cls, path: PathLike, exist_ok: bool = True) -> Zoo:
        """Make an empty zoo at ``path`` (folders + ``zoo.json``); an existing valid zoo is returned as is.

        Raises:
            ZooError: ``path`` is a file, holds a corrupt ``zoo.json``, or is an existing zoo with
                ``exist_ok=False``.
        """
        path = Path(path)
        if path.exists() and not path.is_dir():
            raise ZooError(f"{path}: is a file, not a folder; choose another zoo path.")
        if (path / CATALOG).exists():
            zoo = cls(path)  # raises on a corrupt catalog instead of overwriting it
            if not exist_ok:
                raise ZooError(f"{path}: is already a zoo with {len(zoo.names())} model(s).")
            return zoo
        foreign = (
            sorted(p.name for p in path.iterdir() if p.name not in _ZOO_OWN_NAMES) if path.is_dir() else []
        )
        if foreign:  # a data or output folder given by mistake must not become a zoo around its files
            raise ZooError(
                f"{path}: is not a zoo and holds other files ({', '.join(foreign[:3])}"
                f"{', ...' if len(foreign) > 3 else ''}); give an existing zoo or a new or empty folder."
            )
        (path / MODELS).mkdir(parents=True, exist_ok=True)
        with atomic.writer_lock(path):
            if not (path / CATALOG).exists():  # another process may have created it meanwhile
                atomic.write_json(path / CATALOG, {"format": FORMAT, "models": {}})
        return cls(path)

    # --- queries --------------------------------------------------------------------------------------
    def names(self) -> list[str]:
        """Names of the models in the zoo, sorted."""
        return sorted(self._catalog["models"])

    def __contains__(self, name: object) -> bool:
        return name in self._catalog["models"]

    def __len__(self) -> int:
        return len(self._catalog["models"])

    def _entry(self, name: str) -> dict[str, Any]:
        models = self._catalog["models"]
        if name not in models:
            known = ", ".join(sorted(models)) or "none (the zoo is empty)"
            raise ZooError(f"no model named {name!r} in the zoo {self.path}; known models: {known}.")
        return models[name]

    def versions(self, name: str) -> list[str]:
        """The versions of model ``name`` in the order they were added."""
        versions = self._entry(name)["versions"]
        return sorted(versions, key=lambda v: (versions[v].get("added", ""), v))

    def get(self, name: str, version: Optional[str] = None) -> Path:
        """The bundle folder of model ``name`` (its current version unless ``version`` is given).

        Raises:
            ZooError: unknown name (the message lists the known names) or version, or a missing folder.
        """
        entry = self._entry(name)
        version = version or entry["current"]
        if version not in entry["versions"]:
            raise ZooError(
                f"model {name!r} has no version {version!r}; versions: {', '.join(self.versions(name))}."
            )
        path = self.path / entry["versions"][version]["path"]
        if not path.is_dir():
            raise ZooError(
                f"{path}: the bundle of {name} {version} listed in {CATALOG} is missing; "
                f"remove it with `modelselector zoo remove {name} --zoo {shlex.quote(str(self.path))}` and add it "
                "again."
            )
        return path

    def card(self, name: str, version: Optional[str] = None) -> ModelCard:
        """The model card of model ``name`` (current version unless ``version`` is given)."""
        return validate_bundle(self.get(name, version))

    def list(self) -> list[dict[str, Any]]:
        """One dict per model, sorted by name: ``name``, ``version`` (current), ``versions``, ``path``,
        ``added``, ``metrics`` and, from the card, ``task_type``, ``modality``, ``body_region``, ``labels``
        (names), ``held_out`` (the headline held-out figure or None) and ``demonstration``. A model whose card cannot be read gets ``"error"`` with the reason instead."""
        out = []
        for name in self.names():
            entry = self._catalog["models"][name]
            current = entry["current"]
            info = entry["versions"][current]
            item: dict[str, Any] = {
                "name": name,
                "version": current,
                "current": current,
                "versions": self.versions(name),
                "path": str(self.path / info["path"]),
                "added": info.get("added", ""),
                "metrics": dict(info.get("metrics") or {}),
            }
            try:
                card = self.card(name)
                task = runtime_class(card.task_type)
                item.update(task_type=card.task_type, modality=card.modality, body_region=card.body_region,
                            labels=card.label_names, held_out=task.held_out(card),
                            demonstration=task.is_demonstration(card))  # fmt: skip
            except (ZooError, BundleError) as e:
                item["error"] = str(e)
            out.append(item)
        return out

    # --- changes --------------------------------------------------------------------------------------
    def add(
        self,
        bundle_dir: PathLike,
        name: Optional[str] = None,
        modality: Optional[str] = None,
        body_region: Optional[str] = None,
        trust: bool = False,
        *,
        current: bool = True,
        info: Optional[dict[str, Any]] = None,
        event: Optional[dict[str, Any]] = None,
    ) -> dict[str, Any]:
        """Copy a bundle into the zoo as a new model or a new (current) version of an existing one.

        A bundle without a ``"modelselector"`` card (a standard MONAI model-zoo bundle) is imported with
        :func:`~ModelSelectorLib.bundle.import_monai_bundle` and needs ``modality`` and ``body_region``;
        the card is then written into the zoo's copy. Every bundle is validated and loaded (network built,
        weights read with ``weights_only=True``) before the catalog lists it.

        Args:
            bundle_dir: the bundle folder to add.
            name: model name in the zoo (default: the card's name).
            modality, body_region: override (or, for standard MONAI bundles, supply) the card's values.
            trust: build the whole config as MONAI would (custom code, ``$`` expressions). The trust is the user's:
                it is recorded in the user's trust store (:func:`~.trust.remember_trust`, never in the zoo) and
                honoured wherever the zoo's copy is loaded later (``apply``, ``select``, ``prototypes``;
                :func:`~.trust.recorded_trust`) while its configs and code are unchanged; the catalog entry says
                ``"trusted"`` for information only. Only ``promote`` takes ``--trust`` too.
            current: make the new version the current one (a new model's only version is always current).
            info: extra keys for the version's catalog entry (e.g. ``promoted``, ``evaluation``).
            event: appended to the model's ``history`` in the same catalog write.

        Returns:
            the catalog entry of the new version, with ``name`` and ``version`` added.

        Raises:
            BundleError: the bundle is invalid, incomplete, or asks for untrusted code.
            ZooError: this name and version are already in the zoo.
        """
        src = Path(bundle_dir)
        if not src.is_dir():
            what = (
                "a file, not a bundle folder (configs/, models/, docs/)"
                if src.is_file()
                else "no such bundle folder"
            )
            raise BundleError(f"{src}: {what}.")
        trust = trust or recorded_trust(src)  # files the user trusted already (e.g. a promoted copy of them)
        card = self._card_for(src, name, modality, body_region, trust)
        with self.writing() as data:
            if card.version in data["models"].get(card.name, {}).get("versions", {}):
                raise ZooError(
                    f"{card.name} version {card.version} is already in the zoo; raise 'version' in the bundle's "
                    f"metadata.json or remove the model first (`modelselector zoo remove {card.name} --zoo "
                    f"{shlex.quote(str(self.path))}`)."
                )
            dest = self.path / MODELS / card.name / card.version
            if dest.exists():
                raise ZooError(f"{dest}: a folder that zoo.json does not list is already there (put there by hand?); "
                               "move it out of the zoo's models/ folder and add it from there.")  # fmt: skip
            trusted = self._copy_in(src, dest, card, trust)
            info = {"path": dest.relative_to(self.path).as_posix(), "added": utc_timestamp(),
                    "metrics": dict(card.validation_metrics), "weights": file_digest(dest / WEIGHTS_FILE),
                    **({"trusted": {"sha256": trusted}} if trusted else {}),
                    **json.loads(json.dumps(info or {}))}  # fmt: skip
            entry = data["models"].setdefault(card.name, {"current": card.version, "versions": {}})
            entry["versions"][card.version] = info
            if current or not entry["versions"].get(entry["current"]):
                entry["current"] = card.version
            if event:
                entry.setdefault("history", []).append(
                    {"date": utc_timestamp(), **json.loads(json.dumps(event))}
                )
            try:
                self._write_catalog(data)
            except BaseException:
                shutil.rmtree(dest, ignore_errors=True)  # never leave an unlisted copy behind
                with contextlib.suppress(OSError):
                    dest.parent.rmdir()  # only if empty (a new model's folder)
                raise
            (dest / PENDING_MARKER).unlink(missing_ok=True)
        return {"name": card.name, "version": card.version, **info}

    def _card_for(
        self, src: Path, name: Optional[str], modality: Optional[str], body_region: Optional[str], trust: bool
    ) -> ModelCard:
        if is_standard_monai_bundle(src):
            return import_monai_bundle(
                src, modality=modality, body_region=body_region, trust=trust, name=name
            )
        card = validate_bundle(src)
        changes: dict[str, Any] = {}
        if name:
            changes["name"] = name
        if modality:
            changes["modality"] = modality.strip().upper()
        if body_region:
            changes["body_region"] = body_region.strip().upper()
        if changes:
            card = ModelCard.from_dict({**card.to_dict(), **changes})
            try:
                card.validate()
            except BundleError as e:
                raise BundleError(f"{src}: {e}") from e
        return card

    def _copy_in(self, src: Path, dest: Path, card: ModelCard, trust: bool) -> Optional[str]:
        """Copy ``src`` to a temporary sibling of ``dest``, write the card, load it, then rename; with ``trust``,
        record the copy as the user's in the trust store first and return its digest (else None)."""
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
        try:
            copy_bundle(src, tmp)
            if read_metadata(tmp).get("modelselector") != card.to_dict():
                write_card(tmp, card)
            load_bundle(tmp, trust=trust)
            trusted = remember_trust(tmp, str(dest)) if trust else None  # the files as added, before the mark
            (tmp / PENDING_MARKER).touch()  # until the catalog lists it
            os.replace(tmp, dest)
            return trusted
        except BundleError as e:  # name the user's bundle, not the copy that is deleted below
            raise BundleError(str(e).replace(str(tmp), str(src))) from e
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
                with contextlib.suppress(OSError):
                    dest.parent.rmdir()  # only if empty (a new model's folder)

    def recorded_weights(self, name: str, version: Optional[str] = None) -> Optional[str]:
        """The SHA-256 of the weights the catalog recorded for ``name`` (``version``, default current) when it was
        added or promoted; None for a version added before weights were recorded."""
        info = self.version_info(name, version)
        recorded = (info.get("weights") or (info.get("source_card") or {}).get("weights") or {}).get("sha256")
        return str(recorded) if recorded else None

    def version_with_weights(self, name: str, sha256: str) -> Optional[str]:
        """The version of ``name`` whose weights have SHA-256 ``sha256``, as the catalog recorded them (else as its
        file is now); None when no version has them, or the zoo has no model ``name``."""
        for version in self.versions(name) if name in self else []:
            recorded = self.recorded_weights(name, version)
            if (recorded or file_digest(self.get(name, version) / WEIGHTS_FILE)["sha256"]) == sha256:
                return version
        return None

    def check_weights(self, name: str, version: Optional[str] = None) -> None:
        """Raise :class:`BundleError` when the weights file of ``name`` (``version``, default current) is not the
        one the zoo recorded when the version was added or promoted (replaced by hand, or by another model's of the
        same shape, which would load and answer wrongly without a word); versions without a record pass."""
        version = version or self.current(name)
        recorded = self.recorded_weights(name, version)
        path = self.get(name, version) / WEIGHTS_FILE
        actual = file_digest(path)["sha256"] if recorded and path.is_file() else recorded
        if actual != recorded:
            raise BundleError(
                f"{path}: these are not the weights the zoo recorded for {name} {version} (SHA-256 {actual[:12]}, "
                f"recorded {str(recorded)[:12]}); restore the file, or remove the version (`modelselector zoo remove "
                f"{name} --version {version} --zoo {shlex.quote(str(self.path))}`) and add the right bundle again."
            )

    def next_version(self, name: str) -> str:
        """The version a new model ``name`` gets: ``0.1.0`` for a new name, else the next patch version after
        the highest numeric version the zoo holds or its history names (a removed version's number is never
        given again)."""
        if name not in self:
            return "0.1.0"
        best = (0, 1, 0)
        for v in [*self.versions(name), *(str(ev.get("version", "")) for ev in self.history(name))]:
            try:
                best = max(best, tuple(int(p) for p in v.split(".")[:3]))
            except ValueError:
                continue
        return f"{best[0]}.{best[1]}.{best[2] + 1}"

    def current(self, name: str) -> str:
        """The current version of model ``name``."""
        return str(self._entry(name)["current"])

    def version_info(self, name: str, version: Optional[str] = None) -> dict[str, Any]:
        """The catalog entry of one version (``path``, ``added``, ``metrics``, ``promoted``, ...), a copy."""
        entry = self._entry(name)
        version = version or entry["current"]
        if version not in entry["versions"]:
            raise ZooError(
                f"model {name!r} has no version {version!r}; versions: {', '.join(self.versions(name))}."
            )
        return json.loads(json.dumps(entry["versions"][version]))

    def history(self, name: str) -> list[dict[str, Any]]:
        """Promotions, refusals, restores and builds of model ``name``, oldest first (a copy)."""
        return json.loads(json.dumps(self._entry(name).get("history", [])))

    def previous(self, name: str) -> Optional[str]:
        """The version that was current before the current one (from the history; else the version added
        just before it); ``None`` when there is none."""
        entry = self._entry(name)
        cur = entry["current"]
        for ev in reversed(entry.get("history", [])):
            moved = ev.get("action") in ("promote", "restore", "build") and ev.get("from")
            if moved and ev.get("version") == cur:
                if ev["from"] in entry["versions"]:
                    return str(ev["from"])
        order = self.versions(name)
        i = order.index(cur)
        return order[i - 1] if i > 0 else None

    def set_current(self, name: str, version: str, event: Optional[dict[str, Any]] = None,
                    info: Optional[dict[str, Any]] = None) -> None:  # fmt: skip
        """Make ``version`` current (one atomic catalog write); ``event`` goes to the history with the
        previous current version as ``from``; ``info`` is merged into the version's entry. Nothing is
        deleted or overwritten on disk."""
        with self.writing() as data:
            if name not in data["models"]:
                self._entry(name)  # raises with the known names
            entry = data["models"][name]
            if version not in entry["versions"]:
                raise ZooError(
                    f"model {name!r} has no version {version!r}; versions: {', '.join(entry['versions'])}."
                )
            if not (self.path / entry["versions"][version]["path"]).is_dir():
                raise ZooError(
                    f"the bundle of {name} {version} is missing from {self.path}; it cannot become current."
                )
            previous = entry["current"]
            entry["current"] = version
            entry["versions"][version].update(json.loads(json.dumps(info or {})))
            if event is not None:
                entry.setdefault("history", []).append(
                    {
                        "date": utc_timestamp(),
                        "version": version,
                        "from": previous,
                        **json.loads(json.dumps(event)),
                    }
                )
            self._write_catalog(data)

    def record(self, name: str, event: dict[str, Any]) -> None:
        """Append ``event`` (e.g. a refused promotion) to the history of ``name`` (an existing model)."""
        with self.writing() as data:
            if name not in data["models"]:
                self._entry(name)
            data["models"][name].setdefault("history", []).append(
                {"date": utc_timestamp(), **json.loads(json.dumps(event))}
            )
            self._write_catalog(data)

    def trust(self, name: str, version: Optional[str] = None) -> tuple[Path, str]:
        """Record that the user trusts the zoo's copy of model ``name`` (``version``, default the current one)
        as its configs and code are now, as ``add(..., trust=True)`` does for a bundle it adds: for a zoo copied
        from someone else, or a new trust store. The bundle is built first (its code runs, as MONAI runs it), so
        nothing that does not build is recorded. Returns the bundle folder and its trust digest.

        Raises:
            ZooError: no such model or version. BundleError: the bundle does not build even when trusted.
            OutputError: the trust store cannot be written.
        """
        path = self.get(name, version)
        load_bundle(path, trust=True)
        return path, remember_trust(path, str(path))

    def remove(self, name: str, version: Optional[str] = None, record: bool = True) -> None:
        """Remove model ``name`` (or one ``version`` of it): the catalog entry first, then the files.

        Removing the current version makes the most recently added remaining version current. Removing one
        version is recorded in the model's history (``"remove"``, with the version made current, if any) unless
        ``record`` is False (a version replaced in place by a rebuild of itself). The
        files are renamed out of the way before they are deleted; if the process is killed meanwhile, the next
        change to the zoo deletes what is left.
        """
        with self.writing() as data:
            self._catalog = data
            entry = self._entry(name)
            if version is None or set(entry["versions"]) == {version}:
                del data["models"][name]
                self._write_pending(data, [self.path / v["path"] for v in entry["versions"].values()])
                _delete(self.path / MODELS / name)
                return
            if version not in entry["versions"]:
                raise ZooError(
                    f"model {name!r} has no version {version!r}; versions: {', '.join(self.versions(name))}."
                )
            rel = entry["versions"].pop(version)["path"]
            event: dict[str, Any] = {"date": utc_timestamp(), "action": "remove", "version": version}
            if entry["current"] == version:
                entry["current"] = max(
                    entry["versions"], key=lambda v: (entry["versions"][v].get("added", ""), v)
                )
                event["current"] = entry["current"]
            if record:
                entry.setdefault("history", []).append(event)
            self._write_pending(data, [self.path / rel])
            _delete(self.path / rel)

    def _write_pending(self, data: dict[str, Any], folders: list[Path]) -> None:
        """Write the catalog that no longer lists ``folders``, marked as pending first, so that if the process is
        killed before they are deleted, the next writer knows them for the zoo's own leftovers."""
        marks = [f / PENDING_MARKER for f in folders if f.is_dir()]
        for mark in marks:
            mark.touch()
        try:
            self._write_catalog(data)
        except BaseException:
            for mark in marks:  # still listed: not pending any more
                mark.unlink(missing_ok=True)
            raise

    def __repr__(self) -> str:
        return f"Zoo({str(self.path)!r}, models={self.names()})"


def _delete(folder: Path) -> None:
    """Rename ``folder`` to a hidden ``.tmp`` sibling (one atomic step), then delete that."""
    if not folder.exists():
        return
    doomed = folder.with_name(f".{folder.name}.removed-{os.getpid()}.tmp")
    try:
        os.replace(folder, doomed)
    except OSError:
        doomed = folder
    shutil.rmtree(doomed, ignore_errors=True)


def open_zoo(path: Union[Zoo, PathLike, None] = None) -> Zoo:
    """Open the zoo at ``path`` (default: :func:`default_zoo_path`); a :class:`Zoo` is returned as it is."""
    if isinstance(path, Zoo):
        return path
    return Zoo(path if path is not None else default_zoo_path())


__all__ = ["Zoo", "default_zoo_path", "open_zoo"]
