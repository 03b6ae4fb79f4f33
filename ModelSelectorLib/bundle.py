"""MONAI bundles with a model card: write, validate, load safely, and import standard MONAI zoo bundles.

A model is a MONAI bundle folder::

    NAME/
      configs/metadata.json    MONAI bundle metadata + the model card ("modelselector" block)
      configs/inference.json   MONAI config with "network_def" ("_target_" + arguments)
      models/model.pt          state_dict (torch.save), loaded with torch.load(weights_only=True)
      docs/README.md           the model card as Markdown

Configs are parsed with :class:`monai.bundle.ConfigParser`. Before anything is instantiated, every
``_target_`` and every ``$``-expression of ``inference.json`` is checked: code outside ``monai.`` and
``torch.`` is refused with :class:`~ModelSelectorLib.errors.BundleError` unless the caller passes
``trust=True``. The check is a static guard against surprises in downloaded bundles, not a sandbox.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional, Union

from . import atomic
from .errors import BundleError

PathLike = Union[str, Path]

TASK_TYPES = ("segmentation", "landmarks", "classification")
MODALITIES = ("CT", "MR", "DX", "US", "PT", "NM", "XA", "MG", "OT")
BODY_REGIONS = (
    "HEAD", "NECK", "CHEST", "HEART", "ABDOMEN", "PELVIS", "SPINE", "BREAST", "SHOULDER", "ARM", "HAND",
    "HIP", "LEG", "KNEE", "FOOT", "EYE", "WHOLEBODY",
)  # fmt: skip
INTENSITY_MODES = ("ct", "mr", "percentile")

METADATA_FILE = Path("configs") / "metadata.json"
INFERENCE_FILE = Path("configs") / "inference.json"
WEIGHTS_FILE = Path("models") / "model.pt"
README_FILE = Path("docs") / "README.md"
REQUIRED_FILES = (METADATA_FILE, INFERENCE_FILE, WEIGHTS_FILE)

#: names of models and versions become folder names in the zoo
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")

_DEFAULT_COLORS = (
    (0.86, 0.31, 0.24), (0.27, 0.56, 0.84), (0.35, 0.71, 0.35), (0.93, 0.75, 0.26), (0.62, 0.42, 0.78),
    (0.24, 0.74, 0.74), (0.94, 0.52, 0.24), (0.78, 0.38, 0.58), (0.55, 0.55, 0.30), (0.45, 0.45, 0.85),
)  # fmt: skip


def default_color(value: int) -> list[float]:
    """A distinct default RGB colour (0-1) for label ``value``."""
    return list(_DEFAULT_COLORS[(int(value) - 1) % len(_DEFAULT_COLORS)])


def safe_name(text: str) -> str:
    """``text`` turned into a name usable as a folder name (letters, digits, ``._+-``)."""
    name = re.sub(r"[^A-Za-z0-9._+-]+", "_", str(text).strip()).strip("._-")
    return name[:128] or "model"


# --- model card -----------------------------------------------------------------------------------------
@dataclasses.dataclass
class ModelCard:
    """The facts about one model that selection, inference and users need (``"modelselector"`` block).

    Attributes:
        name: model name, also its folder name in the zoo.
        version: version string (e.g. ``"0.1.0"``); a zoo keeps several versions of one name.
        task_type: ``"segmentation"``, ``"landmarks"`` or ``"classification"``.
        modality: DICOM modality code of the intended input (``CT``, ``MR``, ...).
        body_region: DICOM-like body region (``ABDOMEN``), ``";"``-joined if several.
        labels: ``[{"value", "name", "color", "terminology"?}]``; colours RGB in 0-1.
        input_channels: number of input channels of the network.
        spatial_dims: 2 or 3.
        target_spacing: voxel spacing (mm, ``x, y, z``) the network was trained at.
        intensity: intensity normalisation, ``{"mode": "ct"|"mr"|"percentile", "a_min", "a_max", ...}``.
        roi_size: patch size (``x, y, z``) of sliding-window inference.
        training_data: description of the training data.
        n_training_cases: number of training cases.
        validation_metrics: e.g. ``{"dice": 0.91}``.
        seed: random seed of training.
        code_version: version of the code that trained the model.
        license: licence of the weights.
        synthetic: True when trained on synthetic data (demo models).
        training_time_s: wall time of training in seconds.
        example_inputs: optional bundle-relative paths of example inputs.
    """

    name: str
    version: str
    task_type: str
    modality: str
    body_region: str
    labels: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    input_channels: int = 1
    spatial_dims: int = 3
    target_spacing: Optional[list[float]] = None
    intensity: Optional[dict[str, Any]] = None
    roi_size: Optional[list[int]] = None
    training_data: str = ""
    n_training_cases: int = 0
    validation_metrics: dict[str, Any] = dataclasses.field(default_factory=dict)
    seed: Optional[int] = None
    code_version: str = ""
    license: str = ""
    synthetic: bool = False
    training_time_s: Optional[float] = None
    example_inputs: list[str] = dataclasses.field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The card as a JSON-ready dict (the ``"modelselector"`` block of ``metadata.json``)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelCard:
        """Build a card from a ``"modelselector"`` block; unknown keys are ignored, missing required ones
        raise :class:`BundleError`."""
        if not isinstance(data, dict):
            raise BundleError(f"the model card must be a JSON object, not {type(data).__name__}.")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        required = [n for n, f in fields.items() if f.default is dataclasses.MISSING and
                    f.default_factory is dataclasses.MISSING]  # fmt: skip
        missing = [n for n in required if n not in data]
        if missing:
            raise BundleError(f"the model card lacks required field(s): {', '.join(missing)}.")
        return cls(**{k: v for k, v in data.items() if k in fields})

    @property
    def label_names(self) -> list[str]:
        return [str(lb.get("name", "")) for lb in self.labels]

    def validate(self) -> ModelCard:
        """Check every field; raise :class:`BundleError` naming the first bad field. Returns ``self``."""
        for key in ("name", "version"):
            value = getattr(self, key)
            if not isinstance(value, str) or not _SAFE_NAME.match(value):
                raise BundleError(
                    f"model card field '{key}' is {value!r}; use letters, digits and . _ + - only (no spaces)."
                )
        if self.task_type not in TASK_TYPES:
            raise BundleError(
                f"model card field 'task_type' is {self.task_type!r}; expected one of {', '.join(TASK_TYPES)}."
            )
        if self.modality not in MODALITIES:
            raise BundleError(
                f"model card field 'modality' is {self.modality!r}; expected a DICOM modality code: {', '.join(MODALITIES)}."
            )
        self._validate_body_region()
        self._validate_labels()
        _check_int(self.input_channels, "input_channels", 1)
        if self.spatial_dims not in (2, 3) or isinstance(self.spatial_dims, bool):
            raise BundleError(f"model card field 'spatial_dims' is {self.spatial_dims!r}; expected 2 or 3.")
        self._validate_geometry()
        if self.intensity is not None:
            if not isinstance(self.intensity, dict) or self.intensity.get("mode") not in INTENSITY_MODES:
                raise BundleError(
                    f"model card field 'intensity' is {self.intensity!r}; expected {{'mode': one of "
                    f"{', '.join(INTENSITY_MODES)}, ...}}."
                )
        _check_int(self.n_training_cases, "n_training_cases", 0)
        if self.seed is not None:
            _check_int(self.seed, "seed", None)
        if not isinstance(self.validation_metrics, dict):
            raise BundleError(
                "model card field 'validation_metrics' must be an object such as {\"dice\": 0.9}."
            )
        if not isinstance(self.synthetic, bool):
            raise BundleError(f"model card field 'synthetic' is {self.synthetic!r}; expected true or false.")
        if self.training_time_s is not None and not isinstance(self.training_time_s, (int, float)):
            raise BundleError(
                f"model card field 'training_time_s' is {self.training_time_s!r}; expected seconds."
            )
        for key in ("training_data", "code_version", "license"):
            if not isinstance(getattr(self, key), str):
                raise BundleError(f"model card field '{key}' must be text.")
        if not isinstance(self.example_inputs, list) or not all(
            isinstance(p, str) for p in self.example_inputs
        ):
            raise BundleError("model card field 'example_inputs' must be a list of relative paths.")
        return self

    def _validate_body_region(self) -> None:
        parts = self.body_region.split(";") if isinstance(self.body_region, str) else [None]
        bad = [p for p in parts if p not in BODY_REGIONS]
        if bad:
            raise BundleError(
                f"model card field 'body_region' is {self.body_region!r}; each ';'-separated part must be one of "
                f"{', '.join(BODY_REGIONS)}."
            )

    def _validate_labels(self) -> None:
        if not isinstance(self.labels, list):
            raise BundleError("model card field 'labels' must be a list of {value, name, color}.")
        if self.task_type == "segmentation" and not self.labels:
            raise BundleError(
                "model card field 'labels' is empty; a segmentation model needs at least one label."
            )
        seen = set()
        for i, lb in enumerate(self.labels):
            where = f"model card field 'labels[{i}]'"
            if not isinstance(lb, dict):
                raise BundleError(f"{where} must be an object with value, name and color.")
            value = lb.get("value")
            lowest = 1 if self.task_type == "segmentation" else 0
            if not isinstance(value, int) or isinstance(value, bool) or value < lowest:
                raise BundleError(f"{where}: 'value' is {value!r}; expected an integer >= {lowest}.")
            if value in seen:
                raise BundleError(f"{where}: label value {value} appears twice.")
            seen.add(value)
            if not isinstance(lb.get("name"), str) or not lb["name"].strip():
                raise BundleError(f"{where}: 'name' must be non-empty text.")
            color = lb.get("color")
            if (
                not isinstance(color, (list, tuple))
                or len(color) != 3
                or not all(isinstance(c, (int, float)) and 0 <= c <= 1 for c in color)
            ):
                raise BundleError(f"{where}: 'color' is {color!r}; expected [r, g, b] with values in 0-1.")
            term = lb.get("terminology")
            if term is not None and not isinstance(term, dict):
                raise BundleError(f"{where}: 'terminology' must be an object with 'category' and 'type'.")

    def _validate_geometry(self) -> None:
        for key, kind in (("target_spacing", float), ("roi_size", int)):
            value = getattr(self, key)
            if value is None:
                continue
            ok = isinstance(value, (list, tuple)) and len(value) == self.spatial_dims
            ok = ok and all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in value)
            if ok and kind is int:
                ok = all(float(v).is_integer() for v in value)
            if not ok:
                raise BundleError(
                    f"model card field '{key}' is {value!r}; expected {self.spatial_dims} positive numbers."
                )


def _check_int(value: Any, key: str, minimum: Optional[int]) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or (minimum is not None and value < minimum):
        bound = f" >= {minimum}" if minimum is not None else ""
        raise BundleError(f"model card field '{key}' is {value!r}; expected an integer{bound}.")


# --- trust check of configs ----------------------------------------------------------------------------
TRUSTED_PREFIXES = ("monai.", "torch.")
#: dotted names inside monai/torch that load or run code from files or the network
DENIED_PREFIXES = (
    "torch.hub", "torch.load", "torch.jit.load", "torch.package", "torch.ops.load_library",
    "torch.utils.cpp_extension", "torch.classes.load_library", "monai.bundle.scripts", "monai.bundle.load",
    "monai.bundle.run", "monai.bundle.download", "monai.apps.utils", "monai.utils.module.optional_import",
)  # fmt: skip
#: modules an expression may import, with the attributes it may use (None: any public attribute);
#: ``"$import glob"`` and ``"$import os"`` (for ``os.path``) are common in MONAI model-zoo configs
_MODULE_ATTRS: dict[str, Optional[tuple[str, ...]]] = {
    "monai": None, "torch": None, "numpy": None, "np": None, "math": None,
    "glob": ("glob", "iglob"), "os": ("path", "sep"),
}  # fmt: skip
#: attribute names that reach the interpreter, the shell or the file system from any object
_DENIED_ATTRS = frozenset(
    "sys os subprocess builtins system popen spawn hub load_library import_module optional_import locate "
    "exec eval remove unlink rmtree rmdir rename kill fork".split()
)
#: names an expression may use besides references, local variables and the modules above
_SAFE_NAMES = frozenset(
    "True False None len list dict tuple set sorted int float str bool range min max sum abs round zip "
    "enumerate any all map filter reversed isinstance print".split()
)
_REF_NAME = "__ref__"
_TRUST_HINT = "inspect the bundle and pass --trust (trust=True) only if you trust its author"


def _walk(config: Any, where: str = "") -> Iterator[tuple[str, Any, Any]]:
    """Yield ``(id, key, value)`` for every dict entry and list element of ``config``, depth first."""
    if isinstance(config, dict):
        for k, v in config.items():
            sub = f"{where}::{k}" if where else str(k)
            yield sub, k, v
            yield from _walk(v, sub)
    elif isinstance(config, list):
        for i, v in enumerate(config):
            sub = f"{where}::{i}" if where else str(i)
            yield sub, i, v
            yield from _walk(v, sub)


def _dotted_allowed(name: str) -> bool:
    if any(name == d or name.startswith(d + ".") for d in DENIED_PREFIXES):
        return False
    if any(part in _DENIED_ATTRS or part.startswith("_") for part in name.split(".")):
        return False
    return name.startswith(TRUSTED_PREFIXES) or name in ("monai", "torch")


def check_target(target: Any, where: str) -> None:
    """Refuse a ``_target_`` outside ``monai.``/``torch.`` (bare names are looked up inside MONAI)."""
    if not isinstance(target, str):
        raise BundleError(f"'_target_' at '{where}' is {target!r}, not a class name; {_TRUST_HINT}.")
    if target.startswith("$"):
        check_expression(target, where)
        return
    if "." not in target and re.fullmatch(r"[A-Za-z]\w*", target):
        return  # MONAI's ComponentLocator resolves bare names among monai.* modules only
    if not _dotted_allowed(target):
        raise BundleError(
            f"untrusted code: '_target_' {target!r} at '{where}' is outside monai./torch.; {_TRUST_HINT}."
        )


def _attribute_chain(node: ast.AST) -> Optional[str]:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return None


def _check_import(node: ast.AST, refuse: Any) -> list[str]:
    """Check an import statement; return the names it binds."""
    if isinstance(node, ast.ImportFrom):
        if node.level:
            refuse("imports a module relative to the bundle")
        mods = [f"{node.module}.{a.name}" for a in node.names]
    else:
        mods = [a.name for a in node.names]  # type: ignore[attr-defined]
    for mod in mods:
        root, _, rest = mod.partition(".")
        allowed = _MODULE_ATTRS.get(root, ())
        if root not in _MODULE_ATTRS or (rest and allowed is not None and rest.split(".")[0] not in allowed):
            refuse(f"imports module {mod!r}")
        if root in ("monai", "torch") and not _dotted_allowed(mod):
            refuse(f"imports {mod!r}")
    return [(a.asname or a.name).split(".")[0] for a in node.names]  # type: ignore[attr-defined]


def check_expression(expr: str, where: str, imported: Optional[set] = None) -> None:
    """Refuse a ``$``-expression that imports or uses modules outside monai/torch (and a few harmless ones),
    calls builtins such as ``eval``/``open``/``__import__``, or touches private/dunder attributes.

    This is a static, best-effort guard against surprises in downloaded bundles, not a sandbox.
    """
    code = re.sub(r"@(?:\w*)(?:(?:::|#)\w*)*", _REF_NAME, expr[1:])
    try:
        tree = ast.parse(code.strip(), mode="exec")
    except SyntaxError as e:
        raise BundleError(f"expression at '{where}' is not valid Python ({e.msg}): {expr!r}.") from e

    def refuse(why: str) -> None:
        raise BundleError(f"untrusted code: expression {expr!r} at '{where}' {why}; {_TRUST_HINT}.")

    parents: dict[ast.AST, ast.AST] = {}
    for node in ast.walk(tree):
        for child in ast.iter_child_nodes(node):
            parents[child] = node
    local = {a.arg for a in ast.walk(tree) if isinstance(a, ast.arg)}
    local |= {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
    # MONAI's ConfigParser provides these as globals; "$import x" anywhere in a config adds x for all items
    modules = {"monai", "torch", "np", "numpy"} | set(imported or ())
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            modules.update(_check_import(node, refuse))
        elif isinstance(node, ast.Attribute) and (node.attr.startswith("_") or node.attr in _DENIED_ATTRS):
            refuse(f"uses attribute {node.attr!r}")
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load)):
            continue
        if node.id in modules and node.id not in local:
            parent = parents.get(node)
            allowed = _MODULE_ATTRS.get(node.id)
            if not isinstance(parent, ast.Attribute):
                refuse(f"uses module {node.id!r} other than through its attributes")
            elif allowed is not None and parent.attr not in allowed:
                refuse(f"uses {node.id}.{parent.attr}")
            top = parent
            while isinstance(parents.get(top), ast.Attribute):
                top = parents[top]
            chain = _attribute_chain(top) or ""
            if node.id in ("monai", "torch") and not _dotted_allowed(chain):
                refuse(f"uses {chain!r}")
        elif node.id not in _SAFE_NAMES and node.id not in local and node.id != _REF_NAME:
            refuse(f"uses name {node.id!r}")


def check_config_trusted(config: dict[str, Any]) -> None:
    """Walk a whole MONAI config and raise :class:`BundleError` at the first item that would run code from
    outside ``monai.``/``torch.``: ``_target_`` values, ``$``-expressions, ``_mode_: debug`` and ``%``-macros
    that read other files."""
    imported = set()
    for where, _, value in _walk(config):
        if isinstance(value, str) and value.startswith("$") and re.match(r"\$\s*(import|from)\s", value):
            check_expression(value, where)
            imported.update(_check_import(ast.parse(value[1:].strip()).body[0], lambda why: None))
    for where, key, value in _walk(config):
        if key == "_target_":
            check_target(value, where)
        elif key == "_mode_" and value == "debug":
            raise BundleError(f"'_mode_': 'debug' at '{where}' starts a debugger; {_TRUST_HINT}.")
        elif isinstance(value, str) and value.startswith("$"):
            check_expression(value, where, imported)
        elif isinstance(value, str) and value.startswith("%") and value[1:].split("#")[0].split("::")[0]:
            raise BundleError(f"macro {value!r} at '{where}' reads another config file; {_TRUST_HINT}.")


# --- reading --------------------------------------------------------------------------------------------
def _read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError as e:
        raise BundleError(
            f"{path}: missing {what}; a bundle needs {', '.join(map(str, REQUIRED_FILES))}."
        ) from e
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BundleError(f"{path}: {what} is not valid JSON ({e}).") from e
    if not isinstance(data, dict):
        raise BundleError(f"{path}: {what} must hold a JSON object.")
    return data


def _check_files(path: Path) -> None:
    if not path.is_dir():
        raise BundleError(f"{path}: not a bundle folder (no such folder).")
    missing = [str(f) for f in REQUIRED_FILES if not (path / f).is_file()]
    if missing:
        raise BundleError(f"{path}: not a complete MONAI bundle; missing {', '.join(missing)}.")


def read_metadata(path: PathLike) -> dict[str, Any]:
    """The parsed ``configs/metadata.json`` of bundle ``path``."""
    return _read_json(Path(path) / METADATA_FILE, "configs/metadata.json")


def validate_bundle(path: PathLike) -> ModelCard:
    """Check that ``path`` is a complete bundle with a valid model card and return the card.

    Raises:
        BundleError: a file is missing or unreadable, ``inference.json`` has no ``network_def``, or the
            ``"modelselector"`` block is missing or invalid. The message names the reason.
    """
    path = Path(path)
    _check_files(path)
    meta = read_metadata(path)
    for key in ("version", "network_data_format"):
        if key not in meta:
            raise BundleError(f"{path / METADATA_FILE}: lacks MONAI metadata key '{key}'.")
    if "modelselector" not in meta:
        raise BundleError(
            f"{path / METADATA_FILE}: has no 'modelselector' model card; for a standard MONAI bundle use "
            "`modelselector zoo add BUNDLE --modality CODE --body-region REGION`."
        )
    config = _read_json(path / INFERENCE_FILE, "configs/inference.json")
    if not isinstance(config.get("network_def"), dict) or "_target_" not in config["network_def"]:
        raise BundleError(f"{path / INFERENCE_FILE}: lacks a 'network_def' with a '_target_'.")
    try:
        card = ModelCard.from_dict(meta["modelselector"])
    except TypeError as e:
        raise BundleError(f"{path / METADATA_FILE}: invalid model card ({e}).") from e
    try:
        return card.validate()
    except BundleError as e:
        raise BundleError(f"{path}: {e}") from e


# --- loading --------------------------------------------------------------------------------------------
@dataclasses.dataclass
class LoadedBundle:
    """A bundle ready for inference: ``network`` (eval mode, on the requested device) and its card."""

    network: Any
    card: ModelCard
    path: Path
    config: dict[str, Any]


def instantiate_network(
    path: PathLike, config: dict[str, Any], trust: bool = False, device: str = "cpu"
) -> Any:
    """Instantiate ``network_def`` of a MONAI inference config with ``ConfigParser`` after the trust check.

    With ``trust=True`` the bundle folder is put on ``sys.path`` while instantiating, so that bundles whose
    networks live in their own ``scripts`` package work as in MONAI.
    """
    from monai.bundle import ConfigParser

    path = Path(path)
    key = "network_def" if isinstance(config.get("network_def"), dict) else "network"
    if not isinstance(config.get(key), dict):
        raise BundleError(f"{path / INFERENCE_FILE}: lacks a 'network_def' with a '_target_'.")
    if not trust:
        check_config_trusted(config)
    parser = ConfigParser(dict(config))
    parser["bundle_root"] = str(path)
    added = trust and str(path) not in sys.path
    if added:
        sys.path.insert(0, str(path))
    try:
        net = parser.get_parsed_content(key, instantiate=True)
    except Exception as e:  # MONAI wraps every failure of the target in RuntimeError/other types
        cause = e
        while cause.__cause__ is not None:
            cause = cause.__cause__
        raise BundleError(f"{path}: the network in inference.json could not be built ({cause}).") from e
    finally:
        if added:
            sys.path.remove(str(path))
    import torch

    if not isinstance(net, torch.nn.Module):
        raise BundleError(
            f"{path}: '{key}' of inference.json is a {type(net).__name__}, not a torch network."
        )
    return net.to(device)


def load_weights(network: Any, weights_path: PathLike, device: str = "cpu") -> None:
    """Load ``models/model.pt`` into ``network`` with ``weights_only=True`` (no arbitrary unpickling).

    Accepts a plain state_dict or a checkpoint dict with a ``"model"`` or ``"state_dict"`` entry.
    """
    import torch

    weights_path = Path(weights_path)
    try:
        ckpt = torch.load(str(weights_path), map_location=device, weights_only=True)
    except Exception as e:  # UnpicklingError for non-tensor content, RuntimeError for broken files
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise BundleError(
            f"{weights_path}: not loadable as plain weights (weights_only=True refused or failed: {first})."
        ) from e
    if isinstance(ckpt, dict):
        for key in ("model", "state_dict"):
            if isinstance(ckpt.get(key), dict):
                ckpt = ckpt[key]
                break
    if not isinstance(ckpt, dict):
        raise BundleError(f"{weights_path}: holds a {type(ckpt).__name__}, not a state_dict.")
    if ckpt and all(str(k).startswith("module.") for k in ckpt):
        ckpt = {str(k)[len("module.") :]: v for k, v in ckpt.items()}
    try:
        network.load_state_dict(ckpt, strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise BundleError(
            f"{weights_path}: the weights do not fit the network in inference.json ({first})."
        ) from e


def load_bundle(path: PathLike, trust: bool = False, device: str = "cpu") -> LoadedBundle:
    """Validate, build and load a bundle for inference.

    Args:
        path: bundle folder.
        trust: allow ``_target_``/expressions outside ``monai.``/``torch.`` (custom code in the bundle).
        device: torch device for the network and weights.

    Raises:
        BundleError: invalid bundle, untrusted code, unbuildable network, or weights that are not a plain
            state_dict matching the network.
    """
    path = Path(path)
    card = validate_bundle(path)
    config = _read_json(path / INFERENCE_FILE, "configs/inference.json")
    network = instantiate_network(path, config, trust=trust, device=device)
    load_weights(network, path / WEIGHTS_FILE, device=device)
    network.eval()
    return LoadedBundle(network=network, card=card, path=path, config=config)


# --- writing --------------------------------------------------------------------------------------------
def _versions() -> dict[str, str]:
    import monai
    import numpy
    import torch

    return {"monai_version": monai.__version__, "pytorch_version": torch.__version__.split("+")[0],
            "numpy_version": numpy.__version__}  # fmt: skip


def network_data_format(card: ModelCard) -> dict[str, Any]:
    """MONAI ``network_data_format`` (inputs/outputs) describing the card's network."""
    spatial = list(card.roi_size) if card.roi_size else [-1] * card.spatial_dims
    fmt = "hounsfield" if card.modality == "CT" else "magnitude"
    inputs = {"image": {
        "type": "image", "format": fmt, "modality": card.modality, "num_channels": card.input_channels,
        "spatial_shape": spatial, "dtype": "float32", "value_range": [], "is_patch_data": bool(card.roi_size),
        "channel_def": {str(i): "image" for i in range(card.input_channels)},
    }}  # fmt: skip
    if card.task_type == "segmentation":
        channel_def = {"0": "background", **{str(lb["value"]): lb["name"] for lb in card.labels}}
        n_out = max([0] + [int(lb["value"]) for lb in card.labels]) + 1
        pred = {"type": "image", "format": "segmentation", "num_channels": n_out, "spatial_shape": spatial,
                "dtype": "float32", "value_range": [0, 1], "is_patch_data": bool(card.roi_size),
                "channel_def": channel_def}  # fmt: skip
    else:
        pred = {"type": "probabilities" if card.task_type == "classification" else "image",
                "format": card.task_type, "num_channels": len(card.labels), "dtype": "float32",
                "channel_def": {str(lb["value"]): lb["name"] for lb in card.labels}}  # fmt: skip
    return {"inputs": inputs, "outputs": {"pred": pred}}


