"""The ``lars-jax`` command: ``train``, ``sweep`` and ``report``.

Every field of :class:`lars_jax.train.TrainConfig` is a flag of ``train`` and
``sweep`` (``--batch-size 1024``; ``--batch_size`` works too; booleans as
``--flip``/``--no-flip``; ``none`` for optional fields), generated from the
dataclass: its type, its default and its ``metadata["help"]`` text. Settings can
also come from a TOML or JSON file (``--config run.toml``), flags overriding the
file. The resolved config is validated before any compute: a bad value stops
the command with a one-line message naming the field and exit status 2.

Examples::

    lars-jax train                                   # the README's main job
    lars-jax train --config my.toml --epochs 5 --print-config
    lars-jax sweep --grid batch_size=128,1024 --grid optimizer=sgd,lars --out runs/s1
    lars-jax report runs/s1

See ``docs/cli.md`` for the config file format and the sweep layout.

References:
  Python ``argparse`` documentation (BooleanOptionalAction, sub-commands);
  TOML v1.0.0, https://toml.io/en/v1.0.0.
"""

from __future__ import annotations

import argparse
import difflib
import inspect
import json
import re
import sys
import textwrap
import typing
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from lars_jax.runs.config_io import (
    SWEEP_TABLE,
    FieldSpec,
    coerce,
    coerce_dict,
    field_specs,
    load_config_file,
    to_toml,
)

PROG = "lars-jax"
EXIT_BAD_CONFIG = 2
EXIT_RUN_FAILED = 1
EXIT_INTERRUPTED = 130


class ConfigError(ValueError):
    """A bad command line, config file or config value (exit status 2)."""


def _config_class() -> type:
    from lars_jax.train.config import TrainConfig

    return TrainConfig


def _train_fn() -> Callable[[Any], Mapping[str, Any]]:
    from lars_jax.train import train

    return train


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (not the long usage) and exit 2."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(
            EXIT_BAD_CONFIG,
            f"{self.prog}: error: {message}\n(see `{self.prog} --help`)\n",
        )


# --------------------------------------------------------------------------- flags


def flag_name(field: str) -> str:
    """The command-line flag of a config field: ``batch_size`` -> ``--batch-size``."""
    return "--" + field.replace("_", "-")


def _field_groups(cls: type) -> dict[str, str]:
    """Field -> ``--help`` group title, from the class's ``GROUPS`` (title -> first field)."""
    starts = {first: title for title, first in getattr(cls, "GROUPS", {}).items()}
    groups, current = {}, "Options"
    for spec in field_specs(cls):
        current = starts.get(spec.name, current)
        groups[spec.name] = current
    return groups


def _metavar(spec: FieldSpec) -> str | None:
    if spec.type is bool:
        return None
    if spec.choices:
        text = "{" + ",".join(str(c) for c in spec.choices) + "}"
    else:
        text = {int: "INT", float: "FLOAT", str: "STR", list: "LIST"}.get(spec.type, "VALUE")
    return text + ("|none" if spec.optional else "")


def _default_text(spec: FieldSpec) -> str:
    d = spec.default
    if d is None:
        return "none"
    if isinstance(d, bool):
        return "true" if d else "false"
    return str(getattr(d, "value", d))


def _help_text(spec: FieldSpec) -> str:
    text = spec.help.strip() or spec.name.replace("_", " ")
    text = text.replace("%", "%%")
    if "(default" in text:
        return text
    return f"{text} (default: {_default_text(spec)})"


def _type_fn(spec: FieldSpec, cls_name: str) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            return coerce(spec, text, cls_name=cls_name)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from e

    parse.__name__ = spec.type.__name__
    return parse


def add_config_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """Adds one flag per field of a config dataclass to a parser.

    Flags default to ``argparse.SUPPRESS``, so the parsed namespace holds only the
    fields given on the command line (which then override a config file).

    Args:
      parser: the parser (or sub-parser) to extend.
      cls: the config dataclass.
    """
    groups = _field_groups(cls)
    arg_groups: dict[str, Any] = {}
    for spec in field_specs(cls):
        title = groups.get(spec.name, "Options")
        if title not in arg_groups:
            arg_groups[title] = parser.add_argument_group(f"{title} ({cls.__name__})")
        group = arg_groups[title]
        kwargs: dict[str, Any] = {
            "dest": spec.name,
            "default": argparse.SUPPRESS,
            "help": _help_text(spec),
        }
        if spec.type is bool:
            group.add_argument(
                flag_name(spec.name), action=argparse.BooleanOptionalAction, **kwargs
            )
        else:
            group.add_argument(
                flag_name(spec.name),
                type=_type_fn(spec, cls.__name__),
                metavar=_metavar(spec),
                **kwargs,
            )


