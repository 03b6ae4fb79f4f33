"""MONAI bundles with a model card: write, validate, load safely, and import standard MONAI zoo bundles.

A model is a MONAI bundle folder::

    NAME/
      configs/metadata.json    MONAI bundle metadata + the model card ("modelselector" block, :mod:`.card`)
      configs/inference.json   MONAI config with "network_def" ("_target_" + arguments)
      models/model.pt          state_dict (torch.save), loaded with torch.load(weights_only=True)
      docs/README.md           the model card as Markdown

Configs are parsed with :class:`monai.bundle.ConfigParser` after the trust check of :mod:`.trust`. What
differs between task types (preprocessing of ``inference.json``, the output format, how labels are read
from a standard bundle) comes from the task's runtime in :mod:`ModelSelectorLib.models`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import re
import shlex
import shutil
import sys
from pathlib import Path
from typing import Any, Optional, Union

from .. import atomic
from ..errors import BundleError
from ..models.preprocessing import (
    REPRODUCED,
    Unreproducible,
    enabled_transforms,
    kept_components,
    read_inferer,
    read_preprocessing,
)
from ..models.registry import guess_task_type, runtime_class
from .bundle_code import bundle_modules, forget_modules, lend_modules_while_running, loaded_modules
from .bundle_limits import NetworkTooLarge, check_json_depth, json_too_deep, limited_build, network_budget
from .card import IMPORTED_CODE_VERSION, MODALITIES, ModelCard, default_color, safe_name
from .trust import buildable_config, check_no_compiled_code, recorded_trust
from .weights import fit_weights, load_weights, read_state_dict

PathLike = Union[str, Path]

METADATA_FILE = Path("configs") / "metadata.json"
INFERENCE_FILE = Path("configs") / "inference.json"
WEIGHTS_FILE = Path("models") / "model.pt"
README_FILE = Path("docs") / "README.md"
REQUIRED_FILES = (METADATA_FILE, INFERENCE_FILE, WEIGHTS_FILE)


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
    except RecursionError:
        raise json_too_deep(path) from None
    if not isinstance(data, dict):
        raise BundleError(f"{path}: {what} must hold a JSON object.")
    check_json_depth(data, str(path))
    return data


def _check_files(path: Path) -> None:
    if not path.is_dir():
        raise BundleError(f"{path}: not a bundle folder (no such folder).")
    missing = [f for f in REQUIRED_FILES if not (path / f).is_file()]
    for f in missing:
        yaml = [y for y in (f.with_suffix(".yaml"), f.with_suffix(".yml")) if (path / y).is_file()]
        if f.suffix == ".json" and yaml:
            raise BundleError(
                f"{path}: has {yaml[0]} but no {f}; YAML configs are not supported: convert it to JSON "
                f'(python -c "import json, yaml; print(json.dumps(yaml.safe_load(open({str(path / yaml[0])!r})), '
                f'indent=4))" > {shlex.quote(str(path / f))}).'
            )
        if f == WEIGHTS_FILE and (path / "models" / "model.ts").is_file():
            raise BundleError(
                f"{path}: holds only models/model.ts; TorchScript-only bundles are not supported: ModelSelector needs "
                "the network's state_dict in models/model.pt (torch.save(network.state_dict(), 'models/model.pt'))."
            )
    versions = [d.name for d in path.iterdir() if (d / METADATA_FILE).is_file()] if missing else []
    versions.sort(
        key=lambda v: [(0, int(t), "") if t.isdigit() else (1, 0, t) for t in v.replace("-", ".").split(".")]
    )
    if len(missing) == len(REQUIRED_FILES) and versions:  # a zoo's model folder: its versions are the bundles
        raise BundleError(f"{path}: a model folder holding the bundles of versions {', '.join(versions)}, not a "
                          f"bundle; give one of them ({path / versions[-1]}).")  # fmt: skip
    if missing:
        raise BundleError(f"{path}: not a complete MONAI bundle; missing {', '.join(map(str, missing))}.")


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
    if not isinstance(network_config(config), dict) or "_target_" not in network_config(config):
        raise BundleError(f"{path / INFERENCE_FILE}: lacks a 'network_def' (or 'network') with a '_target_'.")
    try:
        card = ModelCard.from_dict(meta["modelselector"])
    except TypeError as e:
        raise BundleError(f"{path / METADATA_FILE}: invalid model card ({e}).") from e
    try:
        return card.validate()
    except BundleError as e:
        raise BundleError(f"{path}: {e}") from e


def network_config(config: dict[str, Any]) -> Any:
    """The network item of an ``inference.json``: ``network_def``, else ``network`` (as :func:`instantiate_network`
    builds it); None when there is neither as an object."""
    for key in ("network_def", "network"):
        if isinstance(config.get(key), dict):
            return config[key]
    return None


def _check_links(root: Path) -> None:
    """Refuse symbolic links in bundle ``root`` that lead out of it, nowhere, or round in a loop."""
    real_root = root.resolve()

    def visit(folder: Path, stack: tuple[Path, ...]) -> None:
        for p in sorted(folder.iterdir()):
            if p.is_symlink():
                try:
                    real = p.resolve(strict=True)
                except (OSError, RuntimeError) as e:  # RuntimeError: a loop, before Python 3.13
                    why = "is part of a loop of symbolic links" if "loop" in str(e).lower() or getattr(
                        e, "errno", None) == 40 else "is a symbolic link to nothing"  # fmt: skip
                    raise BundleError(f"{p}: {why}; replace it by the file it should be.") from None
                if real != real_root and real_root not in real.parents:
                    raise BundleError(
                        f"{p}: is a symbolic link to {real}, outside the bundle; a bundle is copied without "
                        "following links out of it: put the file itself into the bundle."
                    )
            if p.is_dir():
                real = p.resolve()
                if real in stack:
                    raise BundleError(f"{p}: is part of a loop of symbolic links (it leads back to {real}).")
                visit(p, (*stack, real))

    visit(root, (real_root,))


def copy_bundle(src: PathLike, dest: PathLike) -> Path:
    """Copy bundle folder ``src`` to ``dest`` (created, or merged into when it is an empty folder).

    Symbolic links inside the bundle that point into it are copied as what they point to; links that point
    out of the bundle, to nothing, or round in a loop are refused before anything is copied. Leftovers of
    interrupted writes (``.*.tmp``) and ``__pycache__`` are not copied.

    Raises:
        BundleError: a symbolic link out of the bundle, dangling, or in a loop (the message names it).
    """
    src = Path(src)
    _check_links(src)
    ignore = shutil.ignore_patterns(".*.tmp", ".tmp-*", "__pycache__")
    shutil.copytree(src, dest, dirs_exist_ok=True, ignore=ignore)
    return Path(dest)


# --- loading --------------------------------------------------------------------------------------------
@dataclasses.dataclass
class LoadedBundle:
    """A bundle ready for inference: ``network`` (eval mode, on the requested device) and its card."""

    network: Any
    card: ModelCard
    path: Path
    config: dict[str, Any]


def instantiate_network(
    path: PathLike,
    config: dict[str, Any],
    trust: bool = False,
    device: str = "cpu",
    state_dict: Optional[dict[str, Any]] = None,
) -> Any:
    """Instantiate ``network_def`` (else ``network``) of a MONAI inference config with ``ConfigParser``.

    Without ``trust`` the parser sees only what :func:`~.trust.buildable_config` let through: the network's
    items, built from allow-listed classes and plain values, so no code of the bundle runs. Such a network is
    built on torch's ``meta`` device first (no memory): one that would hold far more than the bundle's
    ``models/model.pt`` (:func:`~.bundle_limits.network_budget`), or whose parameters do not fit ``state_dict``
    (when given), is refused before it is built for real; the real build is held to the same budget. With
    ``trust=True`` the whole config is parsed and the bundle folder is put on ``sys.path`` while instantiating,
    so that bundles whose networks live in their own ``scripts`` package work as in MONAI.
    """
    path = Path(path)
    key = "network_def" if isinstance(config.get("network_def"), dict) else "network"
    if not isinstance(config.get(key), dict):
        raise BundleError(f"{path / INFERENCE_FILE}: lacks a 'network_def' (or 'network') with a '_target_'.")
    try:
        source = dict(config) if trust else buildable_config(config, key)
    except BundleError as e:
        raise BundleError(f"{path / INFERENCE_FILE}: {e}") from e
    budget = None if trust else network_budget(path / WEIGHTS_FILE)
    if budget is not None:
        try:
            meta = _build_network(path, source, key, trust, budget, on_meta=True)
        except NetworkTooLarge:
            raise
        except BundleError:  # it reads values while built (.item()): the real build below is limited too
            meta = None
        if meta is not None and state_dict is not None:
            fit_weights(meta, state_dict, path / WEIGHTS_FILE)  # a mismatch is refused before any allocation
    net = _build_network(path, source, key, trust, budget)
    return net.to(device)


def _build_network(
    path: Path, source: dict[str, Any], key: str, trust: bool, budget: Optional[int], on_meta: bool = False
) -> Any:
    """Build item ``key`` of config ``source`` (checked already when untrusted); with a ``budget`` (bytes) under
    :func:`~.bundle_limits.limited_build`, on torch's ``meta`` device when ``on_meta``."""
    import copy

    import torch
    from monai.bundle import ConfigParser

    parser = ConfigParser(copy.deepcopy(source))
    parser["bundle_root"] = str(path)
    if trust:
        check_no_compiled_code(path)
    added = trust and str(path) not in sys.path
    if added:
        sys.path.insert(0, str(path))
    own = bundle_modules(path) if trust else set()
    forget_modules(own)  # another bundle's `scripts` loaded before must not stand in for this one's
    writes_bytecode = sys.dont_write_bytecode
    sys.dont_write_bytecode = writes_bytecode or bool(trust)  # nothing unchecked is left in the bundle
    try:
        with contextlib.ExitStack() as stack:
            if budget is not None:
                stack.enter_context(limited_build(budget, str(path / WEIGHTS_FILE)))
            if on_meta:
                stack.enter_context(torch.device("meta"))
            net = parser.get_parsed_content(key, instantiate=True)
    except Exception as e:  # MONAI wraps every failure of the target in RuntimeError/other types
        cause: BaseException = e
        while cause.__cause__ is not None:
            cause = cause.__cause__
        if isinstance(cause, NetworkTooLarge):
            raise NetworkTooLarge(f"{path}: {cause}") from None
        text = re.sub(r"\x1b\[[0-9;]*m", "", str(cause))  # torch colours some of its messages
        first = next((ln.strip() for ln in text.splitlines() if ln.strip()), type(cause).__name__)
        raise BundleError(f"{path}: the network in inference.json could not be built ({type(cause).__name__}: "
                          f"{first}){_monai_version_note(path)}.") from e  # fmt: skip
    finally:
        sys.dont_write_bytecode = writes_bytecode
        if added:
            sys.path.remove(str(path))
        modules = loaded_modules(own)
        forget_modules(own)  # the network keeps its classes; the next bundle imports its own modules
    if not isinstance(net, torch.nn.Module):
        raise BundleError(
            f"{path}: '{key}' of inference.json is a {type(net).__name__}, not a torch network."
        )
    if modules:
        lend_modules_while_running(net, own, modules)
    return net


