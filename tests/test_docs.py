"""The documents check: README.md, docs/, bench/README.md and results/*/README.md.

What is checked, and the rule for commands that are too long to run in a test:

- Every line of a fenced code block that starts with ``bnrank`` (backslash continuations joined,
  ``#`` comments dropped) is parsed by the CLI itself: the command exists and its options and
  their values are valid (click's ``make_context``, which runs nothing).
- Those whose verb is train, analyze or sweep, and that need no cluster or GPU (no
  ``--executor ray``, no ``--device cuda``), then run for real, in document order, in a scratch
  directory holding a copy of examples/, with TINY_RUN (train) or TINY_SWEEP (sweep) appended:
  the same command on a network of width 8 trained for 20 steps. A later command of a document
  sees what the earlier ones wrote (``bnrank analyze runs/fig1`` reads ``bnrank train``'s run).
- ``bnrank reproduce`` commands take minutes at their smallest public preset, so they are
  parsed and their experiment and preset resolved (``get_experiment``, ``resolve_preset``);
  the experiments' own tests run the whole pipeline on hidden tiny presets.
- Every ```python block runs, in document order in one namespace per document, in a scratch
  directory like the commands; ``bnrank.train`` and ``bnrank.run_sweep`` get the same tiny
  overrides appended.
- Every relative link or image of those documents resolves to a file of the repository (and an
  ``#anchor`` into a Markdown file to one of its headings), and every "docs/theory.md §N" anywhere
  in the repository's text names a section "## §N." of docs/theory.md; outside docs/ the
  reference spells the path, docs/theory.md.
- docs/columns.md lists exactly the columns of the tables the code writes, and every
  ``bnrank.…`` path named in the documents imports.
- No text of the repository speaks of its development history (HISTORY).
"""

from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

import bnrank
from bnrank.cli import app

ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted([ROOT / "README.md", ROOT / "bench" / "README.md", *(ROOT / "docs").glob("*.md"),
               *(ROOT / "results").glob("*/README.md")])
RUNNABLE_DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

TINY_RUN = ["train.phases=[{optimizer: adam, steps: 20, lr: 0.003}]", "train.stop={min_steps: 0}", "train.log_every=10",
            "model.width=8", "task.n_train=32", "task.n_test=16", "members=2"]
TINY_SWEEP = TINY_RUN[:-1] + ["analyze_points=8", "trials=1"]
NOT_HERE = ("--executor ray", "--device cuda")

FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
THEORY_REF = re.compile(r"((?:[\w./-]*/)?)theory\.md §(\d+)")


def _blocks(doc: Path, lang: str | None = None) -> list[str]:
    return [body for info, body in FENCE.findall(doc.read_text()) if lang is None or info == lang]


def commands(doc: Path) -> list[list[str]]:
    """The `bnrank ...` command lines of a document's code blocks, as argument lists (without `bnrank`)."""
    found = []
    for body in _blocks(doc):
        for line in body.replace("\\\n", " ").splitlines():
            line = line.strip()
            if line.startswith("bnrank "):
                found.append(shlex.split(line, comments=True)[1:])
    return found


def parse(args: list[str]) -> object:
    """The subcommand's click context for `args` (options and values validated; nothing runs)."""
    group = typer.main.get_command(app)
    name, *rest = args
    command = group.get_command(group.context_class(group), name)
    assert command is not None, f"no command bnrank {name}"
    return command.make_context(name, rest)


def _scratch(tmp_path: Path) -> Path:
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    return tmp_path


def _anchors(doc: Path) -> set[str]:
    """GitHub's heading anchors of a Markdown file."""
    slugs = set()
    for heading in re.findall(r"^#+ (.+)$", doc.read_text(), re.M):
        slug = "".join(c for c in heading.strip().lower() if c.isalnum() or c in " -_")
        slugs.add(slug.replace(" ", "-"))
    return slugs


def _theory_sections() -> set[str]:
    return set(re.findall(r"^## §(\d+)\.", (ROOT / "docs" / "theory.md").read_text(), re.M))