def build_metadata(
    card: ModelCard,
    description: Optional[str] = None,
    authors: Optional[str] = None,
    changelog: Optional[dict[str, str]] = None,
) -> dict[str, Any]:
    """MONAI bundle ``metadata.json`` content for ``card`` (MONAI keys + the ``"modelselector"`` block)."""
    labels = ", ".join(card.label_names) or "-"
    return {
        "schema": "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20220324.json",
        "version": card.version,
        "changelog": changelog or {card.version: "model trained with ModelSelector"},
        **_versions(),
        "required_packages_version": {},
        "name": card.name,
        "task": f"{card.task_type} of {labels} ({card.modality}, {card.body_region})",
        "description": description
        or f"{card.spatial_dims}D {card.task_type} network for {card.modality} {card.body_region}: {labels}.",
        "authors": authors or "ModelSelector contributors",
        "copyright": f"Copyright (c) {authors or 'ModelSelector contributors'}",
        "license": card.license,
        "data_source": card.training_data,
        "network_data_format": network_data_format(card),
        "modelselector": card.to_dict(),
    }


def _preprocessing(card: ModelCard) -> dict[str, Any]:
    if card.task_type == "landmarks" and card.spatial_dims == 2 and card.roi_size:
        # landmark models see the whole radiograph resized to roi_size (points map back by the scale)
        return {"_target_": "Compose", "transforms": [
            {"_target_": "LoadImaged", "keys": "image"},
            {"_target_": "EnsureChannelFirstd", "keys": "image"},
            {"_target_": "Resized", "keys": "image", "spatial_size": list(card.roi_size), "mode": "bilinear",
             "anti_aliasing": True},
            {"_target_": "ScaleIntensityRangePercentilesd", "keys": "image", "lower": 0.5, "upper": 99.5,
             "b_min": 0.0, "b_max": 1.0, "clip": True},
            {"_target_": "EnsureTyped", "keys": "image"},
        ]}  # fmt: skip
    transforms: list[dict[str, Any]] = [
        {"_target_": "LoadImaged", "keys": "image"},
        {"_target_": "EnsureChannelFirstd", "keys": "image"},
        {"_target_": "Orientationd", "keys": "image", "axcodes": "RAS"},
    ]
    if card.target_spacing:
        transforms.append({"_target_": "Spacingd", "keys": "image", "pixdim": list(card.target_spacing),
                           "mode": "bilinear"})  # fmt: skip
    intensity = card.intensity or {}
    if intensity.get("mode") == "ct":
        transforms.append({"_target_": "ScaleIntensityRanged", "keys": "image", "a_min": intensity.get("a_min", -1000),
                           "a_max": intensity.get("a_max", 1000), "b_min": 0.0, "b_max": 1.0, "clip": True})  # fmt: skip
    elif intensity.get("mode") == "percentile":
        transforms.append({"_target_": "ScaleIntensityRangePercentilesd", "keys": "image",
                           "lower": intensity.get("a_min", 0.5), "upper": intensity.get("a_max", 99.5),
                           "b_min": 0.0, "b_max": 1.0, "clip": True})  # fmt: skip
    else:
        transforms.append({"_target_": "NormalizeIntensityd", "keys": "image", "nonzero": True})
    transforms.append({"_target_": "EnsureTyped", "keys": "image"})
    return {"_target_": "Compose", "transforms": transforms}


