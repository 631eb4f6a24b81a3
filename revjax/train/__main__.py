"""``python -m revjax.train [--config=<name|path>[:arg]] [--config.x=y ...] [--workdir=DIR]``.

With no arguments, trains the default config (``revnet_mini`` on digits) in ``./workdir/default``.
``--config`` takes a config name from ``revjax/configs`` (e.g. ``cifar10_revnet110``) or a path to a
Python file with ``get_config``; ``:smoke`` selects the shrunken run.
``--config.<dotted.field>=<value>`` overrides one field, parsed as that field's type (tuples as
``'(8, 16)'``); ``model_kwargs.<field>`` takes any field of the chosen model
(``revjax.models.config_fields``) and ``dataset_options.<option>`` any option of the chosen dataset,
predefined by the config or not. ``--print_only`` checks the config (builds the model, abstract
init), prints it as JSON on stdout and the workdir, model size and learning rate schedule on stderr,
and exits. All training logic is in ``revjax.train.trainer.train_and_evaluate``.

Exit statuses: 0 done (also ``--help``); 1 error (bad config or input, dataset not prepared,
non-finite loss, checkpoint of another config, processes of a multi-process job started with
different configs); 3 reconstruction drift above ``drift_rtol``; 75 stopped by SIGTERM after saving
a checkpoint (requeue); 76 another process of a multi-process job died (rerun the whole job: it
resumes from the last complete checkpoint); 130 stopped by SIGINT (Ctrl-C) after saving."""

from __future__ import annotations

import importlib.util
import json
import logging
import re
import sys
from pathlib import Path

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

from revjax import configs


def resolve_config_argument(argv: list[str]) -> list[str]:
    """Rewrites ``--config=<name>[:arg]`` to the config file's path (names -> files).

    Raises:
      SystemExit: with the list of valid names when ``<name>`` is neither a file nor a config.
    """
    out = []
    for i, token in enumerate(argv):
        value = None
        if token.startswith("--config="):
            value = token[len("--config=") :]
        elif token == "--config" and i + 1 < len(argv):
            value = argv[i + 1]
        if value is not None:
            name, sep, arg = value.partition(":")
            if not Path(name).is_file():
                try:
                    name = str(configs.config_path(name))
                except ValueError as error:
                    sys.exit(f"error: {error}")
            token = "--config=" + name + sep + arg
            if argv[i] == "--config":
                argv[i + 1] = ""
        if token:
            out.append(token)
    return out


_NUMBER = re.compile(r"-[0-9.]+([eE][-+]?[0-9]+)?")
HELP_FLAGS = ("--help", "-h", "-?", "--helpshort", "--helpfull")