def _monai_version_note(path: Path) -> str:
    """``"; the bundle was written for MONAI X, this environment has Y"`` when its metadata names another
    version (a network's arguments change between MONAI versions), else ``""``."""
    import monai

    try:
        wanted = str(
            json.loads((path / METADATA_FILE).read_text(encoding="utf-8")).get("monai_version") or ""
        )
    except (OSError, ValueError, AttributeError):
        return ""
    if not wanted or wanted.split("+")[0] == monai.__version__.split("+")[0]:
        return ""
    return f"; the bundle was written for MONAI {wanted}, this environment has {monai.__version__}"


def load_bundle(path: PathLike, trust: Optional[bool] = None, device: str = "cpu") -> LoadedBundle:
    """Validate, build and load a bundle for inference.

    Args:
        path: bundle folder.
        trust: build the whole config as MONAI would (custom code in the bundle) instead of only
            allow-listed classes and plain values (see :mod:`.trust`). ``None`` (the default): the trust
            that ``modelselector zoo add --trust`` recorded for this very bundle in the user's trust store
            (:func:`~.trust.recorded_trust`: only while its config and code are those it was added with),
            else False; so ``apply``, ``select`` and ``prototypes`` run a bundle added with ``--trust``.
        device: torch device for the network and weights.

    Raises:
        BundleError: invalid bundle, untrusted code, unbuildable network, or weights that are not a plain
            state_dict matching the network.
    """
    path = Path(path)
    card = validate_bundle(path)
    config = _read_json(path / INFERENCE_FILE, "configs/inference.json")
    _check_outputs_match_labels(path, card, config)
    trust = recorded_trust(path) if trust is None else trust
    ckpt = read_state_dict(path / WEIGHTS_FILE, device)  # first: an untrusted network is compared with it
    network = instantiate_network(path, config, trust=trust, device=device, state_dict=ckpt)
    load_weights(network, path / WEIGHTS_FILE, device=device, state_dict=ckpt)
    network.eval()
    return LoadedBundle(network=network, card=card, path=path, config=config)


