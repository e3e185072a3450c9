"""Checkpointer: save/restore bitwise, fallback past a corrupt or incompatible checkpoint."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import lars_jax
from lars_jax.train.checkpoint import Checkpointer, CheckpointError
from lars_jax.train.step import init_train_state

META = {"model": "resnet8", "optimizer": "lars", "width": 0.25}


def _state(seed):
    rng = np.random.default_rng(seed)
    params = {"conv": {"kernel": jnp.asarray(rng.normal(size=(3, 3, 1, 4)), jnp.float32)},
              "bn": {"scale": jnp.ones(4), "bias": jnp.zeros(4)}}
    stats = {"bn": {"mean": jnp.asarray(rng.normal(size=4), jnp.float32), "var": jnp.ones(4)}}
    tx = optax.inject_hyperparams(lars_jax.lars)(learning_rate=0.1, weight_decay=1e-4)
    return init_train_state(params, stats, tx)


def _eq(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_save_restore_and_fallback_past_corrupt_latest(tmp_path, capsys):
    ck = Checkpointer(tmp_path, keep=3, meta=META)
    s1, s2 = _state(1), _state(2)
    ck.save(1, s1)
    ck.save(2, s2)
    step, got = ck.restore_latest(_state(0))
    assert step == 2
    _eq(got, s2)
    # corrupt every file of the newest checkpoint's state
    files = [p for p in (tmp_path / "checkpoints" / "2" / "state").rglob("*") if p.is_file()]
    assert files
    for p in files:
        p.write_bytes(b"garbage")
    ck.close()
    ck = Checkpointer(tmp_path, keep=3, meta=META)
    step, got = ck.restore_latest(_state(0))
    assert step == 1
    _eq(got, s1)
    err = capsys.readouterr().err
    assert "step 2" in err and "unusable" in err
    assert (tmp_path / "checkpoints_bad" / "2").exists()
    assert ck.all_steps() == [1]
    ck.save(2, s2)  # the run can go on and save step 2 again
    assert ck.all_steps() == [1, 2]
    ck.close()


def test_incompatible_checkpoints_are_reported(tmp_path):
    ck = Checkpointer(tmp_path, keep=3, meta=META)
    ck.save(5, _state(1))
    ck.close()
    other = Checkpointer(tmp_path, keep=3, meta=dict(META, model="resnet20"))
    with pytest.raises(CheckpointError, match=r"model='resnet8' \(run: 'resnet20'\)"):
        other.restore_latest(_state(0))
    other.close()
    # intact checkpoints of another run are left where they are
    assert (tmp_path / "checkpoints" / "5").exists()
    assert not (tmp_path / "checkpoints_bad").exists()


def _sgd_state(seed):
    s = _state(seed)
    tx = optax.inject_hyperparams(optax.sgd)(learning_rate=0.1, momentum=0.9)
    return init_train_state(s.params, s.batch_stats, tx)


@pytest.mark.parametrize("legacy", [False, True])
def test_checkpoint_with_another_state_structure_is_incompatible_not_corrupt(tmp_path, legacy):
    """Same meta, but the optimizer state has another tree (e.g. another lars_jax version):
    a clear error naming the structure, nothing moved; with a fingerprint in the meta and
    without one (checkpoints written before fingerprints existed)."""
    import json

    ck = Checkpointer(tmp_path, keep=3, meta=META)
    ck.save(3, _state(1))
    ck.close()
    if legacy:
        metas = [p for p in (tmp_path / "checkpoints" / "3" / "meta").rglob("*")
                 if p.is_file() and "state_structure" in p.read_text(errors="ignore")]
        assert metas
        for p in metas:
            d = json.loads(p.read_text())
            del d["state_structure"]
            p.write_text(json.dumps(d))
        # those versions wrote no checksums either
        (tmp_path / "checkpoints" / "3" / "lars_jax_sha256.json").unlink()
    ck = Checkpointer(tmp_path, keep=3, meta=META)
    with pytest.raises(CheckpointError, match="another tree structure.*resume=False"):
        ck.restore_latest(_sgd_state(0))
    assert (tmp_path / "checkpoints" / "3").exists()
    assert not (tmp_path / "checkpoints_bad").exists()
    # the matching structure still restores
    step, got = ck.restore_latest(_state(0))
    assert step == 3
    _eq(got, _state(1))
    ck.close()


def test_archive_existing_moves_old_checkpoints_out_of_the_way(tmp_path):
    ck = Checkpointer(tmp_path, keep=2, meta=META)
    assert ck.archive_existing() is None
    ck.save(100, _state(1))
    dest = ck.archive_existing()
    assert dest is not None and (dest / "100").exists()
    assert ck.all_steps() == []
    ck.save(1, _state(2))  # a new run's low step is kept, not pruned as "oldest"
    ck.save(2, _state(3))
    assert ck.all_steps() == [1, 2]
    ck.close()


def test_empty_workdir_restores_nothing(tmp_path):
    ck = Checkpointer(tmp_path, keep=1, meta=META)
    assert ck.restore_latest(_state(0)) is None
    ck.close()
