"""The trust check of bundle configs: what a MONAI config may construct or evaluate without ``--trust``.

Configs are parsed with :class:`monai.bundle.ConfigParser`. Before anything is instantiated, every
``_target_`` and every ``$``-expression is checked: code outside ``monai.`` and ``torch.`` is refused with
:class:`~ModelSelectorLib.errors.BundleError` unless the caller passes ``trust=True``. The check is a static
guard against surprises in downloaded bundles, not a sandbox.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from typing import Any, Optional

from ..errors import BundleError

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
