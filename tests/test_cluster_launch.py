"""Multi-host launches under SLURM and Open MPI without flags (issue 30 item 2).

`lars_jax.train.loop.maybe_initialize_distributed` calls ``jax.distributed.initialize()``
when the environment is that of a task of a SLURM (``srun``) or Open MPI (``mpirun``) job
of several tasks, as BUILD.md says; JAX then reads the coordinator, the number of
processes and the process id from those variables. A one-task job is one process.
"""

import os
import socket
import subprocess
import sys
from pathlib import Path

from _train_jobs import tiny_config, tiny_data
from _xla_env import xla_flags

REPO = Path(__file__).resolve().parents[1]


def _slurm_env(job_id: int, ntasks: int, procid: int) -> dict[str, str]:
    """The variables srun gives each task of a one-node job (the set JAX checks)."""
    return {"SLURM_JOB_ID": str(job_id), "SLURM_STEP_NODELIST": "localhost",
            "SLURM_NTASKS": str(ntasks), "SLURM_PROCID": str(procid),
            "SLURM_LOCALID": str(procid), "SLURM_STEP_NUM_NODES": "1"}


def test_cluster_processes_reads_slurm_and_open_mpi_variables():
    from lars_jax.train.loop import cluster_processes

    assert cluster_processes({}) is None
    assert cluster_processes(_slurm_env(77, 4, 2)) == ("SLURM", 4)
    # salloc's shell (no job step: no SLURM_STEP_NODELIST) is not a task of a launch
    partial = {k: v for k, v in _slurm_env(77, 4, 0).items() if k != "SLURM_STEP_NODELIST"}
    assert cluster_processes(partial) is None
    assert cluster_processes({"OMPI_MCA_orte_hnp_uri": "1234.0;tcp://10.0.0.1:5000",
                              "OMPI_COMM_WORLD_SIZE": "3"}) == ("Open MPI", 3)


def test_a_one_task_slurm_job_trains_as_one_process(tmp_path, monkeypatch):
    import jax

    from lars_jax.train import train

    for key, value in _slurm_env(4242, 1, 0).items():
        monkeypatch.setenv(key, value)
    summary = train(tiny_config(tmp_path, model="mlp1", num_devices=1, epochs=0.25,
                                warmup_epochs=0.0, checkpoint_every_steps=-1), data=tiny_data())
    assert summary["status"] == "ok" and summary["num_processes"] == 1
    assert summary["steps"] == 2
    assert not jax.distributed.is_initialized()


def _free_slurm_job_id() -> int:
    """A job id whose port (JAX: ``61440 + job_id % 4096``) is free here."""
    for job_id in range(12345, 12345 + 4096, 97):
        port = 61440 + job_id % 4096
        with socket.socket() as sock:
            try:
                sock.bind(("localhost", port))
            except OSError:
                continue
            return job_id
    raise RuntimeError("no free port in 61440-65535")


def test_two_slurm_tasks_join_one_run_without_flags(tmp_path):
    """Before: each task initialized nothing and saw process_count() == 1 (trained alone)."""
    job_id = _free_slurm_job_id()
    code = ("import jax; from lars_jax.train import TrainConfig; "
            "from lars_jax.train.loop import maybe_initialize_distributed; "
            "maybe_initialize_distributed(TrainConfig()); "
            "print('PROCESSES', jax.process_index(), jax.process_count(), jax.device_count())")
    procs, logs = [], []
    for procid in range(2):
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO),
                                                           os.environ.get("PYTHONPATH", "")]),
                   JAX_PLATFORMS="cpu", XLA_FLAGS=xla_flags(2),
                   **_slurm_env(job_id, 2, procid))
        logs.append(tmp_path / f"task{procid}.log")
        with open(logs[-1], "w") as log:  # files, not pipes (a full pipe blocks a task)
            procs.append(subprocess.Popen([sys.executable, "-c", code], env=env, cwd=REPO,
                                          stdout=log, stderr=subprocess.STDOUT))
    for p in procs:
        p.wait(timeout=300)
    for procid, (p, log) in enumerate(zip(procs, logs, strict=True)):
        out = log.read_text()
        assert p.returncode == 0, out[-2000:]
        line = next(ln for ln in out.splitlines() if ln.startswith("PROCESSES"))
        assert line.split()[1:] == [str(procid), "2", "4"], out[-2000:]
