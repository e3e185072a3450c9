"""The ``lars-jax`` command: ``train``, ``sweep``, ``advise`` and ``report`` (docs/cli.md).

argparse generates a flag for every `TrainConfig` field from its declaration
(`lars_jax.train.config.FieldMeta`); `lars_jax.runs.config_io` types the flags and a
``--config`` file. The other sub-commands declare their parsers and run beside their code
(``add_parser``, ``run_command`` in `sweep`, `report`, `advise`); this module dispatches.

Examples::

    lars-jax train --config my.toml --epochs 5 --print-config
    lars-jax sweep --grid batch_size=128,1024 --grid optimizer=sgd,lars --out runs/s1
    lars-jax report runs/s1

References:
  Python ``argparse`` documentation (BooleanOptionalAction, sub-commands).
"""

from __future__ import annotations

import argparse
import difflib
import re
import sys
import typing
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from lars_jax.runs import advise, config_io, report, sweep
from lars_jax.runs.errors import ConfigError, ConfigWarning, RunError
from lars_jax.runs.run_files import is_primary_process
from lars_jax.train.config import FieldMeta, TrainConfig, field_meta

__all__ = ["ConfigError", "build_parser", "main", "resolve_config"]

PROG = "lars-jax"
EXIT_BAD_CONFIG = 2
EXIT_RUN_FAILED = 1
EXIT_INTERRUPTED = 130


def _train_fn() -> Callable[[Any], Mapping[str, Any]]:
    from lars_jax.train import train
    return train


def _flag(field: str) -> str:
    """The command-line flag of a config field: ``batch_size`` -> ``--batch-size``."""
    return "--" + field.replace("_", "-")


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (not the long usage), with the flags
    close to an unknown one, and exit 2."""

    def error(self, message: str) -> typing.NoReturn:
        unknown = re.match(r"unrecognized arguments: (--[^\s=]+)", message)
        flags = [_flag(name) for name in field_meta()]
        close = difflib.get_close_matches(unknown[1], flags, n=2) if unknown else []
        hint = f" (did you mean {' or '.join(close)}?)" if close else ""
        self.exit(EXIT_BAD_CONFIG, f"{self.prog}: error: {message}{hint}\n"
                  f"(see `{self.prog} --help`)\n")


def _metavar(spec: FieldMeta) -> str:
    text = ("{" + ",".join(map(str, spec.choices)) + "}" if spec.choices
            else {int: "INT", float: "FLOAT"}.get(spec.type, "STR"))
    return text + ("|none" if spec.optional else "")


def _help_text(spec: FieldMeta) -> str:
    """The field's help with its default."""
    d = "none" if spec.default is None else spec.default
    return f"{spec.help} (default: {str(d).lower() if isinstance(d, bool) else d})"


def add_config_arguments(parser: argparse.ArgumentParser, *, brief: bool = False) -> None:
    """Adds one flag per `TrainConfig` field to `parser`, in the fields' help groups (default
    ``SUPPRESS``: the namespace holds only the flags given, as text or a bool, which
    `resolve_config` types and lays over a config file); `brief`: the helps' first sentences."""
    groups: dict[str, Any] = {}
    for spec in field_meta().values():
        if spec.group not in groups:
            groups[spec.group] = parser.add_argument_group(f"{spec.group} (TrainConfig)")
        kind = ({"action": argparse.BooleanOptionalAction} if spec.type is bool
                else {"metavar": _metavar(spec)})
        text = _help_text(spec._replace(help=spec.help.split(". ")[0].rstrip(".") + ".")
                          if brief else spec)
        groups[spec.group].add_argument(_flag(spec.name), dest=spec.name, default=argparse.SUPPRESS,
                                        help=text.replace("%", "%%"), **kind)


def _fields_epilog() -> str:
    """The top-level help's list of the config flags (argparse's layout, first sentences)."""
    fields = argparse.ArgumentParser(PROG, usage=argparse.SUPPRESS, add_help=False)
    add_config_arguments(fields, brief=True)
    return (f"TrainConfig options (flags of `{PROG} train`, `sweep` and `advise`):\n"
            f"{fields.format_help()}\nRun `{PROG} <command> --help` for each command's options; "
            "docs/cli.md has more.")


