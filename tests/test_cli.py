"""The command line `python -m revjax.train`: overrides of every field a user may set, one-line
errors naming the full dotted path and the nearest valid one, schedules that follow the run
length, `--print_only` checks, `--help`, periodic evaluation by default, inference without the
training data, and a quiet multi-process launch.

Override parsing is tested in process (`revjax.configs.apply_overrides`, what the CLI calls);
a few subprocess runs check the command line end to end (seconds each, no training).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from revjax import configs
from revjax.train import checkpointing, inference, launch, optim
from revjax.train.__main__ import split_overrides

ROOT = Path(__file__).resolve().parents[1]


def _cli(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "revjax.train", *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def _override(name: str, *overrides: str, arg: str | None = None):
    """configs.load_config(name, arg) with `--config.<path>=<value>` words applied."""
    config = configs.load_config(name, arg)
    config.lock()
    _, pairs = split_overrides(["prog", *overrides])
    return configs.apply_overrides(config, pairs)


# ----------------------------------------------------------------------------- overrides


def test_none_default_fields_take_command_line_values():
    """data_dir (a str placeholder, None by default) takes a value under every config."""
    for name in ("default", "cifar10_revnet110", "zoo"):
        arg = "revnet38" if name == "zoo" else None
        config = _override(name, "--config.data_dir=/data/tfds", arg=arg)
        assert config.data_dir == "/data/tfds"
        assert config.to_json()  # still serialisable (config.json)
    assert configs.load_config("default").data_dir is None
    # declared str: a directory named like a number stays a string
    assert _override("default", "--config.data_dir=2024").data_dir == "2024"


def test_model_fields_of_the_chosen_model_are_settable():
    """Any field of the chosen model, predefined by the config or not, parsed with the type of
    the model's default; the model named by --config.model decides, whatever the order."""
    config = _override("cifar10_revnet110", "--config.model_kwargs.stem_width=4", arg="smoke")
    assert config.model_kwargs.stem_width == 4 and isinstance(config.model_kwargs.stem_width, int)
    config = _override("default", "--config.model_kwargs.units=(1, 2)")
    assert config.model_kwargs.units == (1, 2)
    config = _override("default", "--config.model_kwargs.units", "3")
    assert config.model_kwargs.units == (3,)
    config = _override("default", "--config.model_kwargs.stem_width=8", "--config.model=revnet38")
    assert config.model == "revnet38" and config.model_kwargs.stem_width == 8
    with pytest.raises(ValueError) as error:
        _override("default", "--config.model_kwargs.widht=3")
    assert str(error.value) == (
        "unknown config field 'model_kwargs.widht' (model 'revnet_mini'); did you mean "
        '"model_kwargs.widths" instead of "model_kwargs.widht"?'
    )


def test_dataset_options_of_the_chosen_dataset_are_settable():
    config = _override("default", "--config.dataset_options.canvas=16")
    assert config.dataset_options.canvas == 16
    config = _override("cifar10_revnet110", "--config.dataset_options.pad=0")
    assert config.dataset_options.pad == 0
    config = _override("video_hyperbolic3d", "--config.dataset_options.frames=4")
    assert config.dataset_options.frames == 4
    config = _override("default", "--config.dataset=cifar10", "--config.dataset_options.pad=2")
    assert config.dataset_options.pad == 2
    with pytest.raises(ValueError, match=r"'dataset_options.image_size' \(dataset 'digits'\)"):
        _override("default", "--config.dataset_options.image_size=16")


@pytest.mark.parametrize(
    "name,override,message",
    [
        (
            "cifar10_revnet110",
            "--config.num_step=5",
            'unknown config field \'num_step\'; did you mean "num_steps" instead of "num_step"?',
        ),
        (
            "default",
            "--config.learning_rate=0.05",
            "unknown config field 'learning_rate'; did you mean \"optimizer.learning_rate\" "
            'instead of "learning_rate"?',
        ),
        (
            "lm_pydoc",
            "--config.optimizer.learnig_rate=0.05",
            "unknown config field 'optimizer.learnig_rate'; did you mean "
            '"optimizer.learning_rate" instead of "optimizer.learnig_rate"?',
        ),
        ("default", "--config.num_steps=abc", "config field 'num_steps' takes an int, got 'abc'"),
        ("default", "--config.fsdp=maybe", "config field 'fsdp' takes a bool, got 'maybe'"),
    ],
)
def test_config_errors_are_one_line_with_the_full_dotted_path(name, override, message):
    with pytest.raises(ValueError) as error:
        _override(name, override)
    assert str(error.value) == message


