"""Host-streaming input with several processes: the per-process cost of `host_batches`.

In a multi-host run every process reads only its ``B / P`` rows of each global batch of
``B`` (`lars_jax.data.host_batches` with ``process_index``/``process_count``, as
`lars_jax.train.input_pipeline.StreamingInput` calls it). This benchmark checks that the
per-process input cost does not grow with the process count: it reads the same global
batches with one process (``P = 1``) and with two processes side by side (``P = 2``, two
OS processes, each its half), and reports for each process the images it read, its
CPU-seconds (`time.process_time`, all threads) and wall seconds, images per CPU-second and
images/s, plus the CPU-seconds per global step. With ``P = 2`` each process should spend
about half the CPU-seconds per global step of the one process, at the same images per
CPU-second. The two processes also check that their record numbers are disjoint and cover
the global batches.

The variants alternate (1, 2, 1, 2, ...) so that background load on a shared machine hits
both alike. The images are the synthesized ImageNet-sized JPEGs of
`bench_streaming_input.py` (500x375 / 375x500), prepared with the real TFDS imagenet2012
builder, cropped to 224.

Usage:
  nice -n 15 .venv/bin/python benchmarks/bench_streaming_processes.py [--images 256]
      [--batch 32] [--batches 6] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
import _harness  # noqa: E402
import bench_streaming_input  # noqa: E402

from lars_jax import data  # noqa: E402


def worker(tfds_dir: str, index: int, count: int, batch: int, batches: int,
           threads: int) -> dict:
    """One process's share of `batches` global batches (after one untimed batch)."""
    it = data.host_batches("imagenet2012", "train", batch, seed=0, image_size=224,
                           process_index=index, process_count=count, data_dir=tfds_dir,
                           num_threads=threads, prefetch=threads)
    first = next(it)  # opens the source, starts the threads
    records = [first["index"].tolist()]
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for _ in range(batches):
        b = next(it)
        assert b["image"].shape == (batch // count, 224, 224, 3)
        records.append(b["index"].tolist())
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    n = batches * batch // count
    return {"process": index, "images": n, "wall_s": wall, "cpu_s": cpu,
            "images_per_s": n / wall, "images_per_cpu_s": n / cpu,
            "cpu_s_per_global_step": cpu / batches, "records": records}


def run_variant(tfds_dir: Path, count: int, args: argparse.Namespace) -> list[dict]:
    """`count` worker processes side by side; their results."""
    env = dict(os.environ, PYTHONPATH=str(HERE.parent))
    procs = [subprocess.Popen(
        [sys.executable, __file__, "--worker", str(tfds_dir), str(p), str(count),
         str(args.batch), str(args.batches), str(args.threads)],
        env=env, stdout=subprocess.PIPE, text=True) for p in range(count)]
    rows = []
    for proc in procs:
        out, _ = proc.communicate(timeout=1800)
        if proc.returncode:
            raise RuntimeError(f"worker failed with status {proc.returncode}")
        rows.append(json.loads(out.splitlines()[-1]))
    # Together the processes read each global batch's records once, disjointly.
    for step in range(args.batches + 1):
        got = [i for r in rows for i in r["records"][step]]
        assert len(got) == args.batch and len(set(got)) == args.batch, step
    for r in rows:
        del r["records"]
        r["variant"] = f"P={count}, process {r['process']}"
    return rows


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        d, i, c, b, n, t = sys.argv[2:8]
        print(json.dumps(worker(d, int(i), int(c), int(b), int(n), int(t))), flush=True)
        return
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=256, help="synthesized training JPEGs")
    p.add_argument("--batch", type=int, default=32, help="global batch")
    p.add_argument("--batches", type=int, default=6, help="timed global batches")
    p.add_argument("--threads", type=int, default=1, help="reader threads per process")
    p.add_argument("--rounds", type=int, default=2, help="alternations of P=1 and P=2")
    args = p.parse_args()
    load = os.getloadavg()

    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        tfds_dir, kb = bench_streaming_input.prepare(Path(tmp), args.images)
        for r in range(args.rounds):
            for count in (1, 2):
                got = run_variant(tfds_dir, count, args)
                for row in got:
                    row["round"] = r
                rows += got
                print(got, flush=True)
    summary = []
    for count in (1, 2):
        mine = [r for r in rows if r["variant"].startswith(f"P={count},")]
        summary.append({
            "processes": count,
            "images_per_process_per_step": args.batch // count,
            "median_images_per_cpu_s": float(np.median([r["images_per_cpu_s"] for r in mine])),
            "median_cpu_s_per_global_step": float(np.median(
                [r["cpu_s_per_global_step"] for r in mine])),
            "median_images_per_s": float(np.median([r["images_per_s"] for r in mine])),
        })
    _harness.print_table(rows, ["variant", "round", "images", "wall_s", "cpu_s",
                                "images_per_s", "images_per_cpu_s", "cpu_s_per_global_step"])
    _harness.print_table(summary)
    print(f"load average before: {load}, after: {os.getloadavg()}")
    _harness.write_results("streaming_processes", rows, summary=summary, mean_jpeg_kb=kb,
                           loadavg_before=load, loadavg_after=os.getloadavg(), argv=sys.argv)


if __name__ == "__main__":
    main()