def _fields_epilog(cls: type) -> str:
    lines = [f"{cls.__name__} options (flags of `{PROG} train` and `{PROG} sweep`):"]
    for spec in field_specs(cls):
        flag = flag_name(spec.name)
        if spec.type is bool:
            flag += f"/--no-{flag[2:]}"
        else:
            flag += f" {_metavar(spec)}"
        first = re.split(r"(?<=\.)\s", spec.help.strip(), maxsplit=1)[0]
        if "(default" not in first:
            first += f" (default: {_default_text(spec)})"
        lines.append(f"  {flag}")
        lines.append(textwrap.fill(first, 88, initial_indent=" " * 6, subsequent_indent=" " * 6))
    return "\n".join(lines)


def build_parser(cls: type | None = None) -> argparse.ArgumentParser:
    """The ``lars-jax`` argument parser (sub-commands train, sweep, report).

    Args:
      cls: the config dataclass; default :class:`lars_jax.train.TrainConfig`.

    Returns:
      The parser.
    """
    cls = cls or _config_class()
    raw = argparse.RawDescriptionHelpFormatter
    parser = _Parser(
        prog=PROG,
        allow_abbrev=False,
        description="Large-batch training with LARS, LARC and CLARS: train, sweep, report.",
        epilog=_fields_epilog(cls)
        + f"\n\nRun `{PROG} <command> --help` for each command's options; docs/cli.md has more.",
        formatter_class=raw,
    )
    sub = parser.add_subparsers(dest="command", metavar="{train,sweep,report}")

    train = sub.add_parser(
        "train",
        allow_abbrev=False,
        help="train one model (no arguments: the README's main job)",
        description="Train one model. With no arguments: the default config (ResNet-20 on "
        "Fashion-MNIST with LARS). Flags override the --config file.",
    )
    train.add_argument(
        "--config", metavar="FILE", help="TOML or JSON file of config fields (flags override it)"
    )
    train.add_argument(
        "--print-config",
        action="store_true",
        help="print the resolved config as TOML (reusable with --config) and exit",
    )
    add_config_arguments(train, cls)

    sweep = sub.add_parser(
        "sweep",
        allow_abbrev=False,
        help="run a grid of configs one after another (resumable)",
        description="Run the cartesian product of --grid values one after another, each in "
        "<out>/<name> named from its values; one row per run in <out>/results.jsonl. Run the "
        "same command again to resume: finished runs are skipped, an interrupted run resumes "
        "from its last checkpoint. Flags set the base config (overriding --config).",
    )
    sweep.add_argument(
        "--config",
        "--base",
        dest="config",
        metavar="FILE",
        help="TOML/JSON base config; may hold a [sweep] table with `out` and a [sweep.grid] table",
    )
    sweep.add_argument(
        "--grid",
        action="append",
        default=[],
        metavar="FIELD=V1,V2,...",
        help="values of one field to sweep (repeatable; a JSON list also works: "
        "FIELD='[1, 2]'); overrides the same field of the file's grid",
    )
    sweep.add_argument("--out", metavar="DIR", help="output folder (or `out` in [sweep])")
    sweep.add_argument("--retry-failed", action="store_true", help="rerun runs recorded as failed")
    sweep.add_argument(
        "--stop-on-error", action="store_true", help="stop the sweep at the first failed run"
    )
    sweep.add_argument(
        "--dry-run", action="store_true", help="list the runs and their status, run nothing"
    )
    sweep.add_argument(
        "--no-report", action="store_true", help="do not write <out>/report.md at the end"
    )
    add_config_arguments(sweep, cls)

    report = sub.add_parser(
        "report",
        allow_abbrev=False,
        help="write report.md (table and plots) for a results folder",
        description="Turn a results folder (a sweep's output, or a folder of run folders) into "
        "<folder>/report.md with a markdown table of the runs and PNG plots in <folder>/plots.",
    )
    report.add_argument("folder", help="the results folder")
    report.add_argument("--title", help="report title (default: 'Results: <folder name>')")
    report.add_argument(
        "--metric", help="summary metric to plot (default: the first accuracy metric)"
    )
    report.add_argument("--x", help="swept field on the x axis (default: batch_size if swept)")
    report.add_argument("--output", default="report.md", help="file name (default: report.md)")
    return parser


