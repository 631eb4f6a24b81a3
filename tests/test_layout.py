"""Package layout: pure `revjax/families/`, Flax linen in `revjax/models/`, no import cycles.

The rule: `revjax/families/<paper>.py` builds engine layers, steps and parameter trees as pure
functions and never imports `flax`; `revjax/models/<paper>.py` owns that paper's linen modules
and registry entries. Each module is imported first in a fresh interpreter, so an import cycle
(which only shows when a cycle's member is the first one imported) cannot hide behind an import
order that happens to work.
"""

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FAMILIES = sorted((ROOT / "revjax" / "families").glob("*.py"))
MODELS = sorted((ROOT / "revjax" / "models").glob("*.py"))


def _module_name(path: Path, root: Path = ROOT) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, root: Path = ROOT) -> set[str]:
    """Absolute names of the modules `path` imports anywhere in it (relative imports resolved)."""
    name = _module_name(path, root)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def _forbidden(name: str) -> bool:
    """flax itself, or a revjax module built on it (the registry and the linen glue)."""
    return any(
        name == root or name.startswith(root + ".")
        for root in ("flax", "revjax.models", "revjax.nn", "revjax.drift", "revjax.train")
    )


def test_imported_modules_sees_every_import_form(tmp_path):
    """The AST scan catches plain, aliased, from- and relative imports of flax / revjax.models."""
    package = tmp_path / "revjax" / "families"
    package.mkdir(parents=True)
    probe = package / "probe.py"
    probe.write_text(
        "import flax.linen as nn\nfrom flax import struct\nfrom ..models import heads\n"
        "def f():\n    import revjax.nn\n"
    )
    names = imported_modules(probe, tmp_path)
    assert {"flax.linen", "flax", "revjax.models", "revjax.models.heads", "revjax.nn"} <= names
    assert all(_forbidden(n) for n in names)


@pytest.mark.parametrize("path", FAMILIES, ids=lambda p: p.name)
def test_family_modules_do_not_import_flax(path):
    """No module under revjax/families/ imports flax, the registry or the linen glue."""
    bad = sorted(name for name in imported_modules(path) if _forbidden(name))
    assert not bad, f"{path.relative_to(ROOT)} imports {bad}: move the linen code to revjax/models/"


def _import_fresh(module: str, check: str = "") -> subprocess.CompletedProcess:
    code = f"import sys\nimport {module}\n{check}"
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize("path", FAMILIES, ids=lambda p: p.name)
def test_family_module_imports_alone_without_flax(path):
    """Imported first in a fresh interpreter, a family module loads and flax stays unloaded."""
    module = _module_name(path)
    result = _import_fresh(module, "assert 'flax' not in sys.modules, sorted(sys.modules)")
    assert result.returncode == 0, result.stderr[-2000:]


@pytest.mark.parametrize(
    "module", [_module_name(p) for p in MODELS] + ["revjax.train"], ids=lambda m: m
)
def test_model_modules_and_trainer_import_first_without_cycles(module):
    """`revjax.models`, each `revjax.models.<paper>` (heads included) and `revjax.train` import
    first in a fresh interpreter; the registry then holds every model (as many as here)."""
    from revjax import models

    result = _import_fresh(module, "import revjax.models\nprint(len(revjax.models.names()))")
    assert result.returncode == 0, result.stderr[-2000:]
    assert int(result.stdout.split()[-1]) == len(models.names())


def test_trainer_imports_no_family_or_paper_module():
    """The trainer knows tasks and regularisers by name (`revjax.tasks`), no paper: it imports
    nothing from `revjax.families` and no model module beyond the registry's package face."""
    trainer = ROOT / "revjax" / "train" / "trainer.py"
    imported = imported_modules(trainer)
    papers = {p.stem for p in FAMILIES} | {p.stem for p in MODELS}
    bad = sorted(
        name
        for name in imported
        if name.startswith("revjax.families")
        or any(name == f"revjax.models.{paper}" for paper in papers - {"__init__"})
    )
    assert not bad, f"revjax/train/trainer.py imports paper modules: {bad}"


def test_trainer_and_memory_measurement_differentiate_one_loss_function():
    """The trainer's objective and `revjax.memory.model_loss` are partials of the same
    `revjax.tasks.training_loss` with the task's loss, `revjax.tasks.softmax_xent`."""
    from revjax import memory, tasks
    from revjax.train import trainer

    task = tasks.get_task("classification")
    measured, trained = memory.model_loss(None), trainer.objective(None, task)
    assert task.loss is tasks.softmax_xent and measured.args[1] is trained.args[1]
    assert trained.func is tasks.training_loss
    assert tasks.get_task("next_token").loss is tasks.softmax_xent


@pytest.mark.parametrize("path", ["revjax/train/trainer.py", "revjax/train/optim.py"])
def test_trainer_reads_config_fields_without_local_defaults(path):
    """Every config default is declared once, in revjax/configs/default.py: the trainer and
    the optimizer read fields as attributes (``config.optimizer.schedule``), never
    ``config.get(name, default)``, whose second default can disagree with the first."""
    tree = ast.parse((ROOT / path).read_text())
    local_defaults = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            target = ast.unparse(node.func.value)
            if node.func.attr == "get" and (target in ("config", "opt") or "optimizer" in target):
                local_defaults.append(f"{path}:{node.lineno}: {ast.unparse(node)}")
    assert not local_defaults, local_defaults
