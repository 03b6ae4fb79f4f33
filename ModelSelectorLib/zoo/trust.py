"""What a bundle config may build without ``--trust``: allow-listed classes and plain values, nothing else.

ModelSelector builds one thing from a bundle's ``configs/inference.json``: its network (``network_def``,
else ``network``). Its own task runtimes do the pre- and post-processing, so the config's other sections
(transforms, inferers, handlers, evaluators) are never evaluated. Without ``trust=True``, :func:`buildable_config`
returns only the items the network needs (``network_def`` and the items it refers to with ``@``, followed
transitively), after checking every one of them:

- every ``_target_`` names an allow-listed class (:data:`ALLOWED_NETWORKS`, :data:`ALLOWED_LAYERS`); bare
  names are resolved as MONAI resolves them and replaced by the full name, so MONAI builds exactly the
  class that was checked;
- no value is a ``$`` expression: no Python runs while the network is built;
- ``%`` macros may copy items of the same file only (anywhere in the config, since MONAI expands them all);
- ``_mode_`` is ``"default"`` and there is no ``_debug_`` (which would start a debugger);
- no argument asks for weights from elsewhere (``pretrained=True``, a URL or checkpoint, including by its
  default value): a bundle's weights come from its ``models/model.pt``.

Everything else is refused with :class:`~ModelSelectorLib.errors.BundleError` naming the offending key.
The check is static: it evaluates nothing and imports only the modules of allow-listed classes.

Trust is given once, by the user, when a bundle enters a zoo: ``modelselector zoo add BUNDLE --trust``
(``Zoo.add(..., trust=True)``), or ``modelselector promote --trust`` for a candidate that it promotes, records
:func:`trust_digest` of the bundle's configs and Python files in the user's own trust store
(:func:`trust_store_path`: ``$MODELSELECTOR_TRUST_STORE``, else ``~/.config/modelselector/trusted.json``), and every
later load of a bundle with those very files (``apply``, ``select``, ``prototypes``, evaluation) builds it trusted
(:func:`recorded_trust`). The store lives outside every zoo, so a zoo copied from someone else never brings trust
with it; a changed config or code file is untrusted again. No other command takes ``--trust``.
"""

from __future__ import annotations

import copy
import hashlib
import importlib
import inspect
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Union

from ..errors import BundleError

#: network architectures of ``monai.networks.nets`` a bundle may build without ``--trust``
ALLOWED_NETWORKS = tuple(
    f"monai.networks.nets.{name}"
    for name in (
        "AHNet AttentionUnet AutoEncoder AutoencoderKL BasicUNet BasicUNetPlusPlus Classifier Critic DAF3D "
        "DenseNet DenseNet121 DenseNet169 DenseNet201 DenseNet264 DiffusionModelUNet DiNTS Discriminator "
        "DynUNet EfficientNetBN FlexibleUNet FullyConnectedNet Generator GlobalNet HighResNet HoVerNet "
        "LocalNet MedNeXt MultiScalePatchDiscriminator PatchDiscriminator RegUNet Regressor ResNet SegResNet "
        "SegResNetDS SegResNetDS2 SegResNetVAE SENet SENet154 SEResNet50 SEResNet101 SEResNet152 "
        "SEResNext50 SEResNext101 SwinUNETR TopologyInstance UNETR UNet VarAutoEncoder VarFullyConnectedNet "
        "ViT ViTAutoEnc VNet VQVAE"
    ).split()
)
#: ``torch.nn`` layers a network config may compose, and ``ModuleDict``, the container that holds the stages
#: of a multi-stage model (a coarse-to-fine landmark model: each stage is itself checked)
ALLOWED_LAYERS = tuple(
    f"torch.nn.{name}"
    for name in (
        "AdaptiveAvgPool2d AdaptiveAvgPool3d AvgPool2d AvgPool3d BatchNorm1d BatchNorm2d BatchNorm3d Conv1d "
        "Conv2d Conv3d ConvTranspose2d ConvTranspose3d Dropout Dropout2d Dropout3d ELU Flatten GELU GroupNorm "
        "Identity InstanceNorm2d InstanceNorm3d LayerNorm LeakyReLU Linear MaxPool2d MaxPool3d ModuleDict "
        "PReLU ReLU Sigmoid SiLU Softmax Tanh Upsample"
    ).split()
)
#: constructor arguments that fetch weights from the network or another file when set (or by default)
FETCH_ARGUMENTS = ("pretrained", "pretrained_url", "weights", "checkpoint", "path_or_repo_id")

_HINT = (
    "an untrusted network is built only from allow-listed MONAI/torch classes and plain values; if you trust the "
    "bundle's author, add it with `modelselector zoo add BUNDLE --trust` (a model already in a zoo: `modelselector zoo "
    "trust NAME --zoo ZOO`; promote it with `modelselector promote --trust`; trust=True in Python), which your trust "
    "store records for exactly its present files"
)
_COMPONENT_KEYS = ("_target_", "_mode_", "_disabled_", "_requires_", "_desc_")