def _normalize_argv(argv: Sequence[str]) -> list[str]:
    """``--batch_size=8`` -> ``--batch-size=8`` (underscores accepted in flag names)."""
    out = []
    for tok in argv:
        if tok.startswith("--") and len(tok) > 2:
            name, eq, value = tok.partition("=")
            tok = name.replace("_", "-") + eq + value
        out.append(tok)
    return out


# --------------------------------------------------------------------------- configs


def resolve_config(
    cls: type, config_file: str | None, overrides: Mapping[str, Any]
) -> tuple[Any, dict[str, Any]]:
    """Builds a config from defaults, a config file and command-line overrides.

    Args:
      cls: the config dataclass.
      config_file: a TOML/JSON file, or ``None``.
      overrides: field -> value from the command line (already typed).

    Returns:
      ``(config, sweep_table)``: the config (not yet validated) and the file's
      ``[sweep]`` table (empty when absent).

    Raises:
      ConfigError: unreadable file, unknown field or wrongly typed value.
    """
    values: dict[str, Any] = {}
    sweep_table: dict[str, Any] = {}
    if config_file:
        try:
            data = load_config_file(config_file)
            table = data.pop(SWEEP_TABLE, {})
            if not isinstance(table, dict):
                raise ValueError(f"config file {config_file!r}: [sweep] must be a table")
            sweep_table = table
            values.update(coerce_dict(cls, data))
        except ValueError as e:
            raise ConfigError(str(e)) from e
    values.update(overrides)
    try:
        return cls(**values), sweep_table
    except TypeError as e:  # a config whose __init__/__post_init__ rejects a value
        raise ConfigError(str(e)) from e


def _show_config_warnings_on_one_line() -> None:
    """Config warnings (values with no effect) print as ``lars-jax: warning: ...``."""
    show = warnings.showwarning
    if getattr(show, "one_line_config_warnings", False):
        return

    def one_line(message, category, filename, lineno, file=None, line=None):
        if category.__name__ != "ConfigWarning":
            return show(message, category, filename, lineno, file, line)
        print(f"{PROG}: warning: {message}", file=sys.stderr if file is None else file)

    one_line.one_line_config_warnings = True
    warnings.showwarning = one_line


def _without_device_count(config: Any) -> Any:
    """`config` with ``num_devices`` unset (its device-dependent checks wait for the
    devices), or `config` itself where there is nothing to unset."""
    if getattr(config, "num_devices", None) is None or not hasattr(config, "replace"):
        return config
    return config.replace(num_devices=None)


def _validate(config: Any, device_count: int | None = None) -> None:
    _show_config_warnings_on_one_line()
    validate = getattr(config, "validate", None)
    if not callable(validate):
        return
    try:
        if device_count is not None and "device_count" in inspect.signature(validate).parameters:
            validate(device_count=device_count)
        else:
            validate()
    except ValueError as e:
        raise ConfigError(str(e)) from e


def initialize_distributed(config: Any) -> None:
    """Starts JAX's multi-process runtime when the config or environment asks for it.

    Multi-host mode is on when the config sets ``coordinator_address``,
    ``num_processes`` or ``process_id``, or the environment sets
    ``JAX_COORDINATOR_ADDRESS`` (``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID`` fill in
    the rest). Delegates to the trainer's
    ``lars_jax.train.loop.maybe_initialize_distributed`` (which also selects gloo
    collectives on CPU); does nothing when the runtime is already initialized.

    Args:
      config: the run's config.
    """
    from lars_jax.train.loop import maybe_initialize_distributed

    maybe_initialize_distributed(config)


def _device_count(config: Any) -> int:
    """The devices a run will use, as the trainer counts them (``num_devices`` or all)."""
    import jax

    present = jax.device_count()
    wanted = getattr(config, "num_devices", None)
    if wanted is not None and wanted > present:
        raise ConfigError(f"{type(config).__name__}.num_devices={wanted}: only {present} "
                          f"{jax.default_backend()} device(s) present")
    return int(wanted or present)


