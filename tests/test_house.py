"""The house's layout rules (issue 30), checked from the source: no import circle among midtrain's modules (lazy
imports inside functions included), the executors are leaves that only the commands import, and nothing imports
the CLI."""

import glob
import os
import re

import pytest

from support import REPO

pytestmark = pytest.mark.unit


def import_graph() -> dict[str, set[str]]:
    """module -> the midtrain modules it imports anywhere in its file."""
    mods = {}
    for f in glob.glob(os.path.join(REPO, "midtrain", "**", "*.py"), recursive=True):
        m = os.path.relpath(f, REPO)[:-3].replace(os.sep, ".")
        mods[m[:-9] if m.endswith(".__init__") else m] = f
    graph = {m: set() for m in mods}
    for m, f in mods.items():
        text = open(f).read()
        for pkg, names in re.findall(r"^\s*from (midtrain[\w.]*) import ([^\n]+)", text, re.M):
            targets = [pkg] + [f"{pkg}.{n}" for n in re.split(r"[,()\s]+", names) if f"{pkg}.{n}" in mods]
            graph[m] |= {t for t in targets if t in mods and t != m}
        graph[m] |= {t for t in re.findall(r"^\s*import (midtrain[\w.]*)", text, re.M) if t in mods and t != m}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_circle_among_the_modules():
    graph = import_graph()
    assert len(graph) > 50 and "midtrain.study.states" in graph["midtrain.study.report"]
    assert cycles(graph) == []
    planted = {**graph, "midtrain.study.folder": graph["midtrain.study.folder"] | {"midtrain.study.states"}}
    assert ["midtrain.study.folder", "midtrain.study.states"] in cycles(planted)  # the check sees a circle


def test_the_executors_are_leaves_and_nothing_imports_the_cli():
    graph = import_graph()
    assert "midtrain.study.slurm" in graph["midtrain.study.commands"]  # (the check reads the real imports)
    commands = {"midtrain.cli", "midtrain.study.commands"}  # the command layer: the CLI and the study commands
    for leaf, allowed in (("midtrain.study.local", commands | {"midtrain.demo"}),
                          ("midtrain.study.slurm", commands), ("midtrain.cli", {"midtrain.__main__"})):
        importers = {m for m, deps in graph.items() if leaf in deps}
        assert importers <= allowed, (leaf, importers - allowed)


def test_step_kinds_are_one_table():
    """A step kind is one entry in study.kinds.KINDS: the plan's kinds, the spec's slurm sections and the training
    kinds come from it, and the command line, the done file and the report's reading dispatch on it (no chain of
    `step.kind ==` in the modules that used to hold one)."""
    from midtrain.study import kinds, plan, resources

    assert plan.KINDS == tuple(kinds.KINDS) and resources.SECTIONS is kinds.SECTIONS
    assert resources.TRAINING == ("pretrain", "midtrain") and all(callable(k.command) for k in kinds.KINDS.values())
    for module in ("steps", "report"):
        text = open(os.path.join(REPO, "midtrain", "study", f"{module}.py")).read()
        assert not re.search(r"step\.kind (==|in) ", text), module


def test_a_module_over_450_lines_says_why():
    """The house's size rule: a module past ~450 lines states its reason in its docstring ("Size ...")."""
    import ast

    long = {}
    for f in glob.glob(os.path.join(REPO, "midtrain", "**", "*.py"), recursive=True):
        text = open(f).read()
        if text.count("\n") > 470:
            long[os.path.relpath(f, REPO)] = "Size (" in (ast.get_docstring(ast.parse(text)) or "")
    assert long and all(long.values()), long
