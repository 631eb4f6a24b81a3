"""Checkpoints with orbax: train state + input-pipeline position + config, and safe resume.

Each checkpoint step directory holds three orbax items (``ocp.args.Composite``):

* ``state``: the train-state pytree {step, params, opt_state, batch_stats, rng} (arrays);
* ``data``: the grain iterator's ``get_state()`` (JSON), so a resumed run reads exactly the
  batches an uninterrupted one would;
* ``config``: the run's config (JSON); on resume the *whole* run-defining config is compared
  with the current one (every field except ``RUN_INDEPENDENT_FIELDS``, which change how a run
  is logged, checkpointed or laid out on devices but not its result). Any other difference is
  an ``IncompatibleCheckpointError`` naming each field and both values, unless it is in
  ``allowed`` (the trainer allows ``num_steps``/``num_epochs``: continuing for more steps) or
  the caller forces the resume (``config.force_resume``).

``Checkpointer.restore_latest`` tries the newest step first; if it cannot be read (truncated
or corrupted files, e.g. a crash during a non-atomic copy) it moves that step aside to
``<workdir>/corrupted_checkpoints/`` and falls back to the previous one, and says so."""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

__all__ = [
    "RUN_INDEPENDENT_FIELDS",
    "IncompatibleCheckpointError",
    "NoReadableCheckpointError",
    "flat_config",
    "run_defining_view",
    "config_differences",
    "Checkpointer",
]

logger = logging.getLogger(__name__)

# Config fields (dotted; a prefix covers its subfields) that do not change what a run computes:
# logging, checkpoint cadence, evaluation cadence/batch, device layout, where the data lives,
# the backprop mode (same gradients, other memory) and the resume switches themselves.
RUN_INDEPENDENT_FIELDS = (
    "name",
    "progress_bar",
    "log_every_steps",
    "checkpoint_every_steps",
    "keep_checkpoints",
    "async_checkpointing",
    "eval_every_steps",
    "eval_batch_size",
    "memory_report",
    "memory_modes",
    "data_dir",
    "mesh",
    "fsdp",
    "drift_check_every",
    "drift_rtol",
    "force_resume",
    "tensorboard",
    "model_kwargs.backprop",
)


class IncompatibleCheckpointError(ValueError):
    """The checkpoint in the workdir was written by a config with a different model."""


class NoReadableCheckpointError(RuntimeError):
    """Checkpoints exist but none of them can be restored."""


# Run-defining fields added after checkpoints were first written, with the value that older
# checkpoints (which lack them) implicitly used.
ADDED_FIELD_DEFAULTS = {
    "fake_examples": 0,
    "optimizer.warmup_steps": 0,
    "optimizer.accumulate_steps": 1,
    "optimizer.b1": 0.9,
    "optimizer.b2": 0.999,
    "optimizer.eps": 1e-8,
}


def _independent(key: str) -> bool:
    return any(key == f or key.startswith(f + ".") for f in RUN_INDEPENDENT_FIELDS)


def flat_config(config: dict[str, Any]) -> dict[str, Any]:
    """Flat {dotted field: value} of a (nested) config dict; tuples become lists."""
    flat: dict[str, Any] = {}
    for key in sorted(config):
        value = config[key]
        if isinstance(value, dict):
            flat.update({f"{key}.{k}": v for k, v in flat_config(value).items()})
        else:
            flat[key] = list(value) if isinstance(value, tuple) else value
    return flat


def run_defining_view(config: dict[str, Any]) -> dict[str, Any]:
    """Flat {dotted field: value} of every run-defining field of a config dict."""
    return {k: v for k, v in flat_config(config).items() if not _independent(k)}


def config_differences(
    saved: dict[str, Any], current: dict[str, Any], allowed: tuple[str, ...] = ()
) -> list[str]:
    """Lines "field: checkpoint X, now Y" for each run-defining field that differs.

    Args:
      saved: the config stored with the checkpoint.
      current: the config of this run.
      allowed: dotted fields whose change is accepted (e.g. ``("num_steps",)``).
    """
    a, b = run_defining_view(saved), run_defining_view(current)
    a = {**{k: v for k, v in ADDED_FIELD_DEFAULTS.items() if k in b}, **a}
    return [
        f"{key}: checkpoint {a.get(key, '<unset>')!r}, now {b.get(key, '<unset>')!r}"
        for key in sorted(set(a) | set(b))
        if a.get(key, "<unset>") != b.get(key, "<unset>") and key not in allowed
    ]


