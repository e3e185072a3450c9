"""lars_jax.runs.run_files: one JSON encoding (NaN/Inf -> null) and one JSON Lines policy."""

import json
import math

import numpy as np
import pytest

from lars_jax.runs.run_files import (
    append_jsonl,
    dumps,
    read_json,
    read_jsonl,
    to_jsonable,
    write_json,
    write_jsonl,
)


def test_read_jsonl_drops_only_an_unterminated_last_line(tmp_path):
    p = tmp_path / "m.jsonl"
    p.write_text('{"a": 1}\n\n{"a": 2}\n{"a": ')  # killed while writing the third row
    assert read_jsonl(p) == [{"a": 1}, {"a": 2}]


@pytest.mark.parametrize("text, line", [
    ('{"a": 1}\n{"a": \n{"a": 2}\n', 2),   # a bad line in the middle
    ('{"a": 1}\n{"a": \n', 2),             # a bad last line that was written completely
    ('{"a": 1}\n[1, 2]\n', 2),             # valid JSON but not a row
])
def test_read_jsonl_names_any_other_bad_line(tmp_path, text, line):
    p = tmp_path / "m.jsonl"
    p.write_text(text)
    with pytest.raises(ValueError, match=rf"m.jsonl: line {line} "):
        read_jsonl(p)


def test_read_jsonl_missing_file_raises(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_jsonl(tmp_path / "none.jsonl")


def test_non_finite_floats_are_written_as_null_in_strict_json(tmp_path):
    row = {"loss": float("nan"), "up": np.float32("inf"), "down": -math.inf,
           "arr": np.array([1.5, np.nan]), "n": np.int64(3), "ok": True, "s": "x"}
    want = {"loss": None, "up": None, "down": None, "arr": [1.5, None], "n": 3, "ok": True,
            "s": "x"}
    assert to_jsonable(row) == want
    assert json.loads(dumps(row)) == want  # parses with a strict parser: no NaN tokens
    assert "NaN" not in dumps(row) and "Infinity" not in dumps(row)
    write_json(tmp_path / "s.json", row)
    assert read_json(tmp_path / "s.json") == want
    append_jsonl(tmp_path / "r.jsonl", row)
    append_jsonl(tmp_path / "r.jsonl", {"step": 2}, sync=True)
    assert read_jsonl(tmp_path / "r.jsonl") == [want, {"step": 2}]
    write_jsonl(tmp_path / "r.jsonl", [{"step": 1}])
    assert (tmp_path / "r.jsonl").read_text() == '{"step": 1}\n'


def test_unknown_objects_are_an_error_not_a_string():
    with pytest.raises(TypeError, match="cannot write a object"):
        to_jsonable({"x": object()})


def test_read_json_names_a_broken_file(tmp_path):
    (tmp_path / "s.json").write_text('{"a": ')
    with pytest.raises(ValueError, match="s.json: not valid JSON"):
        read_json(tmp_path / "s.json")