def _text_files() -> list[Path]:
    roots = ["src", "examples", "bench", "tests", "docs", "results"]
    files = [ROOT / "README.md", ROOT / "Makefile"]
    for root in roots:
        files += [p for p in (ROOT / root).rglob("*") if p.suffix in {".py", ".md", ".yaml", ".json", ".txt"}]
    return files


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_command_parses(doc):
    for args in commands(doc):
        ctx = parse(args)
        if args[0] == "reproduce":
            from bnrank.experiments import get_experiment, resolve_preset

            module = get_experiment(ctx.params["experiment"])
            resolve_preset(ctx.params["experiment"], module.PRESETS, ctx.params["preset"], {})


@pytest.mark.parametrize("doc", RUNNABLE_DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_command_runs_on_tiny_sizes(doc, tmp_path, monkeypatch):
    monkeypatch.chdir(_scratch(tmp_path))
    for args in commands(doc):
        line = " ".join(args)
        if args[0] not in ("train", "analyze", "sweep") or any(flag in line for flag in NOT_HERE):
            continue
        tiny = {"train": TINY_RUN, "sweep": TINY_SWEEP}.get(args[0], [])
        extra = [item for pair in (("--set", value) for value in tiny) for item in pair]
        res = CliRunner().invoke(app, args + extra + (["-q"] if args[0] != "analyze" else []))
        assert res.exit_code == 0, f"bnrank {line}: {res.stderr or res.output}"


@pytest.mark.parametrize("doc", RUNNABLE_DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_python_snippet_runs_on_tiny_sizes(doc, tmp_path, monkeypatch):
    snippets = _blocks(doc, "python")
    if not snippets:
        return
    monkeypatch.chdir(_scratch(tmp_path))
    train, run_sweep = bnrank.train, bnrank.run_sweep
    monkeypatch.setattr(bnrank, "train", lambda *a, overrides=(), **k: train(*a, overrides=[*overrides, *TINY_RUN], **k))
    monkeypatch.setattr(bnrank, "run_sweep",
                        lambda *a, overrides=(), **k: run_sweep(*a, overrides=[*overrides, *TINY_SWEEP], **k))
    namespace: dict = {}
    for i, code in enumerate(snippets):
        exec(compile(code, f"{doc.name} python block {i + 1}", "exec"), namespace)


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(doc):
    for target in LINK.findall(doc.read_text()):
        if re.match(r"[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        file = (doc.parent / path).resolve() if path else doc
        assert file.exists() and file.is_relative_to(ROOT), f"{doc.name}: broken link {target}"
        if anchor and file.suffix == ".md":
            assert anchor in _anchors(file), f"{doc.name}: no heading #{anchor} in {path or doc.name}"


def test_every_theory_reference_names_a_section():
    sections = _theory_sections()
    assert sections == {str(n) for n in range(1, len(sections) + 1)}
    for file in _text_files():
        for prefix, number in THEORY_REF.findall(file.read_text(errors="replace")):
            assert number in sections, f"{file.relative_to(ROOT)}: docs/theory.md §{number} does not exist"
            inside_docs = file.parent == ROOT / "docs"
            assert inside_docs or prefix.endswith("docs/"), f"{file.relative_to(ROOT)}: write docs/theory.md §{number}"


def test_the_check_sees_the_documents():
    assert any(commands(doc) for doc in RUNNABLE_DOCS)
    assert {args[0] for doc in RUNNABLE_DOCS for args in commands(doc)} >= {"train", "analyze", "sweep", "reproduce"}
    with pytest.raises(Exception, match="--no-such-option"):
        parse(["train", "x.yaml", "--no-such-option"])
    with pytest.raises(Exception, match="no command"):
        parse(["trian", "x.yaml"])


# -- docs/columns.md lists exactly the columns the code writes -----------------------------------


def documented_columns() -> dict[str, set[str]]:
    """Section name ("layers", "runs", ...) → the backticked first-column names of its table."""
    sections: dict[str, set[str]] = {}
    name = None
    for line in (ROOT / "docs" / "columns.md").read_text().splitlines():
        if line.startswith("## "):
            name = line[3:].strip()
            sections[name] = set()
        elif name and (match := re.match(r"\| `([\w.]+)` \|", line)):
            sections[name].add(match.group(1))
    return sections


@pytest.fixture(scope="module")
def tiny_sweep(tmp_path_factory):
    spec = {"name": "columns", "trials": 1, "analyze_points": 4, "analyze_curvature": False,
            "base": {"task": {"n_train": 16, "n_test": 8, "d_in": 4, "d_out": 3, "latent_dim": 3, "rank": 2, "hidden": 8},
                     "model": {"width": 6, "depth": 3},
                     "train": {"log_every": 5, "phases": [{"optimizer": "adam", "steps": 10}]}},
            "grid": {"train.lam": [0.01]}}
    return bnrank.run_sweep(spec, tmp_path_factory.mktemp("sweep") / "s", progress=False)


def test_column_reference_matches_analyze():
    import torch

    docs = documented_columns()
    net = bnrank.EnsembleMLP.init(2, [4, 6, 6, 3], seeds=[0, 1])
    res = bnrank.analyze(net, torch.randn(5, 4), Y=torch.randn(5, 3), lam=0.01)
    for table in ("layers", "points", "network"):
        assert docs[table] == set(getattr(res, table).columns), table


def test_column_reference_matches_the_sweep_and_run_tables(tiny_sweep, tmp_path):
    from conftest import tiny_config

    docs = documented_columns()
    ids = docs["sweep identifiers"]
    assert docs["runs"] == {c for c in tiny_sweep.runs.columns if "." not in c}
    assert {c for c in tiny_sweep.runs.columns if "." in c} == {"train.lam"}
    for table in ("metrics", "layers", "points", "network"):
        assert set(getattr(tiny_sweep, table).columns) == docs[table] | ids, table
    run = bnrank.train(tiny_config(), out=tmp_path / "run", progress=False)
    assert docs["metrics"] == set(run.metrics.columns) == set(bnrank.load_run(tmp_path / "run").metrics.columns)


def test_column_reference_matches_the_certificate():
    from dataclasses import fields

    from bnrank.measure.certificate import Certificate

    assert documented_columns()["certificate"] == {f"cert_{f.name}" for f in fields(Certificate)}


# -- module paths named in the documents exist ---------------------------------------------------

DOTTED = re.compile(r"`(bnrank(?:\.\w+)+)[`(]")


def resolve(path: str):
    """The module or attribute a dotted `bnrank....` path names (ImportError/AttributeError if none)."""
    import importlib

    parts = path.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr)
        return obj
    raise ImportError(path)


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_named_function_exists(doc):
    for path in DOTTED.findall(doc.read_text()):
        try:
            resolve(path)
        except (ImportError, AttributeError) as err:
            pytest.fail(f"{doc.name}: `{path}` does not exist ({err})")


def test_theory_to_code_names_a_function_for_every_row():
    rows = [line for line in (ROOT / "docs" / "theory-to-code.md").read_text().splitlines()
            if line.startswith("| ") and not line.startswith("| quantity") and not line.startswith("|---")]
    assert len(rows) >= 20
    for row in rows:
        assert DOTTED.search(row), f"no bnrank.… function in: {row}"


HISTORY = re.compile(r"\bsessions?\b|\bissue \d|\buntil session|\bearlier versions?\b|\bpreviously\b", re.I)


def test_the_repository_speaks_of_what_the_code_does_not_of_its_history():
    this = Path(__file__).resolve()
    for file in _text_files():
        if file.suffix in {".json", ".txt"} or file == this:
            continue
        for number, line in enumerate(file.read_text(errors="replace").splitlines(), 1):
            assert not HISTORY.search(line), f"{file.relative_to(ROOT)}:{number}: {line.strip()}"