def _check_outputs_match_labels(path: Path, card: ModelCard, config: dict[str, Any]) -> None:
    """Refuse a card whose labels do not match its network's output channels (a label's value is its channel):
    an edited card would otherwise name the outputs wrongly ("Label 3") without a word. Networks that do not
    say their ``out_channels`` (a stage dictionary) are not checked."""
    channels = (network_config(config) or {}).get("out_channels") if isinstance(config, dict) else None
    values = [int(lb["value"]) for lb in card.labels if isinstance(lb.get("value"), int)]
    if isinstance(channels, int) and values and max(values) + 1 != channels:
        raise BundleError(
            f"{path}: the card's labels end at value {max(values)} but the network has {channels} output channels "
            f"(a label's value is its channel); correct the labels in configs/metadata.json."
        )


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
    pred = runtime_class(card.task_type).output_format(card)
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


def build_inference_config(card: ModelCard, network_def: dict[str, Any]) -> dict[str, Any]:
    """A MONAI ``inference.json`` for ``card`` with ``network_def`` (parseable by ``ConfigParser``); the
    ``preprocessing``, ``inferer`` and ``postprocessing`` sections describe what the task's runtime does."""
    config: dict[str, Any] = {
        "bundle_root": ".",
        "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
        "ckpt_path": "$@bundle_root + '/models/model.pt'",
        "network_def": network_def,
        "network": "$@network_def.to(@device)",
    }
    # preprocessing, inferer and postprocessing as MONAI transforms: the task's runtime knows them
    config.update(runtime_class(card.task_type).inference_sections(card))
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
        *([f"- Inference: {_fmt(card.inference)}"] if card.inference else []),
        *([f"- Planning: {_fmt(card.plan)}"] if card.plan else []),
        "", "## Labels", "", "| value | name | colour (RGB) |", "|---|---|---|",
    ]  # fmt: skip
    for lb in card.labels:
        color = ", ".join(f"{c:.2f}" for c in lb.get("color", []))
        lines.append(f"| {lb.get('value')} | {lb.get('name')} | {color} |")
    lines += ["", "## Training data", "", f"- Data: {_fmt(card.training_data)}",
              f"- Training cases: {'not stated (an imported MONAI bundle)' if card.imported else card.n_training_cases}",
              f"- Synthetic: {'yes' if card.synthetic else 'no'}",
              "", "## Validation and test metrics" if any(str(k).startswith("test_") for k in card.validation_metrics)
              else "## Validation metrics", ""]  # fmt: skip
    if card.validation_metrics:
        lines += [
            f"- {k}: {v:.4f}" if isinstance(v, float) else f"- {k}: {v}"
            for k, v in card.validation_metrics.items()
        ]
    else:
        lines.append("- none recorded")
    time_s = f"{card.training_time_s:.1f} s" if card.training_time_s is not None else "-"
    lines += ["", "## Reproducibility", "", f"- Seed: {_fmt(card.seed)}", f"- Code version: {_fmt(card.code_version)}",
              f"- Training time: {time_s}",
              *([f"- Peak memory: {card.peak_memory_mb:.0f} MiB"] if card.peak_memory_mb is not None else []),
              *([f"- Trained on: {card.training_device}"] if card.training_device else []),
              "", "## Licence", "", card.license or "not stated", "",
              "## Use", "", *runtime_class(card.task_type).usage(card), ""]  # fmt: skip
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
    """Put ``card`` into bundle ``path``'s ``metadata.json`` (and refresh ``docs/README.md``), atomically.

    A bundle this project made (one that holds a card already) also takes the card's name and version as its
    MONAI ``name`` and ``version``, with a changelog entry naming the one it was (a promoted candidate is the
    task's new version for MONAI's tools too); an imported bundle keeps its own.
    """
    path = Path(path)
    card.validate()
    meta = read_metadata(path)
    old = meta.get("modelselector")
    meta["modelselector"] = card.to_dict()
    if isinstance(old, dict) and (meta.get("name"), meta.get("version")) != (card.name, card.version):
        was = f"{meta.get('name', '?')} {meta.get('version', '?')}"
        meta["name"], meta["version"] = card.name, card.version
        changelog = dict(meta["changelog"]) if isinstance(meta.get("changelog"), dict) else {}
        text = f"{card.name} {card.version}, made from {was}"
        earlier = changelog.pop(card.version, None)  # the same version renamed: both texts, the new one last
        meta["changelog"] = {card.version: f"{earlier}; {text}" if earlier else text, **changelog}
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
#: names of an output channel 0 that is the background of a segmentation (the others are labels)
BACKGROUND_NAMES = frozenset({"background", "bg", "_background_", "other", "others", "none", "unlabeled",
                              "unlabelled", "void", "clear label"})  # fmt: skip