def _print_config(config: Any, cls: type) -> None:
    helps = {s.name: s.help for s in field_specs(cls)}
    to_dict = getattr(config, "to_dict", None)
    values = to_dict() if callable(to_dict) else vars(config)
    print(f"# {cls.__name__} (resolved); reuse with: {PROG} train --config FILE")
    print(to_toml(values, comments=helps), end="")


def _parse_grid(items: Sequence[str]) -> dict[str, list[str]]:
    grid: dict[str, list[str]] = {}
    for item in items:
        key, eq, text = item.partition("=")
        if not eq or not key.strip() or not text.strip():
            raise ConfigError(f"--grid {item!r}: expected FIELD=V1,V2,...")
        key = key.strip().replace("-", "_")
        text = text.strip()
        if text.startswith("["):
            try:
                values = json.loads(text)
            except json.JSONDecodeError as e:
                raise ConfigError(f"--grid {item!r}: not a JSON list: {e}") from e
            if not isinstance(values, list):
                raise ConfigError(f"--grid {item!r}: expected a JSON list")
        else:
            values = [v.strip() for v in text.split(",")]
        grid[key] = values
    return grid


# --------------------------------------------------------------------------- commands


def _is_config_error(e: BaseException, cls: type) -> bool:
    """A ValueError raised by config validation (its message starts with the class name)."""
    return isinstance(e, ValueError) and str(e).startswith(f"{cls.__name__}.")


def _run_error(e: BaseException) -> str | None:
    """A one-line message for the trainer's expected failures, None for anything else."""
    if type(e).__name__ in ("NonFiniteError", "CheckpointError", "WorkdirLockedError",
                            "StorageError"):
        return f"{type(e).__name__}: {e}"
    return None


def _cmd_train(args: argparse.Namespace, cls: type, overrides: dict[str, Any]) -> int:
    config, _ = resolve_config(cls, args.config, overrides)
    # the checks that need no device first (no JAX backend yet; --print-config stops
    # here); those that depend on the device count once the devices are known, so that
    # "--num-devices above the devices present" is the error a user sees for it
    _validate(_without_device_count(config))
    if args.print_config:
        _print_config(config, cls)
        return 0
    initialize_distributed(config)
    _validate(config, _device_count(config))
    try:
        _train_fn()(config)
    except (ValueError, RuntimeError, OSError) as e:
        if _is_config_error(e, cls):
            raise ConfigError(str(e)) from e
        msg = _run_error(e)
        if msg is None:
            raise
        print(f"{PROG} train: error: {msg}", file=sys.stderr)
        return EXIT_RUN_FAILED
    from lars_jax.runs.run_files import is_primary_process

    workdir = getattr(config, "workdir", None)
    if workdir and is_primary_process():
        print(f"{PROG} train: results in {workdir}/ (summary.json, metrics.jsonl, curves.png)")
    return 0


def _cmd_sweep(args: argparse.Namespace, cls: type, overrides: dict[str, Any]) -> int:
    from lars_jax.runs.report import summary_report
    from lars_jax.runs.run_files import is_primary_process
    from lars_jax.runs.sweep import plan_sweep, run_sweep

    base, table = resolve_config(cls, args.config, overrides)
    file_grid = table.get("grid", {})
    if not isinstance(file_grid, dict):
        raise ConfigError("[sweep.grid] must be a table of FIELD = [values]")
    unknown = sorted(set(table) - {"grid", "out"})
    if unknown:
        raise ConfigError(f"[sweep] has unknown key(s) {', '.join(unknown)} (known: out, grid)")
    grid = {k.replace("-", "_"): v for k, v in file_grid.items()}
    grid.update(_parse_grid(args.grid))
    both = sorted(set(grid) & set(overrides))
    if both:
        raise ConfigError(f"{', '.join(both)}: both swept (--grid) and set by a flag")
    out = args.out or table.get("out")
    if not out:
        raise ConfigError("--out: the sweep needs an output folder (--out DIR or out in [sweep])")
    try:  # validates every run's config (the base alone may be invalid, e.g. its batch size)
        planned = plan_sweep(base, grid, out)
    except ValueError as e:
        raise ConfigError(str(e)) from e
    if args.dry_run:
        for run in planned:
            print(f"{run.status:8s} {run.name}")
        print(f"{len(planned)} runs in {out}")
        return 0
    initialize_distributed(base)
    for run in planned:
        _validate(run.config, _device_count(run.config))
    from lars_jax.runs.compile_cache import enable_compilation_cache

    enable_compilation_cache()  # runs that differ only in lr or wd compile once
    rows = run_sweep(
        base,
        grid,
        out,
        train_fn=_train_fn(),
        retry_failed=args.retry_failed,
        stop_on_error=args.stop_on_error,
    )
    if not args.no_report and is_primary_process():
        path = summary_report(out)
        print(f"{PROG} sweep: report written to {path}")
    failed = [r["run"] for r in rows if r.get("status") == "failed"]
    if failed:
        rerun = ("; those that failed for their storage (disk full, read-only) are run "
                 "again by the same command" if any(r.get("environmental") for r in rows)
                 else "")
        print(
            f"{PROG} sweep: {len(failed)} of {len(rows)} runs failed ({', '.join(failed)}); "
            f"they are recorded in results.jsonl; --retry-failed reruns them{rerun}",
            file=sys.stderr,
        )
        return EXIT_RUN_FAILED
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from lars_jax.runs.report import summary_report

    try:
        path = summary_report(
            args.folder, title=args.title, metric=args.metric, x=args.x, filename=args.output
        )
    except (FileNotFoundError, ValueError) as e:
        raise ConfigError(str(e)) from e
    print(f"{PROG} report: wrote {path}")
    return 0


