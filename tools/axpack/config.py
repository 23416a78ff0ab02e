"""Load, resolve and write Axolotl configs.

``resolve`` applies overrides (``key=value``, dotted for nesting, e.g.
``datasets.0.path=...``) on a loaded YAML and returns a plain dict;
``write_resolved`` writes it next to the run's outputs so the exact config
Axolotl ran is kept. Writing ``max_steps`` into the resolved YAML closes
Axolotl's hole where a command-line ``--max_steps`` is dropped under
``strict: true`` when the YAML has no ``max_steps`` key.

The questions several commands ask of a config live here once:
:func:`stage_of`, :func:`has_eval_set`, :func:`dataset_entries` (every
``datasets``/``test_datasets`` entry) and :func:`template_text` (the chat
template's Jinja text).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from .errors import AxpackError
from .fsutil import atomic_write_text


def load_config(path: str | Path) -> dict[str, Any]:
    """Read an Axolotl YAML into a dict.

    Raises:
        AxpackError: the file is missing, is not valid YAML (with file:line),
            or its top level is not a mapping.
    """
    path = Path(path)
    if not path.is_file():
        raise AxpackError(f"{path}: config file not found; pass a path like configs/<model>/<stage>-<method>.yaml")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise AxpackError(f"{where}: invalid YAML ({problem}); fix the syntax") from None
    except UnicodeDecodeError:
        raise AxpackError(f"{path}: not UTF-8 text; save the config as UTF-8") from None
    if not isinstance(data, dict):
        raise AxpackError(f"{path}: top level must be a mapping of Axolotl keys, got {type(data).__name__}")
    return data


def parse_value(text: str) -> Any:
    """Parse an override value the way YAML would (``3`` -> int, ``false`` -> bool).

    PyYAML follows YAML 1.1, where ``2e-4`` (no dot) is a *string*; users
    write learning rates that way, so a string that parses as a float is one.
    """
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    return value


def set_dotted(cfg: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``cfg[a][b][0]...`` from ``"a.b.0"``; list indices are integers.

    Raises:
        AxpackError: a path element does not exist or indexes a non-container.
    """
    parts = dotted.split(".")
    node: Any = cfg
    for i, part in enumerate(parts[:-1]):
        key: Any = int(part) if isinstance(node, list) and part.isdigit() else part
        try:
            node = node[key]
        except (KeyError, IndexError, TypeError):
            where = ".".join(parts[: i + 1])
            raise AxpackError(f"override {dotted}: {where} does not exist in the config") from None
    last = parts[-1]
    if isinstance(node, list):
        if not last.isdigit() or int(last) >= len(node):
            raise AxpackError(f"override {dotted}: {last} is not an index of the list")
        node[int(last)] = value
    elif isinstance(node, dict):
        if value is None:
            node.pop(last, None)
        else:
            node[last] = value
    else:
        raise AxpackError(f"override {dotted}: parent is not a mapping or list")


