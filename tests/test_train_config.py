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


def test_dict_round_trip():
    c = TrainConfig(batch_size=512, optimizer="clars", epochs=2.5, train_subset=1000)
    assert TrainConfig.from_dict(c.to_dict()) == c
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


# ----------------------------------------------------------------------------- bugs of issue 11


def test_mlperf_schedule_is_poly2_to_end_learning_rate():
    """--schedule mlperf: linear warmup from 0, then (peak - end)(1 - u)^2 + end (MLPerf).

    Before the fix the trainer had no branch for it and kept the peak rate after warmup.
    """
    from lars_jax.train.build import learning_rate_schedule

    cfg = TrainConfig(schedule="mlperf", learning_rate=0.5, batch_size=512, base_batch_size=256,
                      warmup_epochs=1.0, epochs=4.0, end_learning_rate=0.01)
    sched = learning_rate_schedule(cfg, 10, 40)  # 10 steps per epoch: warmup 10, total 40
    peak, end = 0.5 * 512 / 256, 0.01  # linear scaling
    for t, want in [(0, 0.0), (5, peak / 2), (10, peak), (25, (peak - end) * 0.25 + end),
                    (40, end), (60, end)]:
        assert float(sched(t)) == pytest.approx(want, rel=1e-6), t
    with pytest.raises(ValueError, match="TrainConfig.warmup_start='base'"):
        cfg.replace(warmup_start="base").validate()


def test_every_schedule_name_has_a_factory_and_unknown_names_raise():
    import typing

    from lars_jax.train.build import SCHEDULES, learning_rate_schedule
    from lars_jax.train.config import ScheduleName

    assert set(typing.get_args(ScheduleName)) == set(SCHEDULES) | {"onecycle", "mlperf"}
    with pytest.raises(ValueError, match="schedule"):
        TrainConfig(schedule="poly3").validate()
    with pytest.raises(ValueError, match="TrainConfig.schedule='poly3'"):  # even unvalidated
        learning_rate_schedule(dataclasses.replace(TrainConfig(), schedule="poly3"), 10, 40)


def test_dataset_choices_are_the_data_registry():
    """--dataset mnist used to pass validation and fail later, while loading."""
    from lars_jax.data import DATASET_NAMES
    from lars_jax.train.config import field_meta

    assert field_meta()["dataset"].choices == DATASET_NAMES
    with pytest.raises(ValueError, match=r"TrainConfig.dataset='mnist': must be one of"):
        TrainConfig(dataset="mnist").validate()
    for name in DATASET_NAMES:
        TrainConfig(dataset=name).validate()


def test_model_choices_are_the_model_registry():
    from lars_jax.models import MODEL_NAMES
    from lars_jax.train.config import field_meta

    assert field_meta()["model"].choices == tuple(MODEL_NAMES)
    with pytest.raises(ValueError, match=r"TrainConfig.model='resnet7'"):
        TrainConfig(model="resnet7").validate()


def test_field_kinds_are_declared_where_the_fields_are():
    """The fields whose change makes a checkpoint unusable, the cosmetic ones and the
    location, as the checkpoint, the rerun of a finished run and the sweep need them
    (the lists these replace, written out by hand)."""
    from lars_jax.train.config import fields_of_kind

    assert set(fields_of_kind("structural")) == {
        "model", "width", "norm", "dataset", "optimizer", "nesterov", "zero_init_last_bn",
        "denominator"}
    # issue 30: also where the data and the coordinator are, this process's id, the
    # checkpoint cadence and the permission to extend epochs (a workdir's run is its
    # structural and result fields); issue 28: the process count (a run resumes exactly with
    # another one)
    assert set(fields_of_kind("cosmetic")) == {
        "progress", "plot", "tensorboard", "resume", "extend_epochs", "data_dir",
        "input_threads", "coordinator_address", "process_id", "num_processes",
        "checkpoint_every_steps", "keep_checkpoints"}
    assert fields_of_kind("location") == ("workdir",)
    with pytest.raises(ValueError, match="kind='bogus'"):
        fields_of_kind("bogus")


def test_each_check_runs_once_per_config():
    """The command line, `train` and `build` each validate the same config: a warning is
    issued (and every check run) once, not once per call."""
    import warnings

    from lars_jax.runs.errors import ConfigWarning

    c = TrainConfig(optimizer="sgd", trust_coefficient=0.5)  # no effect with sgd: a warning
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        c.validate(devices_later=True)
        c.validate()
        c.validate(device_count=8)
        c.validate(device_count=8)
    assert [issubclass(w.category, ConfigWarning) for w in caught] == [True]
    c.trust_coefficient = -1.0  # a changed value is checked again
    with pytest.raises(ValueError, match=r"TrainConfig.trust_coefficient=-1.0: must be > 0"):
        c.validate()


def test_range_messages():
    for kw, msg in [(dict(momentum=1.0), "momentum=1.0: must be in [0, 1)"),
                    (dict(max_skipped_fraction=1.5), "max_skipped_fraction=1.5: must be in [0, 1]"),
                    (dict(width=0.0), "width=0.0: must be > 0"),
                    (dict(test_subset=0), "test_subset=0: must be >= 1 or None"),
                    (dict(checkpoint_every_steps=-2), "checkpoint_every_steps=-2: must be >= -1")]:
        with pytest.raises(ValueError) as e:
            TrainConfig(**kw).validate()
        assert str(e.value) == "TrainConfig." + msg
