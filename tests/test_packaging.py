"""pyproject.toml against the tree: every package is shipped, every console script has its main."""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

try:
    import tomllib
except ImportError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
SETUPTOOLS = PYPROJECT["tool"]["setuptools"]


def repo_module(installed: str) -> str:
    """The module name in the repository of a module name in the installed wheel (package-dir)."""
    for package, folder in SETUPTOOLS.get("package-dir", {}).items():
        if installed == package or installed.startswith(package + "."):
            return folder.replace("/", ".") + installed[len(package):]
    return installed


def test_every_package_folder_is_listed():
    found = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "charbert").rglob("__init__.py")}
    found |= set(SETUPTOOLS.get("package-dir", {}))
    assert set(SETUPTOOLS["packages"]) == found
    for folder in SETUPTOOLS["package-dir"].values():  # the mapped program folders are packages
        assert (REPO / folder / "__init__.py").is_file(), folder


def test_console_scripts_point_at_a_main():
    scripts = PYPROJECT["project"]["scripts"]
    assert {"charbert-pretrain", "charbert-finetune-glue", "charbert-robustness", "charbert-convert"} <= set(scripts)
    missing = []
    for name, target in scripts.items():
        module, _, func = target.partition(":")
        module = repo_module(module)
        if module == "charbert.convert" and importlib.util.find_spec(module) is None:
            missing.append(module)
            continue
        assert callable(getattr(importlib.import_module(module), func)), name
    if missing:
        pytest.skip(f"{missing} (the checkpoint converter) is not in this tree yet")


def test_one_version():
    import charbert

    assert PYPROJECT["project"]["dynamic"] == ["version"]
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "charbert.__version__"}
    assert re.fullmatch(r"\d+\.\d+\.\d+", charbert.__version__)
    assert "version" not in PYPROJECT["project"]


def test_setup_cfg_holds_the_tool_settings_once():
    import configparser

    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg", encoding="utf-8")
    assert {"tool:pytest", "coverage:run", "coverage:report"} <= set(cfg.sections())
    assert not {"metadata", "options"} & set(cfg.sections())  # metadata: pyproject.toml only
    markers = cfg["tool:pytest"]["markers"]
    assert "slow:" in markers and "data:" in markers
    assert "pytest" not in PYPROJECT.get("tool", {}) and "coverage" not in PYPROJECT.get("tool", {})
    assert {"charbert", "finetune", "pretrain"} <= set(cfg["coverage:run"]["source"].split())


def test_pytest_reads_setup_cfg(pytestconfig):
    assert pytestconfig.inipath is not None and pytestconfig.inipath.name == "setup.cfg"
    assert any(m.startswith("slow:") for m in pytestconfig.getini("markers"))


def test_program_name_is_the_console_scripts(monkeypatch):
    from charbert.cli import program_name

    monkeypatch.setattr(sys, "argv", ["/venv/bin/charbert-finetune-ner", "--help"])
    assert program_name("python -m finetune.ner") == "charbert-finetune-ner"
    monkeypatch.setattr(sys, "argv", ["/repo/finetune/ner.py"])
    assert program_name("python -m finetune.ner") == "python -m finetune.ner"


@pytest.mark.slow  # subprocesses
@pytest.mark.parametrize("script", ["charbert-finetune-ner", "charbert-convert", "charbert-pretrain"])
def test_console_scripts_usage_names_the_script(tmp_path, script):
    """What pip's wrapper does: import the entry point and call it, with argv[0] the script's path."""
    module, _, func = PYPROJECT["project"]["scripts"][script].partition(":")
    wrapper = tmp_path / script
    wrapper.write_text(f"import sys\nfrom {repo_module(module)} import {func}\nsys.exit({func}())\n")
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, str(wrapper), "--help"], capture_output=True, text=True, env=env,
                          timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith(f"usage: {script} "), done.stdout[:200]