def _deferring_signals(command: Callable[[], int]) -> int:
    """Runs `train` or `sweep` with SIGINT (Ctrl-C) and SIGTERM deferred from the start: the
    trainer stops at its next step with a checkpoint (`lars_jax.runs.stop_signals`)."""
    from lars_jax.runs.stop_signals import StopSignals, requested

    with StopSignals():
        code = command()
        signum = requested()
        if code == 0 and signum is not None:  # arrived after the last safe point
            print(f"{PROG}: interrupted after the work was done (results complete)",
                  file=sys.stderr)
            return 128 + signum
        return code


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``lars-jax`` console script.

    Args:
      argv: the arguments (default: ``sys.argv[1:]``).

    Returns:
      The exit status: 0 success, 1 a run failed, 2 bad command line or config,
      130 interrupted by SIGINT, 143 by SIGTERM (rerun the same command to resume).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] in (["train"], ["sweep"]):  # from the first instant, before the imports
        from lars_jax.runs.stop_signals import StopSignals

        with StopSignals():
            return _main(argv)
    return _main(argv)


def _main(argv: list[str]) -> int:
    cls = _config_class()
    parser = build_parser(cls)
    args, extra = parser.parse_known_args(_normalize_argv(argv))
    if extra:
        flags = [f for spec in field_specs(cls) for f in (flag_name(spec.name),)]
        bad = next((t for t in extra if t.startswith("-")), extra[0])
        close = difflib.get_close_matches(bad.partition("=")[0], flags, n=2)
        hint = f" (did you mean {' or '.join(close)}?)" if close else ""
        where = f"{PROG} {args.command}" if args.command else PROG
        print(f"{where}: error: unrecognized argument(s): {' '.join(extra)}{hint}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    if args.command is None:
        parser.print_help()
        return EXIT_BAD_CONFIG
    names = {s.name for s in field_specs(cls)}
    overrides = {k: v for k, v in vars(args).items() if k in names}
    try:
        if args.command == "train":
            return _deferring_signals(lambda: _cmd_train(args, cls, overrides))
        if args.command == "sweep":
            return _deferring_signals(lambda: _cmd_sweep(args, cls, overrides))
        return _cmd_report(args)
    except ConfigError as e:
        print(f"{PROG} {args.command}: error: {e}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    except OSError as e:  # lars_jax.runs.storage.StorageError: disk full, read-only
        if type(e).__name__ != "StorageError":
            raise
        print(f"{PROG} {args.command}: error: {e}", file=sys.stderr)
        return EXIT_RUN_FAILED
    except KeyboardInterrupt as e:  # lars_jax.runs.stop_signals.TrainingInterrupted, too
        detail = str(e) if hasattr(e, "exit_code") else (
            "interrupted; run the same command again to resume from the last checkpoint")
        print(f"{PROG} {args.command}: {detail}", file=sys.stderr)
        return getattr(e, "exit_code", EXIT_INTERRUPTED)


if __name__ == "__main__":
    sys.exit(main())
