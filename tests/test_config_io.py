"""lars_jax.runs.config_io: values typed on a command line or read from TOML/JSON files."""

from __future__ import annotations

import dataclasses

import pytest

from lars_jax.runs.config_io import coerce, load_config_file
from lars_jax.train.config import TrainConfig, field_meta


def test_coerce_rules():
    s = field_meta()
    assert coerce(s["num_devices"], "NONE") is None
    assert coerce(s["batch_size"], 256.0) == 256
    with pytest.raises(ValueError, match=r"TrainConfig.batch_size=2.5: must be an integer"):
        coerce(s["batch_size"], 2.5)
    with pytest.raises(ValueError, match="None is not allowed"):
        coerce(s["batch_size"], None)
    with pytest.raises(ValueError, match="true or false"):
        coerce(s["flip"], "maybe")
    assert coerce(s["flip"], "off") is False
    assert coerce(s["norm"], "none") == "none"  # a choice, not None: norm is not optional
    assert len(s) == len(dataclasses.fields(TrainConfig))


def test_load_config_file_errors(tmp_path):
    p = tmp_path / "x.yaml"
    p.write_text('{"seed": 3}')  # unknown extension: TOML, then JSON
    assert load_config_file(p) == {"seed": 3}
    p.write_text("[1, 2]")
    with pytest.raises(ValueError, match="cannot parse|table/object"):
        load_config_file(p)
