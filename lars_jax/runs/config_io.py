"""`TrainConfig` <-> text: the one typing of values from a command line, a sweep grid or a
TOML/JSON config file, for :mod:`lars_jax.runs.cli` and :mod:`lars_jax.runs.sweep` (the
fields' declarations live in `lars_jax.train.config`).

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
from typing import Any

from lars_jax.runs.errors import ConfigError
from lars_jax.train.config import FieldMeta, field_meta

SWEEP_TABLE = "sweep"  # the table of a config file that is not config fields
_BOOL_WORDS = {"true": True, "yes": True, "on": True, "1": True,
               "false": False, "no": False, "off": False, "0": False}
_TYPE_WORDS = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def field_name(key: str) -> str:
    """A config file's, a flag's or a grid's key as a field name (``-`` read as ``_``); an
    unknown key raises `ConfigError` with the close matches."""
    name, names = key.replace("-", "_"), list(field_meta())
    if name not in names:
        close = difflib.get_close_matches(name, names, n=3)
        hint = f" (did you mean {' or '.join(close)}?)" if close else ""
        raise ConfigError(f"TrainConfig has no field {key!r}{hint}")
    return name


def coerce(spec: FieldMeta, value: Any, *, from_text: bool = True) -> Any:
    """A value as the field's type, or a `ConfigError` naming the field: text from a command
    line (``none`` for optional fields; true/false, yes/no, on/off; numbers) or a value read
    from a config file. Integers are accepted for float fields and integral floats for int
    fields; with ``from_text=False`` (typed by a TOML/JSON parser) a string is refused for a
    number or a boolean (``batch_size = "64"`` is an error, not 64). `TrainConfig.validate`
    checks choices and ranges.

    Example:
      >>> s = field_meta()
      >>> coerce(s["num_devices"], "none"), coerce(s["num_devices"], "8")
      (None, 8)
      >>> coerce(s["learning_rate"], 1), coerce(s["learning_rate"], "2e-3")
      (1.0, 0.002)
    """
    tp, text = spec.type, value.strip().lower() if isinstance(value, str) else None
    must = f"must be {_TYPE_WORDS[tp]}"

    def fail(why: str) -> ConfigError:
        return ConfigError(f"TrainConfig.{spec.name}={value!r}: {why}")

    if value is None or (spec.optional and text in ("none", "null")):
        if spec.optional:
            return None
        raise fail(f"{must} (None is not allowed)")
    if tp is str:
        if text is None:
            raise fail(must)
        return value
    if text is not None and not from_text:
        raise fail(f"{must}, not a string (write it without quotes)")
    if tp is bool:
        if isinstance(value, bool) or text in _BOOL_WORDS:
            return _BOOL_WORDS.get(text, value)
        raise fail(must)
    number = value
    if text is not None:
        try:  # int() first: a large integer stays exact
            number = int(text) if text.replace("_", "").lstrip("+-").isdigit() else float(text)
        except ValueError:
            raise fail(must) from None
    if isinstance(number, bool) or not isinstance(number, int | float):
        raise fail(must)
    if tp is float or (math.isfinite(number) and number == int(number)):
        return tp(number)  # a float, or an integral number as an int
    raise fail(must)


def coerce_dict(values: Mapping[str, Any], *, from_text: bool = False) -> dict[str, Any]:
    """``{field: value}`` typed by `coerce` (``from_text=False``: a config file's); unknown
    keys raise `ConfigError` with suggestions."""
    specs = {key: field_meta()[field_name(key)] for key in values}
    return {specs[k].name: coerce(specs[k], v, from_text=from_text) for k, v in values.items()}


def load_config_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A TOML or JSON config file (by its extension; another is tried as TOML, then JSON) as
    a dict of the top-level keys and those of a ``[train]`` table; a ``[sweep]`` table is
    kept under ``"sweep"``. A missing or unparsable file raises `ConfigError` naming it."""
    where = f"config file {str(path)!r}"
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"{where}: {e.strerror or e}") from e
    except UnicodeDecodeError as e:  # binary garbage, or another encoding
        raise ConfigError(f"{where}: not UTF-8 text (byte {e.start}: {e.reason}); a config "
                          "file is TOML or JSON") from e
    parsers = {".json": [json.loads], ".toml": [tomllib.loads]}.get(
        Path(path).suffix.lower(), [tomllib.loads, json.loads])
    for parse in parsers:
        try:
            data = parse(text)
            break
        except ValueError as e:  # TOMLDecodeError and JSONDecodeError are ValueErrors
            error = e
    else:
        raise ConfigError(f"{where}: cannot parse: {error}") from error
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: must hold a table/object of settings")
    for table in ("train", SWEEP_TABLE):
        if not isinstance(data.get(table, {}), dict):
            raise ConfigError(f"{where}: [{table}] must be a table")
    train = data.pop("train", {})
    return {**data, **train}


def to_toml(values: Mapping[str, Any], *, comments: Mapping[str, str] | None = None) -> str:
    """Writes flat settings as TOML, each below its entry in `comments` (if any).

    ``None`` has no TOML spelling: such keys are written commented out (``# key = none``),
    which leaves the field at its default, ``None``, on reading.

    Example:
      >>> print(to_toml({"model": "resnet20", "epochs": 2.0, "data_dir": None}), end="")
      model = "resnet20"
      epochs = 2.0
      # data_dir = none
    """
    lines: list[str] = []
    for key, value in values.items():
        lines += ["# " + line for line in textwrap.wrap((comments or {}).get(key, ""), 96)]
        # a JSON bool, number or string is TOML too (NaN and infinities are refused)
        lines.append(f"# {key} = none" if value is None
                     else f"{key} = {json.dumps(value, allow_nan=False)}")
    return "\n".join(lines) + "\n"