class Checkpointer:
    """Saves and restores (state, data position, config) under ``directory``.

    Args:
      directory: checkpoint root (``<workdir>/checkpoints``); created if missing.
      max_to_keep: newest checkpoints kept.
      async_save: write in a background thread (``wait()`` before exiting).
    """

    def __init__(self, directory: str | Path, *, max_to_keep: int = 3, async_save: bool = True):
        self.directory = Path(directory).absolute()
        self._options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep,
            enable_async_checkpointing=async_save,
            create=True,
            cleanup_tmp_directories=True,  # leftovers of an interrupted save
        )
        self.allowed_changes: tuple[str, ...] = ()
        self.force = False
        self.forced_differences: list[str] = []
        self._manager = self._open()

    def _open(self) -> ocp.CheckpointManager:
        return ocp.CheckpointManager(
            self.directory, options=self._options, item_names=("state", "data", "config")
        )

    def all_steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def save(self, step: int, state: Any, data_state: Any, config: dict[str, Any]) -> bool:
        """Writes checkpoint ``step`` (no-op if it already exists); returns whether saved."""
        if step in self._manager.all_steps():
            return False
        return self._manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                data=ocp.args.JsonSave(data_state),
                config=ocp.args.JsonSave(config),
            ),
            force=True,
        )

    def _restore_step(self, step: int, abstract_state: Any, config: dict[str, Any]):
        saved = self._manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
        differences = config_differences(dict(saved["config"]), config, self.allowed_changes)
        if differences and not self.force:
            raise IncompatibleCheckpointError(
                f"The checkpoint at step {step} in {self.directory} was written by a "
                "different config:\n  "
                + "\n  ".join(differences)
                + "\nUse a fresh --workdir to start a new run, restore the original values, "
                "or pass --config.force_resume=True to continue this checkpoint under the new "
                "values."
            )
        self.forced_differences = differences
        try:
            restored = self._manager.restore(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()
                ),
            )
        except Exception as error:
            self._raise_if_readable(step, error)
            raise
        return restored["state"], restored["data"]

    def _raise_if_readable(self, step: int, error: Exception) -> None:
        """A checkpoint that reads fine without a target has a different *structure* (e.g.
        optimizer options that change the optimizer state): refuse it, never discard it."""
        try:
            self._manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
        except Exception:  # noqa: BLE001 - unreadable: the caller treats it as corrupted
            return
        raise IncompatibleCheckpointError(
            f"The checkpoint at step {step} in {self.directory} is readable but its state does "
            "not match the current model/optimizer structure (for example a changed optimizer "
            f"option such as grad_clip_norm or weight_decay): {str(error).splitlines()[0][:300]}"
            "\nUse a fresh --workdir, or restore the original values."
        ) from error

    def _move_aside(self, step: int) -> Path:
        target = self.directory.parent / "corrupted_checkpoints" / f"{step}_{int(time.time())}"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(self.directory / str(step)), str(target))
        self._manager.close()
        self._manager = self._open()
        return target

    def restore_latest(
        self, abstract_state: Any, config: dict[str, Any]
    ) -> tuple[Any, Any, int, list[int]] | None:
        """Restores the newest readable checkpoint.

        Args:
          abstract_state: pytree of ``jax.ShapeDtypeStruct`` (with shardings) or arrays
            giving the structure to restore into.
          config: the current config as a dict (compared with ``config_differences``; set
            ``allowed_changes`` / ``force`` on the instance to relax the comparison).

        Returns:
          None when there is no checkpoint, else (state, data_state, step, corrupted steps
          that were skipped and moved aside).

        Raises:
          IncompatibleCheckpointError: the checkpoint's run-defining config differs.
          NoReadableCheckpointError: checkpoints exist but none can be read.
        """
        skipped: list[int] = []
        for step in sorted(self._manager.all_steps(), reverse=True):
            try:
                state, data_state = self._restore_step(step, abstract_state, config)
            except IncompatibleCheckpointError:
                raise
            except Exception as error:  # noqa: BLE001 - any read failure means "unusable"
                target = self._move_aside(step) if jax.process_index() == 0 else "(left)"
                logger.warning(
                    "Checkpoint at step %d is unreadable (%s: %s); moved it to %s and falling "
                    "back to the previous checkpoint.",
                    step,
                    type(error).__name__,
                    str(error).splitlines()[0][:200] if str(error) else "",
                    target,
                )
                skipped.append(step)
                continue
            return state, data_state, step, skipped
        if skipped:
            raise NoReadableCheckpointError(
                f"No readable checkpoint in {self.directory}; unreadable steps {skipped} were "
                "moved to corrupted_checkpoints/. Start a fresh run or repair them."
            )
        return None

    def wait(self) -> None:
        """Blocks until background saves are on disk."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()