def resolve(path: str | Path, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Load ``path`` and apply ``overrides`` (dotted key -> value; ``None`` deletes)."""
    cfg = load_config(path)
    for key, value in (overrides or {}).items():
        set_dotted(cfg, key, value)
    return cfg


def parse_overrides(items: tuple[str, ...] | list[str]) -> dict[str, Any]:
    """Turn ``["a=1", "b.c=x"]`` into ``{"a": 1, "b.c": "x"}``.

    Raises:
        AxpackError: an item has no ``=``.
    """
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise AxpackError(f"--set {item}: expected KEY=VALUE, e.g. --set micro_batch_size=1")
        key, _, value = item.partition("=")
        out[key.strip()] = parse_value(value)
    return out


def write_resolved(cfg: dict[str, Any], path: str | Path) -> Path:
    """Write the resolved config as YAML (atomic), keys in their given order."""
    text = "# written by axpack: the exact config Axolotl ran (overrides applied)\n"
    text += yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True)
    return atomic_write_text(path, text)


def stage_of(cfg: dict[str, Any]) -> str:
    """``"dpo"`` when the config sets ``rl`` (dpo/ipo/kto/orpo...), else ``"sft"``."""
    return "dpo" if cfg.get("rl") else "sft"


def key_lines(path: str | Path) -> dict[str, int]:
    """Map every key of a YAML config to its 1-based line: ``{"lora_r": 12,
    "datasets.0.path": 20, ...}`` (list items by index, as in overrides).

    A list item itself maps to the line of its ``-``. Used by ``axpack
    validate`` to print ``file:line: key: ...``. Returns ``{}`` when the file
    does not parse (``load_config`` reports that).
    """
    try:
        root = yaml.compose(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return {}
    lines: dict[str, int] = {}
    _walk_keys(root, "", lines, [])
    return lines


def duplicate_keys(path: str | Path) -> list[tuple[str, int, int]]:
    """Keys written twice in one mapping: ``[(dotted key, first line, second
    line), ...]``. PyYAML keeps the last value without a word, so a pasted
    second ``lora_r`` silently wins; ``axpack validate`` reports it."""
    try:
        root = yaml.compose(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return []
    dups: list[tuple[str, int, int]] = []
    _walk_keys(root, "", {}, dups)
    return dups


def _walk_keys(node: Any, prefix: str, lines: dict[str, int], dups: list[tuple[str, int, int]]) -> None:
    """Fill ``lines`` (first line of each dotted key) and ``dups`` from a composed YAML node."""
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = f"{prefix}{key_node.value}"
            line = key_node.start_mark.line + 1
            if key in lines:
                dups.append((key, lines[key], line))
            else:
                lines[key] = line
            _walk_keys(value_node, key + ".", lines, dups)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            key = f"{prefix}{i}"
            lines.setdefault(key, item.start_mark.line + 1)
            _walk_keys(item, key + ".", lines, dups)


def line_of(lines: dict[str, int], key: str) -> int:
    """The line of ``key`` or of its nearest existing parent (``datasets.0.x``
    -> ``datasets.0`` -> ``datasets``); 1 when none is in the file."""
    parts = key.split(".")
    while parts:
        dotted = ".".join(parts)
        if dotted in lines:
            return lines[dotted]
        parts.pop()
    return 1


# ---- questions every command asks of a config -------------------------------------
DATASET_KEYS = ("datasets", "test_datasets")


def dataset_entries(cfg: dict[str, Any], keys: tuple[str, ...] = DATASET_KEYS) -> Iterator[tuple[str, int, dict]]:
    """``(key, index, entry)`` for every mapping under ``datasets`` and ``test_datasets`` (or ``keys``).

    The index counts every list item, mappings or not, so ``f"{key}.{index}"``
    is the dotted key :func:`key_lines` and overrides use. Missing or empty
    lists yield nothing.
    """
    for key in keys:
        for i, entry in enumerate(cfg.get(key) or []):
            if isinstance(entry, dict):
                yield key, i, entry


def has_eval_set(cfg: dict[str, Any]) -> bool:
    """True when Axolotl builds an eval set: ``test_datasets`` listed, or a numeric ``val_set_size`` > 0.

    Axolotl 0.21 splits an eval set off the training data only for
    ``val_set_size > 0`` (axolotl/utils/data/shared.py
    ``create_train_validation_split``) and otherwise evaluates on
    ``test_datasets``; with neither, eval keys (``eval_steps``,
    ``evals_per_epoch`` ...) have nothing to evaluate. A ``val_set_size``
    written as a string (``5e-2``, YAML 1.1 text) counts as none; validate's
    ``float-as-string`` pitfall reports it.
    """
    val = cfg.get("val_set_size") or 0
    return bool(cfg.get("test_datasets")) or (isinstance(val, (int, float)) and val > 0)


def template_text(cfg: dict[str, Any]) -> str | None:
    """The Jinja text of the config's chat template, when axpack can know it without the model.

    ``chat_template_jinja`` (a file path, or the template text itself, as
    Axolotl's ``get_chat_template`` reads it), else an Axolotl named template
    (``chat_template: chatml`` ...) read from the installed Axolotl's
    ``utils/chat_templates/templates/<name>.jinja`` — where Axolotl 0.21's
    ``get_chat_template`` loads them — without importing Axolotl. None for
    the tokenizer's own template (``tokenizer_default*``), an unknown name,
    or no Axolotl installed. Never raises for a missing file: the template
    text is then the value itself, as in Axolotl.
    """
    jinja = cfg.get("chat_template_jinja")
    if jinja:
        text = str(jinja)
        p = Path(text)
        return p.read_text(encoding="utf-8") if len(text) < 4096 and "\0" not in text and p.is_file() else text
    name = str(cfg.get("chat_template") or "")
    # tokenizer_default*: the tokenizer's own template, no text without the model
    if not name or name == "jinja" or name.startswith("tokenizer_default") or not re.fullmatch(r"[\w.-]+", name):
        return None
    from importlib.util import find_spec

    spec = find_spec("axolotl")
    for loc in (spec.submodule_search_locations or []) if spec else []:
        f = Path(loc) / "utils" / "chat_templates" / "templates" / f"{name}.jinja"
        if f.is_file():
            return f.read_text(encoding="utf-8")
    return None