def _walk(config: Any, where: str) -> Iterator[tuple[str, Any]]:
    """``(id, value)`` of ``config`` and of every dict entry and list element in it, depth first."""
    yield where, config
    items = (
        config.items() if isinstance(config, dict) else enumerate(config) if isinstance(config, list) else ()
    )
    for k, v in items:
        yield from _walk(v, f"{where}::{k}" if where else str(k))


def _refuse(what: str, where: str) -> BundleError:
    return BundleError(f"untrusted config at '{where}': {what}; {_HINT}.")


def _short(value: str, n: int = 80) -> str:
    return repr(value if len(value) <= n else value[: n - 3] + "...")


def _expand_macros(config: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``config`` with ``%`` macros and relative ``@`` ids expanded, as MONAI's parser does."""
    from monai.bundle import ConfigParser

    for where, value in _walk(config, ""):
        if isinstance(value, str) and value.startswith("%"):
            path, _ = ConfigParser.split_path_id(value[1:])
            if path:
                raise _refuse(f"the macro {_short(value)} reads another file ({path})", where)
    parser = ConfigParser(copy.deepcopy(config), globals=False)
    try:
        parser.resolve_macro_and_relative_ids()
    except (KeyError, ValueError, IndexError) as e:
        raise BundleError(f"a '%' macro or relative '@' reference cannot be resolved ({e}).") from e
    return parser.get()


def _allowed() -> dict[int, str]:
    """``id(class) -> full name`` of every allow-listed class."""
    out = {}
    for name in ALLOWED_NETWORKS + ALLOWED_LAYERS:
        module, _, attr = name.rpartition(".")
        obj = getattr(importlib.import_module(module), attr)
        out[id(obj)] = f"{obj.__module__}.{obj.__qualname__}"
    return out


def _resolve_target(target: Any, where: str, allowed: dict[int, str]) -> Any:
    """The allow-listed class ``target`` names (a bare MONAI name or a dotted path), or a refusal."""
    if not isinstance(target, str) or not target or target[0] in "$@%":
        raise _refuse(f"{target!r} is not a class name", where)
    module_names = {name.rpartition(".")[0] for name in allowed.values()} | {
        "monai.networks.nets",
        "torch.nn",
    }
    module, _, attr = target.rpartition(".")
    if not module:  # a bare name: found among the loaded monai modules, as MONAI's ComponentLocator does
        from monai.bundle import ComponentLocator

        found = ComponentLocator().get_component_module_name(target)
        module = (found[0] if isinstance(found, list) else found) or ""
    obj = getattr(importlib.import_module(module), attr or target, None) if module in module_names else None
    if obj is None or id(obj) not in allowed:
        raise _refuse(f"{target!r} is not an allow-listed class", where)
    return obj


def _lookup(config: dict[str, Any], ref: str) -> Any:
    """The raw value at reference id ``ref`` (``a::b::0``) of ``config``."""
    value: Any = config
    for part in ref.replace("#", "::").split("::"):
        value = value[int(part)] if isinstance(value, list) else value[part]
    return value


def _check_component(
    item: dict[str, Any], where: str, config: dict[str, Any], allowed: dict[int, str]
) -> None:
    """Check one ``{"_target_": ...}`` item and replace its target by the full name of the checked class."""
    cls = _resolve_target(item["_target_"], f"{where}::_target_" if where else "_target_", allowed)
    if item.get("_mode_", "default") != "default":
        raise _refuse(f"{item['_mode_']!r} (only 'default' builds an object)", f"{where}::_mode_")
    if "_debug_" in item:
        raise _refuse("'_debug_' (it starts a debugger)", f"{where}::_debug_")
    try:
        params = inspect.signature(cls).parameters
    except (TypeError, ValueError):
        params = {}
    for arg in FETCH_ARGUMENTS:
        if arg not in params and arg not in item:
            continue
        value = item.get(arg, params[arg].default if arg in params else None)
        if isinstance(value, str) and value.startswith("@"):
            try:
                value = _lookup(config, value[1:])
            except (KeyError, IndexError, ValueError, TypeError):
                raise BundleError(f"'{value[1:]}' is referred to (with '{value}') but not defined.") from None
        if value not in (None, False, "", 0, inspect.Parameter.empty):
            raise _refuse(
                f"{value!r} asks {item['_target_']} for weights from elsewhere (a bundle's weights are its "
                f"models/model.pt; set '{arg}' to false)",
                f"{where}::{arg}",
            )
    item["_target_"] = allowed[id(cls)]


def buildable_config(config: dict[str, Any], key: str) -> dict[str, Any]:
    """The items of a MONAI config that building item ``key`` needs, checked for untrusted code.

    Args:
        config: a parsed ``inference.json`` (not modified).
        key: the top-level item to build, e.g. ``"network_def"``.

    Returns:
        a new config holding ``key`` and every top-level item it refers to (transitively), with macros and
        relative ids expanded and each ``_target_`` replaced by the full name of its allow-listed class; MONAI's
        ``ConfigParser`` can build ``key`` from it without running any code from the bundle.

    Raises:
        BundleError: an item that would run code, read another file or fetch weights; the message names its key.
    """
    from monai.bundle.reference_resolver import ReferenceResolver

    expanded = _expand_macros(config)
    allowed = _allowed()
    out: dict[str, Any] = {}
    todo = [key]
    while todo:
        top = todo.pop()
        if top in out:
            continue
        if top not in expanded:
            raise BundleError(f"'{top}' is referred to (with '@{top}') but not defined.")
        out[top] = expanded[top]
        for where, value in _walk(out[top], top):
            if isinstance(value, str) and value.startswith("$"):
                raise _refuse(f"the Python expression {_short(value)}", where)
            if isinstance(value, str) and value.startswith("%"):
                raise _refuse(f"the macro {_short(value)}", where)
            if isinstance(value, str):
                todo += [
                    ReferenceResolver.split_id(ref)[0] for ref in ReferenceResolver.match_refs_pattern(value)
                ]
            elif isinstance(value, dict) and "_target_" in value:
                _check_component(value, where, expanded, allowed)
    return out


#: files a bundle may not hold when it is built trusted: code that cannot be read before it runs
COMPILED_SUFFIXES = (".pyc", ".pyo", ".so", ".pyd", ".dylib", ".dll")
#: what a trust digest leaves out: data the zoo itself writes or that is never run (weights load weights-only)
_UNHASHED = ("configs/metadata.json", "models/model.pt")
_UNHASHED_FOLDERS = ("docs", "prototypes")


def check_no_compiled_code(bundle: Union[str, Path]) -> None:
    """Refuse to build ``bundle`` trusted while it holds compiled code (``.pyc`` in ``__pycache__``, ``.so``):
    Python would import it in place of, or beside, the source the user trusted.

    Raises:
        BundleError: naming the first such file and what to do.
    """
    root = Path(bundle)
    found = next((p for p in sorted(root.rglob("*")) if p.name == "__pycache__" or p.suffix in COMPILED_SUFFIXES),
                 None)  # fmt: skip
    if found is not None:
        raise BundleError(
            f"{found}: a bundle built with trust may hold only source code, and this is compiled code that cannot "
            "be checked; delete it (and every __pycache__ folder) and add the bundle again."
        )


def trust_digest(bundle: Union[str, Path]) -> str:
    """SHA-256 of everything a trusted bundle may run or read while it is built, with the paths: every file but
    ``configs/metadata.json`` (whose model card the zoo rewrites), ``models/model.pt`` (loaded weights-only) and
    the ``docs`` and ``prototypes`` folders the zoo writes."""
    root = Path(bundle)
    files = []
    for p in root.rglob("*"):
        rel = p.relative_to(root).as_posix()
        if p.is_file() and rel not in _UNHASHED and rel.split("/")[0] not in _UNHASHED_FOLDERS:
            files.append(p)
    h = hashlib.sha256()
    for p in sorted(files):
        h.update(p.relative_to(root).as_posix().encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()


#: environment variable: the user's trust store (default ``$XDG_CONFIG_HOME/modelselector/trusted.json``)
TRUST_STORE_ENV = "MODELSELECTOR_TRUST_STORE"


def trust_store_path() -> Path:
    """The file holding the digests of the bundles this user trusted (``$MODELSELECTOR_TRUST_STORE``, else
    ``$XDG_CONFIG_HOME/modelselector/trusted.json``, ``~/.config`` when that is unset)."""
    if os.environ.get(TRUST_STORE_ENV):
        return Path(os.environ[TRUST_STORE_ENV])
    config = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(config) / "modelselector" / "trusted.json"


def _trusted_digests() -> dict[str, Any]:
    try:
        data = json.loads(trust_store_path().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data.get("trusted", {}) if isinstance(data, dict) and isinstance(data.get("trusted"), dict) else {}


def remember_trust(bundle: Union[str, Path], label: str) -> str:
    """Record in the user's trust store that the user trusts ``bundle`` as its files are now (``label`` says
    which, e.g. the folder ``ZOO/models/NAME/VERSION`` it is being added as); returns its :func:`trust_digest`.

    Raises:
        OutputError: the store cannot be written.
    """
    from .. import atomic

    digest = trust_digest(bundle)
    store = trust_store_path()
    with atomic.writer_lock(store.parent):
        trusted = _trusted_digests()
        trusted[digest] = {"bundle": label}
        atomic.write_json(store, {"format": 1, "trusted": trusted})
    return digest


def recorded_trust(bundle: Union[str, Path]) -> bool:
    """Whether the user trusted ``bundle`` with exactly its present configs and code (:func:`remember_trust`, as
    ``zoo add --trust`` does). False when the store is missing or unreadable."""
    trusted = _trusted_digests()
    if not trusted:
        return False
    try:
        return trust_digest(bundle) in trusted
    except OSError:
        return False


__all__ = [
    "ALLOWED_LAYERS",
    "ALLOWED_NETWORKS",
    "FETCH_ARGUMENTS",
    "buildable_config",
    "check_no_compiled_code",
    "TRUST_STORE_ENV",
    "recorded_trust",
    "remember_trust",
    "trust_digest",
    "trust_store_path",
]