def build_inference_config(card: ModelCard, network_def: dict[str, Any]) -> dict[str, Any]:
    """A MONAI ``inference.json`` for ``card`` with ``network_def`` (parseable by ``ConfigParser``)."""
    config: dict[str, Any] = {
        "bundle_root": ".",
        "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
        "ckpt_path": "$@bundle_root + '/models/model.pt'",
        "network_def": network_def,
        "network": "$@network_def.to(@device)",
        "preprocessing": _preprocessing(card),
    }
    if card.roi_size:
        config["inferer"] = {"_target_": "SlidingWindowInferer", "roi_size": list(card.roi_size),
                             "sw_batch_size": 1, "overlap": 0.25}  # fmt: skip
    else:
        config["inferer"] = {"_target_": "SimpleInferer"}
    if card.task_type == "segmentation":
        config["postprocessing"] = {"_target_": "Compose", "transforms": [
            {"_target_": "Activationsd", "keys": "pred", "softmax": True},
            {"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
        ]}  # fmt: skip
    return config


def _fmt(value: Any) -> str:
    if value is None or value == "" or value == [] or value == {}:
        return "-"
    if isinstance(value, (list, tuple)):
        return " x ".join(str(v) for v in value)
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items())
    return str(value)


def render_readme(card: ModelCard, description: Optional[str] = None) -> str:
    """The model card as Markdown (``docs/README.md``)."""
    lines = [f"# {card.name} {card.version}", ""]
    if description:
        lines += [description, ""]
    if card.synthetic:
        lines += ["> Trained on synthetic data: for demonstration only, not for clinical use.", ""]
    lines += [
        "## Intended input", "",
        f"- Task: {card.task_type}",
        f"- Modality: {card.modality}",
        f"- Body region: {card.body_region}",
        f"- Spatial dimensions: {card.spatial_dims}D, {card.input_channels} input channel(s)",
        f"- Target spacing (mm): {_fmt(card.target_spacing)}",
        f"- Intensity normalisation: {_fmt(card.intensity)}",
        f"- Patch size (roi_size): {_fmt(card.roi_size)}",
        "", "## Labels", "", "| value | name | colour (RGB) |", "|---|---|---|",
    ]  # fmt: skip
    for lb in card.labels:
        color = ", ".join(f"{c:.2f}" for c in lb.get("color", []))
        lines.append(f"| {lb.get('value')} | {lb.get('name')} | {color} |")
    lines += ["", "## Training data", "", f"- Data: {_fmt(card.training_data)}",
              f"- Training cases: {card.n_training_cases}", f"- Synthetic: {'yes' if card.synthetic else 'no'}",
              "", "## Validation metrics", ""]  # fmt: skip
    if card.validation_metrics:
        lines += [
            f"- {k}: {v:.4f}" if isinstance(v, float) else f"- {k}: {v}"
            for k, v in card.validation_metrics.items()
        ]
    else:
        lines.append("- none recorded")
    time_s = f"{card.training_time_s:.1f} s" if card.training_time_s is not None else "-"
    lines += ["", "## Reproducibility", "", f"- Seed: {_fmt(card.seed)}", f"- Code version: {_fmt(card.code_version)}",
              f"- Training time: {time_s}", "", "## Licence", "", card.license or "not stated", "",
              "## Use", "", "Load with `ModelSelectorLib.bundle.load_bundle(PATH)` or run `configs/inference.json`",
              "with `python -m monai.bundle run --config_file configs/inference.json`.", ""]  # fmt: skip
    return "\n".join(lines)