def build_parser() -> argparse.ArgumentParser:
    """The ``lars-jax`` argument parser (sub-commands train, sweep, advise, report)."""
    parser = _Parser(prog=PROG, allow_abbrev=False, epilog=_fields_epilog(),
                     description="Large-batch training with LARS, LARC and CLARS: train, "
                     "sweep, report.", formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", metavar="{train,sweep,advise,report}")
    train_p = sub.add_parser(
        "train", allow_abbrev=False, help="train one model (no arguments: the README's main "
        "job)", description="Train one model. With no arguments: the default config "
        "(ResNet-20 on Fashion-MNIST with LARS). Flags override the --config file.")
    train_p.add_argument("--config", metavar="FILE",
                         help="TOML or JSON file of config fields (flags override it)")
    train_p.add_argument("--print-config", action="store_true", help="print the resolved "
                         "config as TOML (reusable with --config) and exit")
    for command in (train_p, sweep.add_parser(sub), advise.add_parser(sub)):
        add_config_arguments(command)
    report.add_parser(sub)
    return parser


def resolve_config(cls: type[TrainConfig], config_file: str | None, flags: Mapping[str, Any]
                   ) -> tuple[TrainConfig, dict[str, Any]]:
    """The config (not yet validated) from defaults, a TOML/JSON file and the command line's
    flags (text or bools), and the file's ``[sweep]`` table (empty when absent).

    Raises:
      ConfigError: unreadable file, unknown field or wrongly typed value.
    """
    data = config_io.load_config_file(config_file) if config_file else {}
    sweep_table = data.pop(config_io.SWEEP_TABLE, {})
    typed = {**config_io.coerce_dict(data), **config_io.coerce_dict(flags, from_text=True)}
    return cls(**typed), sweep_table


_showwarning = warnings.showwarning


def _show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                  file: typing.TextIO | None = None, line: str | None = None) -> None:
    """Shows a `ConfigWarning` (a value with no effect) as ``lars-jax: warning: ...``."""
    if not issubclass(category, ConfigWarning):
        return _showwarning(message, category, filename, lineno, file, line)
    print(f"{PROG}: warning: {message}", file=sys.stderr if file is None else file)


def _cmd_train(args: argparse.Namespace, config: TrainConfig) -> int:
    # no JAX backend before --print-config; the device checks once the devices are known
    # (so that "--num-devices above the devices present" is the error a user sees for it)
    config.validate(devices_later=True)
    if args.print_config:
        print(f"# TrainConfig (resolved); reuse with: {PROG} train --config FILE")
        print(config_io.to_toml(config.to_dict(), comments=config.help()), end="")
        return 0
    from lars_jax.train.loop import run_device_count

    config.validate(device_count=run_device_count(config))
    _train_fn()(config)
    if is_primary_process():
        files = "summary.json, metrics.jsonl" + (", curves.png" if config.plot else "")
        print(f"{PROG} train: results in {config.workdir}/ ({files})")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``lars-jax`` console script. ``train`` and ``sweep`` run with
    SIGINT, SIGTERM and SIGHUP deferred (`lars_jax.runs.stop_signals`, installed here
    once): the trainer stops at its next step with a checkpoint.

    Returns:
      The exit status (docs/cli.md): 0 success, 1 a run failed, 2 bad command line or config,
      128 + the signal's number when interrupted (rerun the same command to resume).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] not in (["train"], ["sweep"]):
        return _main(argv)
    from lars_jax.runs.stop_signals import StopSignals, requested

    with StopSignals():
        code = _main(argv)
        signum = requested()
        if code == 0 and signum is not None:  # arrived after the last safe point
            print(f"{PROG}: interrupted after the work was done (results complete)",
                  file=sys.stderr)
            return 128 + signum
        return code


def _main(argv: list[str]) -> int:
    parser = build_parser()
    # "--batch_size=8" -> "--batch-size=8": underscores are accepted in flag names
    argv = [re.sub(r"^--[^=]+", lambda m: m[0].replace("_", "-"), tok) for tok in argv]
    args, extra = parser.parse_known_args(argv)
    if extra:  # the message names the sub-command: "lars-jax train: error: ..."
        parser.prog += f" {args.command}" if args.command else ""
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command is None:
        parser.print_help()
        return EXIT_BAD_CONFIG
    flags = {k: v for k, v in vars(args).items() if k in field_meta()}
    warnings.showwarning = _show_warning
    try:
        if args.command == "report":
            return report.run_command(args)
        config, table = resolve_config(TrainConfig, args.config, flags)
        if args.command == "advise":
            return advise.run_command(config, args)
        if args.command == "train":
            return _cmd_train(args, config)
        return sweep.run_command(args, config, table, flags, load_train=_train_fn)
    except ConfigError as e:
        print(f"{PROG} {args.command}: error: {e}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    except RunError as e:
        print(f"{PROG} {args.command}: error: {type(e).__name__}: {e}", file=sys.stderr)
        return EXIT_RUN_FAILED
    except KeyboardInterrupt as e:  # lars_jax.runs.stop_signals.TrainingInterrupted, too
        detail = str(e) if hasattr(e, "exit_code") else (
            "interrupted; run the same command again to resume from the last checkpoint")
        print(f"{PROG} {args.command}: {detail}", file=sys.stderr)
        return getattr(e, "exit_code", EXIT_INTERRUPTED)


if __name__ == "__main__":
    sys.exit(main())
