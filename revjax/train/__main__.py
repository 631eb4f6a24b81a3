"""``python -m revjax.train [--config=<name|path>[:arg]] [--config.x=y ...] [--workdir=DIR]``.

With no arguments, trains the default config (``revnet_mini`` on digits) in
``./workdir/default``. ``--config`` takes a config name from ``revjax/configs`` (e.g.
``cifar10_revnet110``) or a path to a Python file with ``get_config``; ``:smoke`` selects the
shrunken run. All logic is in ``revjax.train.trainer.train_and_evaluate``.
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

_DEFAULT = str(configs.config_path("default"))
FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", _DEFAULT, "Config name or path[:arg].", lock_config=True)
flags.DEFINE_string("workdir", None, "Output directory (default ./workdir/<config name>).")


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


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from revjax.train import sharding

    sharding.maybe_initialize_distributed()
    from revjax.train import trainer

    config = FLAGS.config
    name = config.get("name", "") or Path(FLAGS["config"].config_filename).stem
    workdir = FLAGS.workdir or str(Path("workdir") / name)
    absl_logging.set_verbosity(absl_logging.WARNING)  # orbax logs every save at INFO
    try:
        summary = trainer.train_and_evaluate(config, workdir)
    except (ValueError, PermissionError, FloatingPointError) as error:
        sys.exit(f"error: {error}")
    if summary.get("preempted"):
        print(f"preempted at step {summary['steps']}; checkpoint saved in {workdir}")
        return
    print(
        f"test accuracy {summary['test_accuracy']:.4f} (loss {summary['test_loss']:.4f}) "
        f"after {summary['steps']} steps, {summary['wall_time_s']:.1f} s"
    )
    if summary.get("memory_line"):
        print(summary["memory_line"])
    print(f"summary: {Path(workdir) / 'summary.json'}")
    logging.debug(json.dumps(summary))


def run() -> None:
    sys.argv = resolve_config_argument(sys.argv)
    app.run(main)


if __name__ == "__main__":
    run()
