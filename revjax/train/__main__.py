"""``python -m revjax.train [--config=<name|path>[:arg]] [--config.x=y ...] [--workdir=DIR]``.

With no arguments, trains the default config (``revnet_mini`` on digits) in
``./workdir/default``. ``--config`` takes a config name from ``revjax/configs`` (e.g.
``cifar10_revnet110``) or a path to a Python file with ``get_config``; ``:smoke`` selects the
shrunken run; ``--print_only`` prints the resolved config and exits. All logic is in
``revjax.train.trainer.train_and_evaluate``.

Exit statuses: 0 done; 1 error (bad config or input, dataset not prepared, non-finite loss,
checkpoint of another config, processes of a multi-process job started with different
configs); 3 reconstruction drift above ``drift_rtol``; 75 stopped by SIGTERM after saving a
checkpoint (requeue); 76 another process of a multi-process job died (rerun the whole job: it
resumes from the last complete checkpoint); 130 stopped by SIGINT (Ctrl-C) after saving.
"""

from __future__ import annotations

import json
import logging
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


def _one_line(error: BaseException) -> str:
    """ml_collections' override errors (e.g. "'num_step'\\nDid you mean ...") on one line."""
    text = str(error.args[0] if error.args else error)
    while len(text) > 1 and text[0] == text[-1] and text[0] in "'\"":
        text = text[1:-1]
    text = text.replace("\\n", "\n").replace("\\'", "'")
    parts = [p.strip() for p in text.splitlines() if p.strip()]
    if len(parts) > 1 and parts[1].startswith("Did you mean"):
        return f"unknown config field {parts[0]}; {parts[1][0].lower()}{parts[1][1:]}"
    return " ".join(parts)


_DEFAULT = str(configs.config_path("default"))
FLAGS = flags.FLAGS
try:  # ml_collections applies --config.x=y overrides already here
    config_flags.DEFINE_config_file(
        "config",
        _DEFAULT,
        f"Config name (one of: {', '.join(configs.names())}) or path to a .py file with "
        "get_config, optionally followed by ':smoke'.",
        lock_config=True,
    )
except (AttributeError, KeyError, TypeError, ValueError) as _error:
    sys.exit(f"error: {_one_line(_error)}")
flags.DEFINE_string("workdir", None, "Output directory (default ./workdir/<config name>).")
flags.DEFINE_bool("print_only", False, "Print the resolved config (JSON) and exit.")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    config = FLAGS.config
    if FLAGS.print_only:
        print(json.dumps(json.loads(config.to_json()), indent=2, sort_keys=True))
        return
    from revjax.train import sharding

    sharding.maybe_initialize_distributed()
    from revjax.data import DatasetNotPreparedError
    from revjax.train import trainer

    name = config.get("name", "") or Path(FLAGS["config"].config_filename).stem
    workdir = FLAGS.workdir or str(Path("workdir") / name)
    absl_logging.set_verbosity(absl_logging.WARNING)  # orbax logs every save at INFO
    hint = f"Rerun the same command on every process to resume from {workdir}/checkpoints."
    try:
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


def run() -> None:
    sys.argv = resolve_config_argument(sys.argv)
    app.run(main)


if __name__ == "__main__":
    run()