def _check_runnable(src: Path, meta: dict[str, Any], config: dict[str, Any], task_type: str) -> None:
    """Refuse, in one line, a standard bundle that no runtime runs as its authors meant: several input
    channels, a non-spatial input or output, or a multi-label (sigmoid) output whose channels overlap."""
    ndf = _data_format(meta)
    image = _input_format(ndf)
    pred = _pred_format(ndf)
    where = f"{src / METADATA_FILE}: network_data_format"
    channels = image.get("num_channels", 1)
    if channels != 1:
        raise BundleError(f"{where}.inputs gives {channels!r} input channels; no runtime of this version feeds a "
                          "network more than one image channel, so the bundle cannot be added.")  # fmt: skip
    for what, fmt in (("inputs", image), ("outputs.pred", pred)):
        shape = fmt.get("spatial_shape") if isinstance(fmt, dict) else None
        if isinstance(shape, list) and len(shape) not in (2, 3):
            raise BundleError(f"{where}.{what}.spatial_shape is {shape!r}, not a 2D or 3D image; no runtime of "
                              "this version runs such a model (a classifier?).")  # fmt: skip
    inferer = config.get("inferer")
    if isinstance(inferer, dict) and str(inferer.get("_target_")).rpartition(".")[2] == "SliceInferer":
        raise BundleError(f"{src / INFERENCE_FILE}: its inferer, SliceInferer, runs a 2D network slice by slice through "
                          "volumes; no runtime of this version does, so the bundle cannot be added.")  # fmt: skip
    try:
        post = enabled_transforms(config, "postprocessing") if "postprocessing" in config else []
    except Unreproducible:
        post = []
    for name, t in post:
        if (name == "Activations" and t.get("sigmoid") is True) or (name == "AsDiscrete" and (
                isinstance(t.get("threshold"), (int, float)) or t.get("threshold_values") is True)):  # fmt: skip
            raise BundleError(
                f"{src / INFERENCE_FILE}: its postprocessing ({t['_target_']}) thresholds independent sigmoid "
                "channels (a multi-label output); ModelSelector takes one label per voxel (argmax), so the bundle "
                "cannot be added."
            )
    first = runtime_class(task_type).first_label_value
    channel_def = pred.get("channel_def") if isinstance(pred, dict) else None
    zero = (
        str(channel_def.get("0", channel_def.get(0, "background"))) if isinstance(channel_def, dict) else ""
    )
    if first > 0 and isinstance(channel_def, dict) and zero.strip().lower() not in BACKGROUND_NAMES:
        raise BundleError(
            f"{where}.outputs.pred.channel_def names channel 0 {zero!r}, not the background a {task_type} "
            "model's channel 0 is; a label there would be dropped, so the bundle cannot be added (rename it "
            "'background' if it is one)."
        )


