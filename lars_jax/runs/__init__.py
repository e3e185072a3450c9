"""Runs: the tooling between a user and the trainer.

* `cli`: the ``lars-jax`` command (``train``, ``sweep``, ``report``).
* `config_io`: config files (TOML/JSON) and their strict coercion into `TrainConfig`.
* `sweep`: grids of runs, resumable, one JSON row per run.
* `report`, `plotting`: markdown reports and figures from run folders.
* `run_files`: the names and the JSONL/JSON encoding of the files a run writes.
* `stop_signals`: SIGINT/SIGTERM/SIGHUP deferred to a safe point.
* `compile_cache`: JAX's persistent compilation cache.
* `mlperf_log`: the MLLOG file of a run in MLPerf mode (``TrainConfig.mlperf``).

Nothing in the core (the modules at the package root) imports from here.
"""
