"""TrainConfig: defaults, round trip, help metadata, validation naming the field."""

import dataclasses

import pytest

from lars_jax.train import TrainConfig


def test_defaults_are_the_main_job_and_valid():
    c = TrainConfig()
    assert (c.model, c.dataset, c.optimizer) == ("resnet20", "fashion_mnist", "lars")
    c.validate()
    c.validate(device_count=1)


def test_every_field_has_default_and_help():
    for f in dataclasses.fields(TrainConfig):
        assert f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
        assert f.metadata.get("help"), f.name


def test_dict_and_json_round_trip():
    c = TrainConfig(batch_size=512, optimizer="clars", epochs=2.5, train_subset=1000)
    assert TrainConfig.from_dict(c.to_dict()) == c
    assert TrainConfig.from_json(c.to_json()) == c
    with pytest.raises(ValueError, match="bogus"):
        TrainConfig.from_dict({"bogus": 1})


@pytest.mark.parametrize(
    "changes, device_count, field",
    [
        ({"batch_size": 100}, 8, "batch_size"),
        ({"batch_size": 64, "grad_accum_steps": 3}, 1, "batch_size"),
        ({"model": "resnet7"}, None, "model"),
        ({"dataset": "no_such_data"}, None, "dataset"),
        ({"optimizer": "adam"}, None, "optimizer"),
        ({"learning_rate": -1.0}, None, "learning_rate"),
        ({"learning_rate": float("nan")}, None, "learning_rate"),
        ({"momentum": 1.0}, None, "momentum"),
        ({"label_smoothing": 1.0}, None, "label_smoothing"),
        ({"epochs": 0.0}, None, "epochs"),
        ({"warmup_epochs": 5.0, "epochs": 2.0}, None, "warmup_epochs"),
        ({"bn_span": "ghost", "bn_ghost_size": 24}, 8, "bn_ghost_size"),
        ({"bn_span": "sideways"}, None, "bn_span"),
        ({"dtype": "float16"}, None, "dtype"),
        ({"schedule": "exp"}, None, "schedule"),
        ({"optimizer": "clars", "clars_granularity": "device"}, 1, "clars_granularity"),
        ({"train_subset": 10}, None, "train_subset"),
    ],
)
def test_validate_names_the_field(changes, device_count, field):
    c = TrainConfig(**changes)
    with pytest.raises(ValueError, match=rf"TrainConfig\.{field}="):
        c.validate(device_count)