def save_bundle(
    out_dir: PathLike,
    card: ModelCard,
    network_def: dict[str, Any],
    state_dict: dict[str, Any],
    *,
    description: Optional[str] = None,
    authors: Optional[str] = None,
    changelog: Optional[dict[str, str]] = None,
) -> Path:
    """Write a complete bundle folder ``out_dir`` (the bundle itself, not its parent) atomically.

    Args:
        out_dir: the bundle folder to create; an existing bundle there is replaced as a whole.
        card: model card (validated first).
        network_def: MONAI config of the network, e.g. ``{"_target_": "monai.networks.nets.UNet", ...}``.
        state_dict: the network's weights (``network.state_dict()``).
        description, authors, changelog: optional MONAI metadata.

    Returns:
        ``out_dir`` as a :class:`~pathlib.Path`.

    Raises:
        BundleError: invalid card, ``network_def`` without ``_target_``, or ``out_dir`` is a non-empty
            folder that is not a bundle (it is never overwritten).
    """
    import torch

    out = Path(out_dir)
    card.validate()
    if not isinstance(network_def, dict) or "_target_" not in network_def:
        raise BundleError("network_def must be a MONAI config dict with a '_target_'.")
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / METADATA_FILE).is_file())):
        raise BundleError(f"{out}: exists and is not a bundle; choose another output folder.")
    with atomic.atomic_dir(out) as tmp:
        for sub in ("configs", "models", "docs"):
            (tmp / sub).mkdir()
        _dump_json(tmp / METADATA_FILE, build_metadata(card, description, authors, changelog))
        _dump_json(tmp / INFERENCE_FILE, build_inference_config(card, network_def))
        torch.save({k: v.detach().cpu() if hasattr(v, "detach") else v for k, v in state_dict.items()},
                   str(tmp / WEIGHTS_FILE))  # fmt: skip
        (tmp / README_FILE).write_text(render_readme(card, description), encoding="utf-8")
    return out


