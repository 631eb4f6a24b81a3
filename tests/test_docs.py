"""The documentation cannot rot: the site builds with warnings as errors, and every code block of
README.md and of the pages under docs/ is run or covered by a named test.

Convention for fenced code blocks (README.md and docs/**/*.md; fences may be indented):

- ```python: executed. The python blocks of one page run in order in one namespace, in a fresh
  subprocess (JAX's defaults, float32, as a user runs them; XLA -O0 as in the rest of the
  suite), with the repository on PYTHONPATH and a temporary working directory; each page has
  PAGE_TIMEOUT seconds.
- ```bash / ```sh / ```shell / ```console: shell commands are not executed here (they install
  packages, train for hours, or need a cluster or several processes). Each must be preceded,
  on the line just above the fence, by `<!-- covered-by: tests/FILE.py::TEST -->` naming the
  test that runs what it shows (or `.ci/run` for the install and test commands, which CI runs
  verbatim); this test checks that the named test exists. In addition, every command line
  `python -m revjax.train ...` in a shell block is run with `--print_only` (its config and
  every override must resolve), and every `python experiments/SCRIPT.py ARGS` has its ARGS
  parsed by that script's own argument parser.
- A block that must not run is written as ```text (also: yaml, json, toml, ini), with the
  reason in the surrounding prose. An untagged fence, or any other language, fails the test.

The site itself: `mkdocs build --strict` (mkdocs.yml at the root; tables and plots of the
results pages are generated from experiments/results/ by docs/hooks/results.py) into a
temporary directory.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").rglob("*.md")])
PAGE_TIMEOUT = 300
EXECUTED = {"python"}
SHELL = {"bash", "sh", "shell", "console"}
NOT_RUN = {"text", "yaml", "json", "toml", "ini"}
FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<ticks>`{3,})(?P<lang>[\w+-]*)[^\n]*$")
COVERED_BY = re.compile(r"^\s*<!-- covered-by: (?P<target>\S+) -->\s*$")


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def code_blocks(path: Path) -> list[dict]:
    """[{"lang", "code", "line" (1-based, of the opening fence), "before" (the line above)}]."""
    return parse_blocks(path.read_text(), _rel(path))


def parse_blocks(text: str, name: str) -> list[dict]:
    """`code_blocks` of markdown `text` (`name` for error messages)."""
    lines = text.splitlines()
    blocks, i = [], 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        indent, ticks = match["indent"], match["ticks"]
        end = i + 1
        while end < len(lines) and not re.match(rf"^{indent}{ticks}\s*$", lines[end]):
            end += 1
        if end == len(lines):
            raise AssertionError(f"{name}:{i + 1}: code fence never closed")
        body = [ln[len(indent) :] if ln.startswith(indent) else ln for ln in lines[i + 1 : end]]
        blocks.append(
            {
                "lang": match["lang"].lower(),
                "code": "\n".join(body) + "\n",
                "line": i + 1,
                "before": lines[i - 1] if i > 0 else "",
            }
        )
        i = end + 1
    return blocks


def _pages_with(langs: set[str]) -> list[Path]:
    return [p for p in PAGES if any(b["lang"] in langs for b in code_blocks(p))]


def _id(path: Path) -> str:
    return _rel(path)


def _shell_commands(langs=SHELL) -> list[tuple[str, int, str]]:
    """(page, line, command) for every command line of every shell block (continuations joined,
    `$ ` prompts and comments dropped)."""
    out = []
    for page in PAGES:
        for block in code_blocks(page):
            if block["lang"] not in langs:
                continue
            joined = block["code"].replace("\\\n", " ")
            for offset, line in enumerate(joined.splitlines()):
                line = line.strip().removeprefix("$ ")
                if line and not line.startswith("#"):
                    out.append((_rel(page), block["line"] + 1 + offset, line))
    return out


def test_every_fence_follows_the_convention():
    """Known languages only; every shell block names a covering test that exists."""
    problems = []
    for page in PAGES:
        for block in code_blocks(page):
            where = f"{_rel(page)}:{block['line']}"
            lang = block["lang"]
            if lang not in EXECUTED | SHELL | NOT_RUN:
                problems.append(f"{where}: fence language {lang!r} is not one of the convention's")
            if lang not in SHELL:
                continue
            cover = COVERED_BY.match(block["before"])
            if not cover:
                problems.append(f"{where}: shell block without a `<!-- covered-by: ... -->` line")
                continue
            target = cover["target"]
            if target == ".ci/run":
                continue
            file, _, test = target.partition("::")
            source = ROOT / file
            if not source.is_file() or not re.search(
                rf"^(async )?def {re.escape(test)}\(", source.read_text(), re.MULTILINE
            ):
                problems.append(f"{where}: covering test {target} does not exist")
    assert not problems, "\n".join(problems)


def test_convention_parser_sees_the_blocks():
    """The parser finds README's python and shell blocks (guards the other tests' inputs)."""
    readme = code_blocks(ROOT / "README.md")
    assert sum(b["lang"] == "python" for b in readme) >= 3
    assert sum(b["lang"] == "bash" for b in readme) >= 2
    assert all(b["before"].startswith("<!-- covered-by:") for b in readme if b["lang"] == "bash")


@pytest.mark.parametrize("page", _pages_with(EXECUTED), ids=_id)
def test_python_blocks_run(page, tmp_path):
    """All python blocks of the page, in order, in one namespace, in a fresh interpreter."""
    parts = []
    for block in code_blocks(page):
        if block["lang"] in EXECUTED:
            header = f"# ---- {_rel(page)}:{block['line']}\n"
            parts.append(header + block["code"])
    script = tmp_path / "page.py"
    script.write_text("\n".join(parts))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_ENABLE_X64": "0", "MPLBACKEND": "Agg"}
    result = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=PAGE_TIMEOUT,
    )
    assert result.returncode == 0, (
        f"{_rel(page)}: a python block failed\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
    )


# Paths in documented commands that stand for the user's directories.
PLACEHOLDER = r"=(DIR|/shared/runs/\S+|gs://\S+|runs/\S+|/tmp/\S+)$"
TRAIN_COMMANDS = [c for c in _shell_commands() if "python -m revjax.train " in c[2] + " "]


def _train_argv(command: str, tmp_path: Path) -> list[str] | None:
    """The `python -m revjax.train` arguments of a documented command line (placeholders such as
    DIR replaced by a temporary directory), or None when the line launches something else."""
    words = shlex.split(command, comments=True)
    for i in range(len(words) - 2):
        if words[i : i + 3] == ["python", "-m", "revjax.train"]:
            args = []
            for word in words[i + 3 :]:
                if word in ("&&", ";", "|", ">", "2>&1"):
                    break
                args.append(re.sub(PLACEHOLDER, f"={tmp_path}", word))
            return args
    return None


@pytest.mark.parametrize("page,line,command", TRAIN_COMMANDS, ids=lambda v: str(v)[:60])
def test_documented_train_commands_resolve(page, line, command, tmp_path):
    """Every documented `python -m revjax.train ...` resolves its config and overrides
    (`--print_only`, exit status 0)."""
    argv = _train_argv(command, tmp_path)
    assert argv is not None
    argv = [a for a in argv if a != "--print_only"] + ["--print_only"]
    result = subprocess.run(
        [sys.executable, "-m", "revjax.train", *argv],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, f"{page}:{line}: {command}\n{result.stderr[-3000:]}"


EXPERIMENT_COMMANDS = [c for c in _shell_commands() if re.search(r"\bexperiments/\w+\.py", c[2])]


def test_documented_experiment_commands_parse(monkeypatch):
    """Each documented `python experiments/SCRIPT.py ARGS` is accepted by SCRIPT's parser
    (the scripts build their parser in main(); parsing stops the call before any work)."""
    import importlib.util

    assert EXPERIMENT_COMMANDS
    monkeypatch.syspath_prepend(str(ROOT / "experiments"))
    for var in ("XLA_FLAGS", "JAX_DISABLE_MOST_OPTIMIZATIONS"):  # some scripts set these
        monkeypatch.setenv(var, os.environ.get(var, ""))

    class Parsed(Exception):
        pass

    original = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, args=None, namespace=None):
        original(self, args, namespace)  # SystemExit(2) on an unknown argument
        raise Parsed

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
    for page, line, command in EXPERIMENT_COMMANDS:
        words = shlex.split(command, comments=True)
        at = next(i for i, w in enumerate(words) if re.fullmatch(r"experiments/\w+\.py", w))
        args = []
        for word in words[at + 1 :]:
            if word in ("&&", ";", "|"):
                break
            args.append(word)
        name = Path(words[at]).stem
        spec = importlib.util.spec_from_file_location(name, ROOT / "experiments" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        monkeypatch.setattr(sys, "argv", [words[at], *args])
        try:
            if "argv" in module.main.__code__.co_varnames[: module.main.__code__.co_argcount]:
                module.main(args)
            else:
                module.main()
        except Parsed:
            continue
        except SystemExit as exit_:
            pytest.fail(f"{page}:{line}: {command!r} is rejected by its parser ({exit_})")
        pytest.fail(f"{page}:{line}: {name}.main() did not parse arguments")


def test_readme_is_an_entrance():
    """README stays short (at most ~200 lines) and its test command is the one .ci/run runs."""
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 200
    ci = (ROOT / ".ci" / "run").read_text()
    command = "python -m pytest -n 2"
    assert command in readme and re.search(rf"^{re.escape(command)}$", ci, re.MULTILINE)
    assert "ruff check" in ci and "ruff format --check" in ci


def test_docs_build_strict(tmp_path):
    """`mkdocs build --strict`: a broken link, an unknown reference, a docstring that
    mkdocstrings cannot parse, a missing results file or an unknown results table fails."""
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1", "MPLBACKEND": "Agg"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-6000:]
    site = tmp_path / "site"
    results = (site / "results" / "memory" / "index.html").read_text()
    assert "<!-- results:" not in results and "<table>" in results
    assert (site / "results" / "memory_vs_depth.png").stat().st_size > 10_000
    api = (site / "api" / "engine" / "index.html").read_text()
    assert "InvertibleStep" in api and "reconstruction_error" in api


def test_results_hook_renders_every_marker_and_fails_on_unknown_ones():
    """Each `<!-- results: NAME -->` in docs/results names a table the hook renders from the
    committed JSON; an unknown name is an error, not a silently empty table."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("results_hook", ROOT / "docs/hooks/results.py")
    hook = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hook)
    used = set()
    for page in (ROOT / "docs").rglob("*.md"):
        used |= set(hook.MARKER.findall(page.read_text()))
    assert used and used <= set(hook.TABLES), used - set(hook.TABLES)
    for name in used:
        rendered = hook.TABLES[name]()
        assert rendered.count("\n|") >= 2, name  # a header, a rule and at least one row

    class Page:
        class file:
            src_uri = "x.md"

    with pytest.raises(KeyError, match="unknown results table"):
        hook.on_page_markdown("<!-- results: no_such_table -->", Page, None, None)
    drift = hook.TABLES["reconstruction_drift"]()
    assert "Hamiltonian (h = 0.1)" in drift  # the h the code uses, read from the JSON


def test_readme_layout_names_every_module_and_only_existing_paths():
    """README's "Where things are" block names every top-level module and package of revjax
    (a new module must be placed there) and no path that does not exist."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Where things are", 1)[1]
    block = next(b for b in parse_blocks(section, "README.md") if b["lang"] == "text")["code"]
    named = set()
    for line in block.splitlines():
        words = re.findall(r"[\w/.]+(?:\.py|/)(?=[,\s]|$)", line.split("  ")[0] + " ")
        folder = ""
        for word in words:
            if "/" in word.rstrip("/"):
                folder = word.rsplit("/", 1)[0] + "/" if word.endswith(".py") else ""
                path = word
            else:
                path = folder + word
            named.add(path.rstrip("/"))
    missing = sorted(p for p in named if not (ROOT / p).exists())
    assert not missing, f"README's layout names paths that do not exist: {missing}"
    modules = {f"revjax/{p.name}" for p in (ROOT / "revjax").glob("*.py") if p.stem != "__init__"}
    packages = {
        f"revjax/{p.name}" for p in (ROOT / "revjax").iterdir() if (p / "__init__.py").is_file()
    }
    unnamed = sorted((modules | packages) - named)
    assert not unnamed, f"README's layout does not place: {unnamed}"