def split_overrides(argv: list[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """(argv without ``--config.<path>[=value]``, [(path, value), ...]) in command-line order.

    ``--config.<path> value`` (the value as the next word) and a bare ``--config.<path>``
    (True, for booleans) are accepted as absl does."""
    rest, overrides, i = [], [], 0
    while i < len(argv):
        token = argv[i]
        if token.startswith("--config."):
            path, sep, value = token[len("--config.") :].partition("=")
            if not sep:
                following = argv[i + 1] if i + 1 < len(argv) else "-"
                if not following.startswith("-") or _NUMBER.fullmatch(following):
                    value, i = argv[i + 1], i + 1
                else:
                    value = "true"
            overrides.append((path, value))
        else:
            rest.append(token)
        i += 1
    return rest, overrides


_OVERRIDES: list[tuple[str, str]] = []
# The argv ml_collections reads (at parse time) to find --config: `run` puts the command line
# without its --config.<path> overrides here, which revjax.configs.apply_overrides applies.
_ARGV: list[str] = ["revjax.train"]

_DEFAULT = str(configs.config_path("default"))
FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    "config",
    _DEFAULT,
    f"Config name (one of: {', '.join(configs.names())}) or path to a .py file with "
    "get_config, optionally followed by ':smoke'. Override a field with "
    "--config.<dotted.field>=<value>.",
    lock_config=True,
    sys_argv=_ARGV,
)
flags.DEFINE_string("workdir", None, "Output directory (default ./workdir/<config name>).")
flags.DEFINE_bool(
    "print_only",
    False,
    "Check the config (build the model), print it (JSON) and the workdir, then exit.",
)


def default_workdir(config, config_filename: str) -> str:
    """``./workdir/<config.name>`` (the config file's stem if it has no name)."""
    name = config.get("name", "") or Path(config_filename).stem
    return str(Path("workdir") / name)


def describe(config, workdir: str, abstract_init: bool = True) -> list[str]:
    """Checks ``config`` without training and returns the lines saying what a run would do:
    the workdir, the model (parameter count from an abstract ``jax.eval_shape`` init on the
    dataset's input shape) and the resolved learning-rate schedule.

    Raises:
      ValueError: unknown model/dataset/option, a model field the model rejects, a bad
        schedule; revjax.data.DatasetNotPreparedError for a ``tfds:`` dataset not prepared.
    """
    from revjax import data as data_lib
    from revjax import models
    from revjax.train import optim, trainer

    info = data_lib.dataset_info(config.dataset, **data_lib.dataset_kwargs(config))
    model = trainer.build_model(config, info)
    total = trainer.run_length(config, info)
    per_epoch = trainer.steps_per_epoch(config, info)
    lines = [f"workdir: {Path(workdir).absolute()}"]
    if abstract_init:
        import jax
        import jax.numpy as jnp

        def init():
            x = jnp.zeros((1, *info.image_shape), jnp.float32)
            return model.init(jax.random.key(0), x, train=False)

        try:
            variables = jax.eval_shape(init)
        except Exception as error:  # noqa: BLE001 - any init failure of a user's model config
            first = str(error).strip().splitlines()[0] if str(error).strip() else ""
            raise ValueError(
                f"model {config.model!r} with model_kwargs {dict(config.model_kwargs)} does "
                f"not initialise on input {info.image_shape}: {type(error).__name__}: {first}"
            ) from None
        lines.append(
            f"model: {config.model}, {models.count_params(variables):,} parameters, input "
            f"{tuple(info.image_shape)}, {info.num_classes} classes"
        )
    evals = configs.eval_every(config.eval_every_steps, total)
    lines.append(
        optim.describe_schedule(config.optimizer, per_epoch, total)
        + (f"; evaluation every {evals} steps" if evals else "; evaluation at the end")
    )
    return lines


def _error(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(1)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    config = FLAGS.config
    try:
        configs.apply_overrides(config, _OVERRIDES)
    except ValueError as error:
        _error(str(error))
    workdir = FLAGS.workdir or default_workdir(config, FLAGS["config"].config_filename)
    absl_logging.set_verbosity(absl_logging.WARNING)  # orbax logs every save at INFO
    from revjax.data import DatasetNotPreparedError

    if FLAGS.print_only:
        try:
            lines = describe(config, workdir)
        except DatasetNotPreparedError as error:
            lines = [f"workdir: {Path(workdir).absolute()}", f"(not checked: {error})"]
        except ValueError as error:
            _error(str(error))
        print(json.dumps(json.loads(config.to_json()), indent=2, sort_keys=True))
        print("\n".join(lines), file=sys.stderr)
        return
    from revjax.train import sharding

    sharding.maybe_initialize_distributed()
    from revjax.train import trainer

    hint = f"Rerun the same command on every process to resume from {workdir}/checkpoints."
    try:
        import jax

        lines = describe(config, workdir, abstract_init=False)
        if jax.process_index() == 0:
            print("\n".join(lines), flush=True)
        with sharding.exit_on_peer_failure(hint):
            summary = trainer.train_and_evaluate(config, workdir)
    except trainer.ReconstructionDriftError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(trainer.EXIT_RECONSTRUCTION_DRIFT)
    except DatasetNotPreparedError as error:
        print(
            f"error: {error}\n(set --config.data_dir=DIR to read prepared data elsewhere, "
            "or --config.fake_examples=N to run on random data of the same shapes)",
            file=sys.stderr,
        )
        sys.exit(trainer.EXIT_ERROR)
    except (
        ValueError,
        PermissionError,
        FloatingPointError,
        sharding.ProcessesNotReadyError,
    ) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(trainer.EXIT_ERROR)
    if summary.get("stopped_by"):
        # The trainer already printed "<SIGNAL>: saved checkpoint at step N ...".
        sys.exit(
            trainer.EXIT_INTERRUPTED
            if summary["stopped_by"] == "SIGINT"
            else trainer.EXIT_PREEMPTED
        )
    print(
        f"test accuracy {summary['test_accuracy']:.4f} (loss {summary['test_loss']:.4f}) "
        f"after {summary['steps']} steps, {summary['wall_time_s']:.1f} s"
    )
    if "mean_iou" in summary:
        per_class = ", ".join(
            f"{k[4:]}: {v:.3f}" for k, v in summary.items() if k.startswith("iou_")
        )
        print(f"mean IoU {summary['mean_iou']:.4f} (per class {per_class})")
    if summary.get("memory_line"):
        print(summary["memory_line"])
    print(f"summary: {Path(workdir) / 'summary.json'}")
    logging.debug(json.dumps(summary))


def _check_config_loads(argv: list[str]) -> None:
    """Exits with a one-line error if ``--config``'s ``get_config(arg)`` raises (ml_collections
    would print a multi-line flags error)."""
    values = [a[len("--config=") :] for a in argv if a.startswith("--config=")]
    if not values:
        return
    path, _, arg = values[-1].partition(":")
    try:
        spec = importlib.util.spec_from_file_location("_revjax_cli_config", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        module.get_config(arg) if arg else module.get_config()
    except Exception as error:  # noqa: BLE001 - any failure of the user's config file
        lines = str(error).strip().splitlines()
        _error(
            f"config {path}{':' + arg if arg else ''}: {type(error).__name__}: "
            f"{lines[0] if lines else ''}"
        )


def run(argv: list[str] | None = None) -> None:
    """The command line (``sys.argv``): ``--help`` exits 0; config overrides are applied by
    ``revjax.configs.apply_overrides`` (one-line errors), not by ml_collections."""
    argv = list(sys.argv if argv is None else argv)
    if any(a in HELP_FLAGS for a in argv[1:]):
        app.usage(shorthelp=True, writeto_stdout=True)
        sys.exit(0)
    argv, overrides = split_overrides(resolve_config_argument(argv))
    _check_config_loads(argv)
    _OVERRIDES[:] = overrides
    _ARGV[:] = argv
    app.run(main, argv=argv)


if __name__ == "__main__":
    run()
