"""The docs run: every Python example of README.md and docs/*.md executes, and every flag a shell example
passes to one of the project's programs exists in that program's argument parser.

Python examples run one block at a time, each in a fresh namespace with a temporary working folder. A hub
name in quotes (`"bert-base-cased"`, `"roberta-base"`, ...; see `HUB_SUBSTITUTES`) is replaced by a tiny
random local checkpoint of the same family, so nothing downloads. A comment line right before a block
changes how it runs:

    <!-- example: not run (the reason) -->   skipped, the reason in the skip message
    <!-- example: slow -->                   marked slow (trains, exports, or takes more than a few seconds)

Flags: a shell block's command (continuation lines joined, comments dropped) that calls a program of this
project (`python -m pretrain`, `python -m finetune.X`, `accelerate launch ... -m finetune.X`, the
`charbert-*` console scripts, `python -m benchmarks.X`, `python experiments/X.py`, `python -m charbert.X`)
has each of its `--flags` looked up in the parser the program builds, captured in-process; inline code spans
in the prose that call a program are checked the same way. A doc that drifts from the code fails here.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import importlib.util
import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

# Hub names an example may use, and the family of the tiny local checkpoint that stands for each.
HUB_SUBSTITUTES = {
    "bert-base-cased": "bert",
    "bert-base-uncased": "bert",
    "google-bert/bert-base-cased": "bert",
    "roberta-base": "roberta",
    "FacebookAI/roberta-base": "roberta",
    "FacebookAI/xlm-roberta-base": "xlm-roberta",
    "almanach/camembert-base": "camembert",
    "microsoft/deberta-v3-base": "deberta-v2",
    "answerdotai/ModernBERT-base": "modernbert",
    "google/electra-base-discriminator": "electra",
    "sentence-transformers/all-MiniLM-L6-v2": "bert",
}

# Programs that hand the flags they do not know to a task program (parse_known_args): those flags are checked
# against the task programs' parsers too.
PASSTHROUGH = {
    "finetune.robustness": ("finetune.glue", "finetune.ner", "finetune.pos", "finetune.squad"),
    "experiments/onnx_parity.py": ("finetune.glue", "finetune.ner", "finetune.pos", "finetune.squad"),
}

MARKER = re.compile(r"<!--\s*example:\s*(.*?)\s*-->")
FENCE = re.compile(r"^(\s*)```\s*([\w+-]*)\s*$")
SHELL_LANGS = {"bash", "sh", "shell", "console", "zsh"}


@dataclass
class Block:
    doc: Path
    line: int  # 1-based line of the opening fence
    lang: str
    text: str
    marker: str  # the example marker's text right before the block, or ""

    @property
    def where(self) -> str:
        return f"{self.doc.relative_to(ROOT)}:{self.line}"


def read_blocks(doc: Path) -> list[Block]:
    blocks, lines = [], doc.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, lang, start = m.group(1), m.group(2).lower(), i
        body = []
        i += 1
        while i < len(lines) and not re.match(r"^\s*```\s*$", lines[i]):
            body.append(lines[i][len(indent):] if lines[i].startswith(indent) else lines[i].lstrip())
            i += 1
        marker = ""
        j = start - 1
        while j >= 0 and not lines[j].strip():
            j -= 1
        if j >= 0 and (mk := MARKER.search(lines[j])):
            marker = mk.group(1)
        blocks.append(Block(doc, start + 1, lang, "\n".join(body) + "\n", marker))
        i += 1
    return blocks


def prose_lines(doc: Path) -> list[tuple[int, str]]:
    """The lines outside fenced blocks, numbered from 1."""
    out, inside = [], False
    for n, line in enumerate(doc.read_text(encoding="utf-8").splitlines(), 1):
        if FENCE.match(line) or (inside and re.match(r"^\s*```\s*$", line)):
            inside = not inside
            continue
        if not inside:
            out.append((n, line))
    return out


# ---- Python examples ---------------------------------------------------------------------------------


def python_examples():
    params = []
    for doc in DOCS:
        for block in read_blocks(doc):
            if block.lang not in ("python", "py"):
                continue
            marks = []
            if block.marker.startswith("not run"):
                reason = block.marker[len("not run"):].strip(" ():") or "marked not run"
                marks.append(pytest.mark.skip(reason=f"{block.where}: not run: {reason}"))
            elif block.marker.startswith("slow"):
                marks.append(pytest.mark.slow)
            params.append(pytest.param(block, id=block.where, marks=marks))
    return params


@pytest.fixture(scope="session")
def tiny_hub(tmp_path_factory, tiny_texts):
    """family -> a tiny random checkpoint folder of that family, built once per test session (512 positions,
    as a real checkpoint has: the question-answering pipeline's windows need more than 128)."""
    from charbert.tiny import make_tiny_checkpoint

    built = {}

    def folder(family: str) -> Path:
        if family not in built:
            built[family] = make_tiny_checkpoint(tmp_path_factory.mktemp(f"doc_{family}"), family, tiny_texts,
                                                 vocab_size=600, hidden_size=32, max_len=512)
        return built[family]

    return folder


def substitute_hub_names(code: str, folder) -> str:
    for name, family in HUB_SUBSTITUTES.items():
        for quote in ('"', "'"):
            if f"{quote}{name}{quote}" in code:
                code = code.replace(f"{quote}{name}{quote}", repr(str(folder(family))))
    return code


@pytest.mark.parametrize("block", python_examples())
def test_python_example_runs(block, tiny_hub, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # a hub name left unsubstituted fails at once, never downloads
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    code = substitute_hub_names(block.text, tiny_hub)
    exec(compile(code, block.where, "exec"), {"__name__": "__doc_example__"})


# ---- flags of shell examples -------------------------------------------------------------------------


def console_scripts() -> dict[str, str]:
    """charbert-* console script -> the program it runs (a module name, as run from a clone)."""
    section = (ROOT / "pyproject.toml").read_text().split("[project.scripts]", 1)[1].split("\n[", 1)[0]
    out = {}
    for name, target in re.findall(r'^([\w-]+)\s*=\s*"([^"]+)"', section, re.M):
        module = target.split(":")[0].removeprefix("charbert._programs.").removesuffix(".__main__")
        out[name] = module
    return out


OURS = ("pretrain", "finetune", "benchmarks", "experiments", "charbert")
CALL = re.compile(
    r"(?:\bpython3?\s+(?:-\S+\s+)*-m\s+(?P<module>[\w.]+)"
    r"|\baccelerate\s+launch\b.*?\s-m\s+(?P<launched>[\w.]+)"
    r"|\bpython3?\s+(?P<script>(?:experiments|benchmarks)/\w+\.py)"
    r"|(?<![\w/.-])(?P<console>charbert-[a-z-]+)\b)"
)


@dataclass
class Call:
    where: str
    program: str  # a module name or a script path
    flags: list[str]


def shell_commands(text: str) -> list[str]:
    """One string per command: continuation lines joined, comments dropped, split at ; && || and pipes."""
    joined = re.sub(r"\\\n", " ", text)
    commands = []
    for line in joined.splitlines():
        line = re.sub(r"(^|\s)#.*$", "", line)
        commands += [c for c in re.split(r"&&|\|\||;|\|", line) if c.strip()]
    return commands


def calls_in(command: str, where: str, scripts: dict[str, str]) -> list[Call]:
    calls = []
    matches = list(CALL.finditer(command))
    for k, m in enumerate(matches):
        program = m.group("module") or m.group("launched") or m.group("script")
        if m.group("console"):
            program = scripts.get(m.group("console"))
            if program is None:  # a folder or model name such as charbert-bert-wiki
                continue
        if not program.endswith(".py") and program.split(".")[0] not in OURS:
            continue
        rest = command[m.end(): matches[k + 1].start() if k + 1 < len(matches) else len(command)]
        try:
            words = shlex.split(rest, comments=False)
        except ValueError:
            words = rest.split()
        flags = [w.split("=")[0] for w in words if re.fullmatch(r"--[A-Za-z][\w-]*(=.*)?", w)]
        calls.append(Call(where, program, flags))
    return calls


def doc_calls(doc: Path) -> list[Call]:
    scripts, calls = console_scripts(), []
    for block in read_blocks(doc):
        if block.lang in SHELL_LANGS and not block.marker.startswith("not run"):
            for command in shell_commands(block.text):
                calls += calls_in(command, block.where, scripts)
    for n, line in prose_lines(doc):
        for span in re.findall(r"`([^`]+)`", line):
            calls += calls_in(span, f"{doc.relative_to(ROOT)}:{n}", scripts)
    return calls


class _Captured(BaseException):
    def __init__(self, parser):
        self.parser = parser


def _capture(self, args=None, namespace=None):
    raise _Captured(self)


def load_program(program: str):
    if program.endswith(".py"):
        name = "doc_program_" + re.sub(r"\W", "_", program)
        spec = importlib.util.spec_from_file_location(name, ROOT / program)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        return module
    try:
        return importlib.import_module(program + ".__main__")
    except ModuleNotFoundError:
        return importlib.import_module(program)


@functools.cache
def program_options(program: str) -> frozenset[str]:
    """Every option string the program's parser accepts: its own build_parser() where it has one taking no
    arguments, else the parser its main() builds, caught at its first parse."""
    module = load_program(program)
    builder = getattr(module, "build_parser", None)
    parser = None
    if callable(builder):
        try:
            parser = builder()
        except TypeError:
            parser = None
    if parser is None:
        original = argparse.ArgumentParser.parse_known_args
        argparse.ArgumentParser.parse_known_args = _capture
        try:
            module.main([])
        except _Captured as caught:
            parser = caught.parser
        finally:
            argparse.ArgumentParser.parse_known_args = original
    assert parser is not None, f"{program}: no argument parser found"
    options = set(parser._option_string_actions)
    for other in PASSTHROUGH.get(program, ()):
        options |= program_options(other)
    return frozenset(options)


@pytest.mark.parametrize("doc", DOCS, ids=lambda d: str(d.relative_to(ROOT)))
def test_doc_flags_exist(doc):
    unknown = []
    for call in doc_calls(doc):
        options = program_options(call.program)
        unknown += [f"{call.where}: {call.program} {flag}" for flag in call.flags if flag not in options]
    assert not unknown, "flags the programs do not have:\n" + "\n".join(unknown)


def test_readme_commands_are_found():
    """The README's two first commands and its quick starts are seen by the flag check (guards the parsing)."""
    programs = {call.program for call in doc_calls(ROOT / "README.md")}
    assert {"pretrain", "finetune.ner", "finetune.robustness", "charbert.serving.export"} <= programs


def test_flag_check_catches_drift():
    calls = calls_in("accelerate launch --num_processes 2 -m finetune.ner --train_file a.txt --no_such_flag 3",
                     "here", console_scripts())
    assert [c.program for c in calls] == ["finetune.ner"]
    assert calls[0].flags == ["--train_file", "--no_such_flag"]
    options = program_options("finetune.ner")
    assert "--train_file" in options and "--no_such_flag" not in options


def test_marker_and_substitution(tmp_path):
    doc = tmp_path / "guide.md"
    doc.write_text('text\n\n<!-- example: not run (needs a GPU) -->\n```python\nx = "bert-base-cased"\n```\n')
    [block] = read_blocks(doc)
    assert block.marker == "not run (needs a GPU)" and block.line == 4
    assert substitute_hub_names(block.text, lambda family: Path("/tiny") / family) == "x = '/tiny/bert'\n"