def _data_format(meta: dict[str, Any]) -> dict[str, Any]:
    """A standard bundle's ``network_data_format`` (``{}`` when the metadata has none)."""
    ndf = meta.get("network_data_format")
    return ndf if isinstance(ndf, dict) else {}


def _input_format(ndf: dict[str, Any]) -> dict[str, Any]:
    """The network's (first) input in ``network_data_format.inputs`` (``{}`` when none is stated)."""
    image = next(iter((ndf.get("inputs") or {}).values()), {}) or {}
    return image if isinstance(image, dict) else {}


def _pred_format(ndf: dict[str, Any]) -> dict[str, Any]:
    """The network's output in ``network_data_format.outputs`` (``pred``, else the first; ``{}`` when none)."""
    outputs = ndf.get("outputs") or {}
    pred = outputs.get("pred") or (next(iter(outputs.values())) if outputs else {}) or {}
    return pred if isinstance(pred, dict) else {}


def _labels_from_format(ndf: dict[str, Any], task_type: str) -> list[dict[str, Any]]:
    # channels below the task's first label value (a segmentation's background) are not labels
    first = runtime_class(task_type).first_label_value
    pred = _pred_format(ndf)
    channel_def = pred.get("channel_def")
    labels: list[dict[str, Any]] = []
    if isinstance(channel_def, dict) and channel_def:
        for key, name in sorted(
            channel_def.items(), key=lambda kv: int(kv[0]) if str(kv[0]).isdigit() else 1e9
        ):
            if not str(key).isdigit():
                continue
            value = int(key)
            if value < first or (first > 0 and str(name).lower() == "background"):
                continue
            labels.append({"value": value, "name": str(name), "color": default_color(value)})
    elif isinstance(pred.get("num_channels"), int) and pred["num_channels"] > 1:
        labels = [{"value": v, "name": f"Label {v}", "color": default_color(v)}
                  for v in range(first, pred["num_channels"])]  # fmt: skip
    return labels


