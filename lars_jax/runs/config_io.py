"""Config dataclasses <-> command lines, TOML/JSON files and text values.

The command line (:mod:`lars_jax.runs.cli`) and the sweep runner (:mod:`lars_jax.runs.sweep`)
work on any flat dataclass whose fields carry ``metadata={"help": ...}``, such as
:class:`lars_jax.train.TrainConfig`. This module holds what they share:

* :func:`field_specs` describes each field: its scalar type, whether ``None`` is
  allowed, its choices and its help text. Choices come from the field's type (a
  ``Literal`` or an ``Enum``) or, for names kept in a registry (models, data sets), from
  ``metadata["choices"]``.
* :func:`coerce` turns a value read from a file or typed on a command line into the
  field's type, with a ``ValueError`` naming the field when it cannot.
* :func:`load_config_file` reads TOML (``tomllib``) or JSON, :func:`to_toml` writes
  the flat TOML that :func:`load_config_file` reads back.

References:
  TOML v1.0.0 specification, https://toml.io/en/v1.0.0 (2021).
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import json
import math
import os
import textwrap
import tomllib
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

PathLike = str | os.PathLike[str]
_NONE_WORDS = ("none", "null")
_TRUE_WORDS = ("true", "yes", "on", "1")
_FALSE_WORDS = ("false", "no", "off", "0")

# Tables of a config file that are not config fields.
SWEEP_TABLE = "sweep"


class FieldSpec(NamedTuple):
    """How one config field is typed and documented.

    Attributes:
      name: the field's name.
      type: the scalar type: ``bool``, ``int``, ``float``, ``str``, an ``enum.Enum``
        subclass, or ``list`` for sequence fields.
      optional: whether ``None`` is allowed (``int | None`` and the like).
      choices: the allowed values when the config documents them, else ``None``.
      help: the help text from ``metadata["help"]``.
      default: the default value (``dataclasses.MISSING`` when there is none).
    """

    name: str
    type: type
    optional: bool
    choices: tuple[Any, ...] | None
    help: str
    default: Any


def field_specs(cls: type) -> list[FieldSpec]:
    """Describes the fields of a config dataclass, in declaration order.

    Args:
      cls: a dataclass type whose fields are bool, int, float, str, an Enum, a
        ``Literal``, a list/tuple of those, or any of them ``| None``.

    Returns:
      One :class:`FieldSpec` per field.

    Raises:
      TypeError: ``cls`` is not a dataclass, or a field has an unsupported type.
    """
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"cls: {cls!r} is not a dataclass")
    hints = typing.get_type_hints(cls)
    specs = []
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        optional = False
        choices = f.metadata.get("choices")
        origin = typing.get_origin(tp)
        if origin in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(tp) if a is not type(None)]
            optional = len(args) < len(typing.get_args(tp))
            if len(args) != 1:
                raise TypeError(f"{cls.__name__}.{f.name}: unsupported type {tp}")
            tp = args[0]
            origin = typing.get_origin(tp)
        if origin is typing.Literal:
            choices = choices or typing.get_args(tp)
            tp = type(typing.get_args(tp)[0])
        elif origin in (list, tuple) or tp in (list, tuple):
            tp = list
        elif isinstance(tp, type) and issubclass(tp, enum.Enum):
            choices = choices or tuple(m.value for m in tp)
        elif tp not in (bool, int, float, str):
            raise TypeError(f"{cls.__name__}.{f.name}: unsupported type {tp}")
        default = f.default
        if default is dataclasses.MISSING and f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        specs.append(
            FieldSpec(
                name=f.name,
                type=tp,
                optional=optional,
                choices=tuple(choices) if choices is not None else None,
                help=str(f.metadata.get("help", "")),
                default=default,
            )
        )
    return specs


def spec_by_name(cls: type) -> dict[str, FieldSpec]:
    """:func:`field_specs` as a dict keyed by field name."""
    return {s.name: s for s in field_specs(cls)}


def unknown_field_error(cls: type, name: str) -> ValueError:
    """A ValueError for an unknown field name, suggesting close matches."""
    names = [f.name for f in dataclasses.fields(cls)]
    close = difflib.get_close_matches(name, names, n=3)
    hint = f" (did you mean {' or '.join(close)}?)" if close else ""
    return ValueError(f"{cls.__name__} has no field {name!r}{hint}")


def coerce(spec: FieldSpec, value: Any, *, cls_name: str = "config",
           from_text: bool = True) -> Any:
    """Converts a value from a file or a command line to the field's type.

    Strings are parsed (``"none"`` for optional fields, ``true``/``false`` for
    booleans, numbers for numeric fields); integers are accepted for float
    fields and integral floats for int fields. With ``from_text=False`` (values
    typed by a TOML/JSON parser) a string is refused for a number or a boolean:
    ``batch_size = "64"`` in a config file is an error, not 64. Choices are *not* enforced here
    (the config's own ``validate()`` does that, with the config's message).

    Args:
      spec: the field's description.
      value: the value to convert.
      cls_name: the config's class name, used in error messages.

    Returns:
      The converted value.

    Raises:
      ValueError: the value does not fit the field's type; the message names
        the field.

    Example:
      >>> from dataclasses import dataclass
      >>> @dataclass
      ... class C:
      ...   n: int | None = None
      ...   lr: float = 0.1
      >>> s = spec_by_name(C)
      >>> coerce(s["n"], "none"), coerce(s["n"], "8"), coerce(s["lr"], 1), coerce(s["lr"], "2e-3")
      (None, 8, 1.0, 0.002)
    """
    where = f"{cls_name}.{spec.name}"

    def fail(why: str) -> ValueError:
        return ValueError(f"{where}={value!r}: {why}")

    if value is None or (
        isinstance(value, str) and spec.optional and value.strip().lower() in _NONE_WORDS
    ):
        if spec.optional:
            return None
        raise fail(f"must be a {spec.type.__name__} (None is not allowed)")
    tp = spec.type
    if not from_text and isinstance(value, str) and tp in (bool, int, float):
        kind = {bool: "true or false", int: "an integer", float: "a number"}[tp]
        raise fail(f"must be {kind}, not a string (write it without quotes)")
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE_WORDS + _FALSE_WORDS:
            return value.strip().lower() in _TRUE_WORDS
        raise fail("must be true or false")
    if tp is int:
        if isinstance(value, bool):
            raise fail("must be an integer")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.strip().replace("_", ""))
            except ValueError:
                try:
                    f = float(value)
                except ValueError:
                    f = math.nan
                if math.isfinite(f) and f.is_integer():
                    return int(f)
        raise fail("must be an integer")
    if tp is float:
        if isinstance(value, bool):
            raise fail("must be a number")
        if isinstance(value, int | float):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value.strip())
            except ValueError:
                pass
        raise fail("must be a number")
    if tp is str:
        if isinstance(value, str):
            return value
        raise fail("must be a string")
    if tp is list:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                try:
                    value = json.loads(text)
                except json.JSONDecodeError as e:
                    raise fail(f"not a JSON list: {e}") from e
            else:
                value = [v.strip() for v in text.split(",") if v.strip()]
        if isinstance(value, list | tuple):
            return list(value)
        raise fail("must be a list")
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        if isinstance(value, tp):
            return value
        try:
            return tp(value)
        except ValueError as e:
            raise fail(f"must be one of {', '.join(str(m.value) for m in tp)}") from e
    raise fail(f"unsupported field type {tp}")  # pragma: no cover (field_specs rejects it)


def coerce_dict(cls: type, values: Mapping[str, Any]) -> dict[str, Any]:
    """Coerces every value of a ``{field: value}`` mapping read from a config file
    (typed values: ``from_text=False``); unknown keys raise.

    Args:
      cls: the config dataclass.
      values: field name -> raw value.

    Returns:
      field name -> value of the field's type.

    Raises:
      ValueError: an unknown field (with suggestions) or a value of the wrong type.
    """
    specs = spec_by_name(cls)
    out = {}
    for key, value in values.items():
        name = key.replace("-", "_")
        if name not in specs:
            raise unknown_field_error(cls, key)
        out[name] = coerce(specs[name], value, cls_name=cls.__name__, from_text=False)
    return out


def load_config_file(path: PathLike) -> dict[str, Any]:
    """Reads a TOML or JSON config file into a dict.

    The format follows the extension (``.toml`` or ``.json``; anything else is
    tried as TOML, then JSON). Config fields are top-level keys; a ``[train]``
    table, when present, is merged in as well, so both layouts work. A
    ``[sweep]`` table (``out`` and a ``[sweep.grid]`` table) is kept under the key
    ``"sweep"`` for ``lars-jax sweep``.

    Args:
      path: the file.

    Returns:
      The file's content with any ``train`` table flattened into the top level.

    Raises:
      ValueError: the file does not exist or cannot be parsed (message names the file).
    """
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise ValueError(f"config file {str(p)!r}: {e.strerror or e}") from e
    data: Any
    suffix = p.suffix.lower()
    try:
        if suffix == ".json":
            data = json.loads(text)
        elif suffix == ".toml":
            data = tomllib.loads(text)
        else:
            try:
                data = tomllib.loads(text)
            except tomllib.TOMLDecodeError:
                data = json.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"config file {str(p)!r}: cannot parse: {e}") from e
    if not isinstance(data, dict):
        raise ValueError(f"config file {str(p)!r}: must hold a table/object of settings")
    train = data.pop("train", None)
    if train is not None:
        if not isinstance(train, dict):
            raise ValueError(f"config file {str(p)!r}: [train] must be a table")
        data.update(train)
    return data


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, enum.Enum):
        return _toml_value(value.value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, Sequence):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} {value!r} as TOML")


def to_toml(
    values: Mapping[str, Any], *, comments: Mapping[str, str] | None = None, _prefix: str = ""
) -> str:
    """Writes a flat mapping (plus one level of tables) as TOML.

    ``None`` has no TOML spelling: such keys are written commented out
    (``# key = none``), which leaves the field at its default, ``None``, on reading.

    Args:
      values: key -> scalar, list, or mapping (written as a ``[table]``, nested
        mappings as ``[table.sub]``).
      comments: key -> a comment written on the line above the key.

    Returns:
      TOML text that ``tomllib`` reads back to the same values.

    Example:
      >>> print(to_toml({"model": "resnet20", "epochs": 2.0, "data_dir": None}), end="")
      model = "resnet20"
      epochs = 2.0
      # data_dir = none
    """
    comments = comments or {}
    lines: list[str] = []
    tables = {k: v for k, v in values.items() if isinstance(v, Mapping)}
    for key, value in values.items():
        if key in tables:
            continue
        if key in comments and comments[key]:
            lines.extend("# " + line for line in textwrap.wrap(comments[key], 96))
        lines.append(f"# {key} = none" if value is None else f"{key} = {_toml_value(value)}")
    for key, table in tables.items():
        lines.append("")
        lines.append(f"[{_prefix}{key}]")
        sub = to_toml(table, _prefix=f"{_prefix}{key}.").rstrip("\n")
        if sub:
            lines.append(sub)
    return "\n".join(lines).lstrip("\n") + "\n"
