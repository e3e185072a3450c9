"""The tests' tiny run (`tiny_config`, `tiny_data`) and the job that
tests/test_train_loop.py starts as subprocesses.

``python tests/_train_jobs.py multihost WORKDIR PORT PROCESS_ID NUM_PROCESSES``: one
process of a multi-process run; prints its final parameters and summary.
"""

import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _tiny_data import tiny_data  # noqa: E402  (re-exported for the tests)


def tiny_config(workdir, **kw):
    from lars_jax.train import TrainConfig

    base = dict(model="resnet8", width=0.25, batch_size=32, epochs=2.0, warmup_epochs=0.5,
                learning_rate=1.0, workdir=str(workdir), checkpoint_every_steps=2,
                log_every_steps=2, plot=False, progress=False, num_devices=2, crop_padding=1,
                dtype="float32")
    base.update(kw)
    return TrainConfig(**base)


def multihost_job(workdir: str, port: str, pid: str, nproc: str) -> None:
    """One process of a multi-process run; prints its final params for the test to compare."""
    import jax

    from lars_jax.train import train_with_state

    kw = {} if nproc == "1" else dict(coordinator_address=f"localhost:{port}",
                                      num_processes=int(nproc), process_id=int(pid))
    # an MLP with BatchNorm: each of the three processes compiles its step, which for the
    # tiny ResNet was most of the test's time; the cross-process reductions are the same
    summary, state = train_with_state(tiny_config(workdir, model="mlp1", num_devices=4,
                                                  epochs=1.0, **kw), data=tiny_data())
    leaves = [np.asarray(x).ravel() for x in jax.tree.leaves(state.params)]
    print("PARAMS", json.dumps(np.concatenate(leaves).tolist()))
    print("SUMMARY", json.dumps({k: summary[k] for k in ("num_processes", "num_devices", "steps")}))


if __name__ == "__main__":
    if sys.argv[1] != "multihost":
        raise SystemExit(f"usage: {sys.argv[0]} multihost WORKDIR PORT PROCESS_ID NUM_PROCESSES")
    multihost_job(*sys.argv[2:6])