def _dump_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=4) + "\n", encoding="utf-8")


def write_card(path: PathLike, card: ModelCard) -> None:
    """Put ``card`` into bundle ``path``'s ``metadata.json`` (and refresh ``docs/README.md``), atomically."""
    path = Path(path)
    card.validate()
    meta = read_metadata(path)
    meta["modelselector"] = card.to_dict()
    meta.setdefault("name", card.name)
    atomic.write_json(path / METADATA_FILE, meta)
    readme = path / README_FILE
    text = render_readme(card, meta.get("description"))
    if readme.is_file():
        old = readme.read_text(encoding="utf-8", errors="replace")
        if "## Intended input" not in old:  # keep the original README of an imported bundle below the card
            text = text + "\n---\n\n" + old
    atomic.write_text(readme, text)


# --- standard MONAI bundles -----------------------------------------------------------------------------
def _labels_from_format(ndf: dict[str, Any], task_type: str) -> list[dict[str, Any]]:
    outputs = ndf.get("outputs") or {}
    pred = outputs.get("pred") or (next(iter(outputs.values())) if outputs else {}) or {}
    channel_def = pred.get("channel_def") if isinstance(pred, dict) else None
    labels: list[dict[str, Any]] = []
    if isinstance(channel_def, dict) and channel_def:
        for key, name in sorted(
            channel_def.items(), key=lambda kv: int(kv[0]) if str(kv[0]).isdigit() else 1e9
        ):
            if not str(key).isdigit():
                continue
            value = int(key)
            if task_type == "segmentation" and (value == 0 or str(name).lower() == "background"):
                continue
            labels.append({"value": value, "name": str(name), "color": default_color(value)})
    elif isinstance(pred, dict) and isinstance(pred.get("num_channels"), int) and pred["num_channels"] > 1:
        start = 1 if task_type == "segmentation" else 0
        labels = [{"value": v, "name": f"Label {v}", "color": default_color(v)}
                  for v in range(start, pred["num_channels"])]  # fmt: skip
    return labels


