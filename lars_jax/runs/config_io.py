"""`TrainConfig` <-> command lines, TOML/JSON files and text values.

The command line (:mod:`lars_jax.runs.cli`) and the sweep (:mod:`lars_jax.runs.sweep`)
share what is here: :func:`field_specs` (each field's scalar type, whether ``None`` is
allowed, its choices, help and default, read from the field's declarations in
`lars_jax.train.config`), :func:`coerce` (a value from a file or a command line to the
field's type, or a `ConfigError` naming the field), :func:`load_config_file` (TOML or JSON)
and :func:`to_toml` (the flat TOML that :func:`load_config_file` reads back).

References:
  TOML v1.0.0 specification, https://toml.io/en/v1.0.0 (2021).
"""

from __future__ import annotations

import difflib
import json
import math
import os
import textwrap
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lars_jax.runs.errors import ConfigError

if TYPE_CHECKING:  # the config module is imported lazily (it imports the models)
    from lars_jax.train.config import FieldMeta as FieldSpec

PathLike = str | os.PathLike[str]
_TRUE_WORDS = ("true", "yes", "on", "1")
_FALSE_WORDS = ("false", "no", "off", "0")
SWEEP_TABLE = "sweep"  # the table of a config file that is not config fields


def field_specs(cls: type | None = None) -> list[FieldSpec]:
    """The declarations of `TrainConfig`'s fields (the only config class), in order.

    Raises:
      TypeError: `cls` is another class.
    """
    from lars_jax.train.config import TrainConfig, field_meta

    if cls not in (None, TrainConfig):
        raise TypeError(f"cls: {cls!r} is not TrainConfig")
    return list(field_meta().values())


def spec_by_name(cls: type | None = None) -> dict[str, FieldSpec]:
    """:func:`field_specs` as a dict keyed by field name."""
    return {s.name: s for s in field_specs(cls)}


def unknown_field_error(cls: type | None, name: str) -> ConfigError:
    """A ConfigError for an unknown field name, suggesting close matches."""
    close = difflib.get_close_matches(name, list(spec_by_name(cls)), n=3)
    hint = f" (did you mean {' or '.join(close)}?)" if close else ""
    return ConfigError(f"TrainConfig has no field {name!r}{hint}")


def coerce(spec: FieldSpec, value: Any, *, cls_name: str = "TrainConfig",
           from_text: bool = True) -> Any:
    """Converts a value from a file or a command line to the field's type.

    Strings are parsed (``"none"``/``"null"`` for optional fields, ``true``/``false``, yes/no,
    on/off for booleans, numbers for numeric fields); integers are accepted for float
    fields and integral floats for int fields. With ``from_text=False`` (values typed by a
    TOML/JSON parser) a string is refused for a number or a boolean: ``batch_size = "64"``
    in a config file is an error, not 64. Choices are checked by `TrainConfig.validate`.

    Raises:
      ConfigError: the value does not fit the field's type; the message names the field.

    Example:
      >>> s = spec_by_name()
      >>> coerce(s["num_devices"], "none"), coerce(s["num_devices"], "8")
      (None, 8)
      >>> coerce(s["learning_rate"], 1), coerce(s["learning_rate"], "2e-3")
      (1.0, 0.002)
    """
    tp, text = spec.type, value.strip().lower() if isinstance(value, str) else None

    def fail(why: str) -> ConfigError:
        return ConfigError(f"{cls_name}.{spec.name}={value!r}: {why}")

    if value is None or (spec.optional and text in ("none", "null")):
        if spec.optional:
            return None
        raise fail(f"must be a {tp.__name__} (None is not allowed)")
    if text is not None and tp is not str and not from_text:
        kind = {bool: "true or false", int: "an integer", float: "a number"}[tp]
        raise fail(f"must be {kind}, not a string (write it without quotes)")
    if tp is bool:
        if isinstance(value, bool) or text in _TRUE_WORDS + _FALSE_WORDS:
            return value if isinstance(value, bool) else text in _TRUE_WORDS
        raise fail("must be true or false")
    if tp is str:
        if text is None:
            raise fail("must be a string")
        return value
    number = _number(value.replace("_", "") if text is not None else value)
    if tp is float and number is not None:
        return float(number)
    if tp is int and number is not None and math.isfinite(number) and number == int(number):
        return int(number)
    raise fail("must be an integer" if tp is int else "must be a number")


def _number(value: Any) -> int | float | None:
    """`value` as a number (a bool or an unparsable string: None)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return value
    for parse in (int, float):
        try:
            return parse(value)
        except (TypeError, ValueError):
            pass
    return None


def coerce_dict(cls: type | None, values: Mapping[str, Any]) -> dict[str, Any]:
    """Coerces every value of a ``{field: value}`` mapping read from a config file
    (``from_text=False``); unknown keys raise `ConfigError` with suggestions."""
    specs, out = spec_by_name(cls), {}
    for key, value in values.items():
        name = key.replace("-", "_")
        if name not in specs:
            raise unknown_field_error(cls, key)
        out[name] = coerce(specs[name], value, from_text=False)
    return out


def load_config_file(path: PathLike) -> dict[str, Any]:
    """Reads a TOML or JSON config file into a dict.

    The format follows the extension (``.toml`` or ``.json``; anything else is tried as
    TOML, then JSON). Config fields are top-level keys; a ``[train]`` table, when present,
    is merged in as well. A ``[sweep]`` table (``out`` and ``[sweep.grid]``) is kept under
    the key ``"sweep"`` for ``lars-jax sweep``.

    Raises:
      ConfigError: the file does not exist or cannot be parsed (message names the file).
    """
    p = Path(path)
    where = f"config file {str(p)!r}"
    try:
        text = p.read_text()
    except OSError as e:
        raise ConfigError(f"{where}: {e.strerror or e}") from e
    try:
        if p.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            try:
                data = tomllib.loads(text)
            except tomllib.TOMLDecodeError:
                if p.suffix.lower() == ".toml":
                    raise
                data = json.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"{where}: cannot parse: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: must hold a table/object of settings")
    train = data.pop("train", {})
    if not isinstance(train, dict):
        raise ConfigError(f"{where}: [train] must be a table")
    return {**data, **train}


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else "inf" if value > 0 else "-inf"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} {value!r} as TOML")


def to_toml(values: Mapping[str, Any], *, comments: Mapping[str, str] | None = None,
            _prefix: str = "") -> str:
    """Writes a flat mapping (plus tables: ``[table]``, ``[table.sub]``) as TOML.

    ``None`` has no TOML spelling: such keys are written commented out (``# key = none``),
    which leaves the field at its default, ``None``, on reading. `comments`: key -> a
    comment written above the key.

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
        if key not in tables:
            lines += ["# " + line for line in textwrap.wrap(comments.get(key) or "", 96)]
            lines.append(f"# {key} = none" if value is None else f"{key} = {_toml_value(value)}")
    for key, table in tables.items():
        lines += ["", f"[{_prefix}{key}]"]
        sub = to_toml(table, _prefix=f"{_prefix}{key}.").rstrip("\n")
        lines += [sub] if sub else []
    return "\n".join(lines).lstrip("\n") + "\n"