def test_command_line_end_to_end(tmp_path):
    """The reported commands: data_dir and typos under a non-default config, --help exits 0,
    --print_only checks the model and shows the workdir and schedule."""
    out = _cli("--config=cifar10_revnet110:smoke", "--config.data_dir=DIR", "--print_only")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["data_dir"] == "DIR"
    out = _cli("--config=cifar10_revnet110:smoke", "--config.num_step=5", cwd=tmp_path)
    assert out.returncode == 1 and out.stderr.strip() == (
        'error: unknown config field \'num_step\'; did you mean "num_steps" instead of "num_step"?'
    )
    assert not (tmp_path / "workdir").exists()
    out = _cli("--help")
    assert out.returncode == 0 and "cifar10_revnet110" in out.stdout
    out = _cli("--config.model_kwargs.units=(0,)", "--print_only")
    assert out.returncode == 1 and out.stdout == ""
    assert out.stderr.strip().count("\n") == 0 and out.stderr.startswith("error: units")
    out = _cli(
        "--config=default:smoke", f"--workdir={tmp_path / 'w'}", "--config.num_steps=3000",
        "--print_only",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert f"workdir: {tmp_path / 'w'}" in out.stderr
    assert "model: revnet_mini, " in out.stderr
    assert "lr 0.1 -> 0.01 at step 1500 -> 0.001 at step 2300" in out.stderr
    assert "evaluation every 300 steps" in out.stderr
    out = _cli("--config=zoo", "--print_only")
    assert out.returncode == 1 and out.stderr.count("\n") == 1 and "zoo needs a model" in out.stderr


# ----------------------------------------------------------------------------- schedules


def _schedule(config, steps_per_epoch, total):
    return optim.make_schedule(config.optimizer, steps_per_epoch, total)


def test_schedule_follows_an_overridden_run_length():
    """Boundaries are fractions of the run: with num_steps=3000 RevNet's decays come at 1500
    and 2250 (not at 40k/60k, nor stuck at the final rate)."""
    config = _override("cifar10_revnet110", "--config.num_steps=3000")
    eta = _schedule(config, 500, 3000)
    assert [float(eta(s)) for s in (0, 1499, 1500, 2249, 2250, 2999)] == pytest.approx(
        [0.1, 0.1, 0.01, 0.01, 0.001, 0.001]
    )
    assert optim.describe_schedule(config.optimizer, 500, 3000) == (
        "schedule: piecewise, lr 0.1 -> 0.01 at step 1500 -> 0.001 at step 2250; warmup 0; "
        "3000 steps"
    )


@pytest.mark.parametrize(
    "name,steps_per_epoch,total,boundaries",
    [
        ("default", 22, 660, [330, 506]),  # epochs 15 and 23 of 30
        ("cifar10_revnet110", 500, 80_000, [40_000, 60_000]),
        ("cifar10_hamiltonian74", 500, 80_000, [40_000, 60_000]),
        ("cifar100_revnet110", 500, 80_000, [40_000, 60_000]),
        ("stl10_hamiltonian74", 50, 20_000, [10_000, 15_000]),
        ("cifar10_revup110", 390, 78_000, [39_000, 58_500]),  # epochs 100 and 150 of 200
    ],
)
def test_schedules_keep_the_papers_boundaries_at_their_default_length(
    name, steps_per_epoch, total, boundaries
):
    config = configs.load_config(name)
    assert optim.piecewise_boundaries(config.optimizer, steps_per_epoch, total) == boundaries


def test_halving_follows_the_run_length():
    """LeanResNet halves every 60 of 300 epochs: 1/5 of the run, whatever its length."""
    config = configs.load_config("cifar10_lean_b_explicit_rd")
    assert optim.halving_period(config.optimizer, 500, 150_000) == 30_000
    assert optim.halving_period(config.optimizer, 500, 1000) == 200
    config.optimizer.halve_every_fraction = 0.0
    with pytest.raises(ValueError, match="halve_every_fraction=0.0 gives 0 steps"):
        optim.halving_period(config.optimizer, 5, 10)
    config.optimizer.boundaries_fractions = (2,)
    with pytest.raises(ValueError, match="boundaries_fractions must lie in"):
        optim.piecewise_boundaries(config.optimizer, 1, 9)


def test_a_config_saved_before_a_field_existed_loads_with_the_value_it_used():
    """`revjax.train.load` rebuilds the optimizer from a workdir's saved config; one written
    before optimizer.b1/b2/eps (or warmup/accumulation) were declared gets the values that
    run used, and builds."""
    saved = configs.load_config("zoo", "lean_b_mobilenet").to_dict()
    for dotted in checkpointing.ADDED_FIELD_DEFAULTS:
        *parents, field = dotted.split(".")
        node = saved
        for parent in parents:
            node = node[parent]
        del node[field]
    config = inference.config_from_json(json.loads(json.dumps(saved)))
    assert (config.optimizer.b1, config.optimizer.eps, config.fake_examples) == (0.9, 1e-8, 0)
    optim.make_optimizer(config, 10, 100)


def test_periodic_evaluation_is_on_for_long_runs():
    assert configs.load_config("default").eval_every_steps == -1
    assert configs.eval_every(-1, 3000) == 300
    assert configs.eval_every(-1, 999) == 0
    assert configs.eval_every(0, 3000) == 0
    assert configs.eval_every(70, 3000) == 70
    assert configs.load_config("cifar10_revnet110", "smoke").eval_every_steps == 0


# ----------------------------------------------------------------------------- inference


def test_load_and_predict_in_a_new_process_without_the_registered_arrays(tmp_path):
    """A run on registered numpy arrays loads, predicts and evaluates in a process that never
    registered them (model_info.json); the auto evaluation period (-1) of a 2-step run is
    "at the end only"."""
    from revjax import data
    from revjax.train import trainer

    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 6, 6, 1)).astype(np.float32)
    y = np.arange(16) % 3
    data.register_arrays("cli_mine", (x, y), (x[:8], y[:8]))
    config = configs.load_config("default", "smoke")
    config.update(
        dataset="cli_mine", global_batch_size=8, eval_batch_size=8, num_steps=2,
        memory_report=False, drift_check_every=0, tensorboard=False, progress_bar=False,
        checkpoint_every_steps=0, log_every_steps=1,
    )  # fmt: skip
    config.model_kwargs.widths, config.model_kwargs.units = (4,), (1,)
    workdir = tmp_path / "run"
    trainer.train_and_evaluate(config, workdir)
    info = json.loads((workdir / "model_info.json").read_text())
    assert info["image_shape"] == [6, 6, 1] and info["num_classes"] == 3
    tests = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in tests if r.get("split") == "test"] == [2]
    script = (
        "import json, sys, numpy as np\n"
        "from revjax.train import evaluate, load, predict\n"
        "w = sys.argv[1]\n"
        "model, variables, config = load(w)\n"
        "x = np.zeros((5, 6, 6, 1), np.float32)\n"
        "print(json.dumps({'shape': predict(w, x).shape,\n"
        "  'report': evaluate(w, (x, np.zeros(5, int)))}))\n"
        "try:\n"
        "    predict(w, np.zeros((2, 8, 8, 1)))\n"
        "except ValueError as e:\n"
        "    print(e)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script, str(workdir)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    first, second = out.stdout.strip().splitlines()[-2:]
    result = json.loads(first)
    assert result["shape"] == [5, 3]
    assert set(result["report"]) >= {"loss", "accuracy"}
    assert "takes (6, 6, 1)" in second


# ----------------------------------------------------------------------------- launch


def test_launch_quiets_info_logs_but_keeps_the_users_choice():
    env = launch.process_env({}, 0, 2, 1234, None)
    assert env["TF_CPP_MIN_LOG_LEVEL"] == "1"
    env = launch.process_env({"TF_CPP_MIN_LOG_LEVEL": "0"}, 0, 2, 1234, None)
    assert env["TF_CPP_MIN_LOG_LEVEL"] == "0"


def test_launch_drops_gloos_connection_lines_only(tmp_path):
    import io

    script = (
        "print('[Gloo] Rank 0 is connected to 1 peer ranks. Expected number of connected peer "
        "ranks is : 1'); print('[Gloo] connection refused'); print('step 1')"
    )
    out = io.StringIO()
    assert launch.launch([sys.executable, "-c", script], 1, out=out) == 0
    assert out.getvalue().splitlines() == ["[0] [Gloo] connection refused", "[0] step 1"]
    out = io.StringIO()
    assert launch.launch([sys.executable, "-c", script], 1, out=out, verbose=True) == 0
    assert len(out.getvalue().splitlines()) == 3


def test_split_overrides_takes_absl_forms():
    argv = ["p", "--config.eval_every_steps", "-1", "--config.fsdp", "--print_only"]
    argv += ["--config.seed", "3", "--config.name=x=y"]
    rest, pairs = split_overrides(argv)
    assert rest == ["p", "--print_only"]
    assert pairs == [("eval_every_steps", "-1"), ("fsdp", "true"), ("seed", "3"), ("name", "x=y")]


def test_unknown_model_is_one_line():
    with pytest.raises(ValueError, match="nope") as error:
        _override("default", "--config.model=nope", "--config.model_kwargs.units=3")
    assert "\n" not in str(error.value)