def _task_hints(meta: dict[str, Any]) -> str:
    """The words of a standard bundle's metadata that tell its task (task, name)."""
    return f"{meta.get('task', '')} {meta.get('name', '')}".lower()


def _modality_and_region(
    src: Path, meta: dict[str, Any], modality: Optional[str], body_region: Optional[str]
) -> tuple[str, str]:
    """The card's modality and body region: given, else the card's, else (modality) the metadata's
    ``network_data_format.inputs.image.modality`` when it is a DICOM code; a refusal names what is missing."""
    existing = meta.get("modelselector") if isinstance(meta.get("modelselector"), dict) else {}
    ndf = _data_format(meta)
    image = _input_format(ndf)
    stated = str(image.get("modality", "")).strip().upper()
    stated = "MR" if stated in ("MRI", "MRA") else stated  # words of many model-zoo bundles for DICOM's MR
    modality = (modality or existing.get("modality") or "").strip().upper() or (
        stated if stated in MODALITIES else None)  # fmt: skip
    body_region = (body_region or existing.get("body_region") or "").strip().upper() or None
    if not modality or not body_region:
        missing = [opt for opt, v in (("--modality", modality), ("--body-region", body_region)) if not v]
        what = " and ".join(w for w, v in (("modality", modality), ("body region", body_region)) if not v)
        raise BundleError(
            f"{src}: the bundle's metadata does not state its {what}; pass {' and '.join(missing)} "
            f"(e.g. {'--modality CT ' if not modality else ''}{'--body-region ABDOMEN' if not body_region else ''}).".replace(
                " )", ")"
            )
        )
    return modality, body_region