def _guess_task_type(meta: dict[str, Any], ndf: dict[str, Any]) -> str:
    pred = (ndf.get("outputs") or {}).get("pred") or {}
    fmt = str(pred.get("format", "")).lower() if isinstance(pred, dict) else ""
    text = f"{fmt} {meta.get('task', '')} {meta.get('name', '')}".lower()
    if "segment" in text:
        return "segmentation"
    if "landmark" in text:
        return "landmarks"
    if "classif" in text or fmt in ("labels", "probabilities"):
        return "classification"
    return "segmentation"


def import_monai_bundle(
    src_dir: PathLike,
    modality: Optional[str] = None,
    body_region: Optional[str] = None,
    trust: bool = False,
    name: Optional[str] = None,
) -> ModelCard:
    """Build a model card for a standard MONAI model-zoo bundle (which has no ``"modelselector"`` block).

    The card takes name, version, licence, input channels, spatial dims and label names
    (``network_data_format.outputs.pred.channel_def``) from ``metadata.json``; ``modality`` and
    ``body_region`` must be given since MONAI metadata does not state them in a standard form. The
    network is instantiated from ``inference.json`` (with the same trust check as :func:`load_bundle`)
    to prove that the bundle can be built.

    Raises:
        BundleError: missing files, missing modality/body region, invalid values, untrusted code.
    """
    src = Path(src_dir)
    _check_files(src)
    meta = read_metadata(src)
    existing = meta.get("modelselector") if isinstance(meta.get("modelselector"), dict) else {}
    modality = (modality or existing.get("modality") or "").strip().upper() or None
    body_region = (body_region or existing.get("body_region") or "").strip().upper() or None
    if not modality or not body_region:
        missing = [opt for opt, v in (("--modality", modality), ("--body-region", body_region)) if not v]
        raise BundleError(
            f"{src}: a standard MONAI bundle does not state its modality and body region; pass "
            f"{' and '.join(missing)} (e.g. --modality CT --body-region ABDOMEN)."
        )
    ndf = meta.get("network_data_format") if isinstance(meta.get("network_data_format"), dict) else {}
    image = next(iter((ndf.get("inputs") or {}).values()), {}) or {}
    spatial = image.get("spatial_shape") if isinstance(image, dict) else None
    task_type = existing.get("task_type") or _guess_task_type(meta, ndf)
    roi = [int(s) for s in spatial] if isinstance(spatial, list) and spatial and all(
        isinstance(s, int) and s > 0 for s in spatial) else None  # fmt: skip
    card = ModelCard(
        name=safe_name(name or existing.get("name") or meta.get("name") or src.name),
        version=safe_name(str(meta.get("version", "0.0.1"))),
        task_type=task_type,
        modality=modality,
        body_region=body_region,
        labels=_labels_from_format(ndf, task_type),
        input_channels=int(image.get("num_channels", 1)) if isinstance(image, dict) else 1,
        spatial_dims=len(spatial) if isinstance(spatial, list) and len(spatial) in (2, 3) else 3,
        roi_size=roi,
        training_data=str(meta.get("data_source", "")),
        license=str(meta.get("license", meta.get("copyright", ""))),
        code_version=f"monai {meta.get('monai_version', '?')}",
    )
    card.validate()
    config = _read_json(src / INFERENCE_FILE, "configs/inference.json")
    instantiate_network(src, config, trust=trust)
    return card


def is_standard_monai_bundle(path: PathLike) -> bool:
    """True when ``path`` holds a bundle's ``metadata.json`` without a ``"modelselector"`` block."""
    try:
        return "modelselector" not in read_metadata(path)
    except BundleError:
        return False