def import_monai_bundle(
    src_dir: PathLike,
    modality: Optional[str] = None,
    body_region: Optional[str] = None,
    trust: bool = False,
    name: Optional[str] = None,
) -> ModelCard:
    """Build a model card for a standard MONAI model-zoo bundle (which has no ``"modelselector"`` block).

    The card takes name, version, licence, spatial dims and label names
    (``network_data_format.outputs.pred.channel_def``) from ``metadata.json``, the modality from
    ``network_data_format.inputs.image.modality`` unless ``modality`` is given (``body_region`` must be given:
    MONAI metadata does not state it in a standard form), the target spacing and intensity normalisation from
    ``inference.json``'s preprocessing (:func:`read_preprocessing`) and patch size, overlap and blending from its
    ``SlidingWindowInferer`` (:func:`read_inferer`; else the metadata's integer ``spatial_shape``). The network
    is instantiated from ``inference.json`` (with the same trust check as :func:`load_bundle`) to prove that
    the bundle can be built.

    Raises:
        BundleError: missing files or metadata, missing modality/body region, an output no runtime produces
            (classes, several input channels, multi-label sigmoid channels), a preprocessing that cannot be
            reproduced, a symbolic patch shape without an inferer ``roi_size``, untrusted code.
    """
    src = Path(src_dir)
    _check_files(src)
    meta = read_metadata(src)
    config = _read_json(src / INFERENCE_FILE, "configs/inference.json")
    existing = meta.get("modelselector") if isinstance(meta.get("modelselector"), dict) else {}
    ndf = _data_format(meta)
    image = _input_format(ndf)
    spatial = image.get("spatial_shape")
    try:
        task_type = existing.get("task_type") or guess_task_type(
            _task_hints(meta), _pred_format(ndf).get("format")
        )
    except BundleError as e:
        raise BundleError(f"{src / METADATA_FILE}: {e}") from None
    _check_runnable(src, meta, config, task_type)  # before asking for what the metadata lacks
    modality, body_region = _modality_and_region(src, meta, modality, body_region)
    dims = len(spatial) if isinstance(spatial, list) and len(spatial) in (2, 3) else 3
    try:
        pre, inferer = read_preprocessing(config, dims), read_inferer(config, dims)
        kept = kept_components(config)
    except Unreproducible as e:
        raise BundleError(
            f"{src / INFERENCE_FILE}: the bundle's preprocessing cannot be reproduced: {e}; ModelSelector reproduces "
            f"{REPRODUCED}."
        ) from None
    roi = inferer.pop("roi_size", None) or ([int(s) for s in spatial] if isinstance(spatial, list) and spatial and all(
        isinstance(s, int) and s > 0 for s in spatial) else None)  # fmt: skip
    if roi is None and isinstance(spatial, list) and any(isinstance(s, str) for s in spatial):
        raise BundleError(
            f"{src}: the metadata's patch shape {spatial} is symbolic and inference.json has no SlidingWindowInferer "
            "with a plain roi_size, so ModelSelector cannot choose a patch size; give the inferer a roi_size."
        )
    labels = _labels_from_format(ndf, task_type)
    if kept is not None:  # KeepLargestConnectedComponentd: its labels, or every foreground label
        inferer["keep_largest_component"] = kept or [int(lb["value"]) for lb in labels]
    if not labels and runtime_class(task_type).labels_required:
        raise BundleError(
            f"{src / METADATA_FILE}: network_data_format.outputs.pred has no channel_def (nor num_channels > 1), so "
            'the bundle\'s labels are unknown; add channel_def, e.g. {"0": "background", "1": "spleen"}.'
        )
    card = ModelCard(
        name=safe_name(name or existing.get("name") or meta.get("name") or src.name),
        version=safe_name(str(meta.get("version", "0.0.1"))),
        task_type=task_type, modality=modality, body_region=body_region, labels=labels, input_channels=1,
        spatial_dims=dims, roi_size=roi, target_spacing=pre["target_spacing"], intensity=pre["intensity"],
        inference=inferer or None, training_data=str(meta.get("data_source", "")),
        license=str(meta.get("license") or ""), code_version=f"{IMPORTED_CODE_VERSION}{meta.get('monai_version', '?')}",
    )  # fmt: skip
    try:
        card.validate()
    except BundleError as e:
        raise BundleError(f"{src / METADATA_FILE}: the card made from the metadata is invalid: {e}") from None
    instantiate_network(src, config, trust=trust)
    return card


def is_standard_monai_bundle(path: PathLike) -> bool:
    """True when ``path`` holds a bundle's ``metadata.json`` without a ``"modelselector"`` block."""
    try:
        return "modelselector" not in read_metadata(path)
    except BundleError:
        return False
