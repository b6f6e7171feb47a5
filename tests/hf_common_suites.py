"""transformers' own common test suites (ModelTesterMixin, ConfigTester, TokenizerTesterMixin), imported
from the source distribution of the installed transformers version.

`.ci/run` downloads that sdist from the package registry and unpacks its `tests/` folder under
`.transformers-sdist/` (ignored by git); `CHARBERT_HF_TESTS` may point at another unpacked `tests/`
folder. Nothing here touches the network: `load_suites()` returns None and a one-line reason when the
suites (or the `parameterized` package they import) are absent, and the test module skips with it.

transformers' tests are a package named `tests`, like ours, and import each other relatively
(`from .test_sentencepiece_backend_mixin import ...`). They are imported here as the package
`hf_common_suites_pkg` (a module whose `__path__` is their folder), never as `tests`. The sdist ships
only the top-level test files: the three subpackages the common modules import from (the export and
generation mixins, the config kwargs fixture) are not in it, so they stand in below as empty mixins and
a small kwargs table. The export (`torch.export`) and generation tests are therefore not run here;
CharBERT is an encoder (no `generate`).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import types
import warnings
from pathlib import Path

import pytest
import transformers

REPO = Path(__file__).resolve().parents[1]
SDIST_DIR = REPO / ".transformers-sdist"
PACKAGE = "hf_common_suites_pkg"
FETCH_HINT = "bash .ci/fetch_transformers_tests"

# The common config kwargs that ConfigTester.check_config_arguments_init sets and reads back (transformers'
# own table is in tests/utils/, which the sdist leaves out; these are PretrainedConfig fields a text encoder's
# config takes, each set to a non-default value).
CONFIG_COMMON_KWARGS = {
    "return_dict": False,
    "output_hidden_states": True,
    "output_attentions": True,
    "dtype": "float16",
    "tie_word_embeddings": False,
    "chunk_size_feed_forward": 5,
    "architectures": ["CharBertModel"],
    "finetuning_task": "translation",
    "id2label": {0: "label"},
    "label2id": {"label": "0"},
    "tokenizer_class": "BertTokenizer",
    "prefix": "prefix",
    "bos_token_id": 6,
    "pad_token_id": 7,
    "eos_token_id": 8,
    "sep_token_id": 9,
    "problem_type": "regression",
}


def suites_dir() -> Path | None:
    """The unpacked `tests/` folder of the installed version's sdist, or None."""
    override = os.environ.get("CHARBERT_HF_TESTS")
    candidates = [Path(override)] if override else [SDIST_DIR / f"transformers-{transformers.__version__}" / "tests"]
    for path in candidates:
        if (path / "test_modeling_common.py").is_file():
            return path
    return None


def _module(name: str, **attributes) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__dict__.update(attributes)
    return module


def _install_stand_ins() -> None:
    """The subpackages the common modules import that the sdist does not ship."""

    class ExportTesterMixin:  # torch.export tests: not in the sdist
        pass

    class GenerationTesterMixin:  # generate() tests: not in the sdist (and CharBERT does not generate)
        pass

    stand_ins = {
        f"{PACKAGE}.exporters": _module(f"{PACKAGE}.exporters", __path__=[]),
        f"{PACKAGE}.exporters.test_export": _module(f"{PACKAGE}.exporters.test_export", ExportTesterMixin=ExportTesterMixin),
        f"{PACKAGE}.generation": _module(f"{PACKAGE}.generation", __path__=[]),
        f"{PACKAGE}.generation.test_utils": _module(f"{PACKAGE}.generation.test_utils",
                                                    GenerationTesterMixin=GenerationTesterMixin),
        f"{PACKAGE}.utils": _module(f"{PACKAGE}.utils", __path__=[]),
        f"{PACKAGE}.utils.test_configuration_utils": _module(f"{PACKAGE}.utils.test_configuration_utils",
                                                             config_common_kwargs=CONFIG_COMMON_KWARGS),
    }
    for name, module in stand_ins.items():
        sys.modules.setdefault(name, module)


def load_suites():
    """(namespace with ModelTesterMixin, ConfigTester, TokenizerTesterMixin, ids_tensor, ..., None) or
    (None, the one-line reason they cannot be run here)."""
    folder = suites_dir()
    if folder is None:
        return None, (f"transformers {transformers.__version__}'s common test suites are not unpacked "
                      f"under {SDIST_DIR.name}/ (run `{FETCH_HINT}`)")
    if importlib.util.find_spec("parameterized") is None:
        return None, "transformers' common test suites need the `parameterized` package (`pip install parameterized`)"
    if PACKAGE not in sys.modules:
        package = _module(PACKAGE, __path__=[str(folder)], __file__=str(folder / "__init__.py"))
        package.__spec__ = importlib.util.spec_from_loader(PACKAGE, loader=None, is_package=True)
        package.__spec__.submodule_search_locations = [str(folder)]
        sys.modules[PACKAGE] = package
        _install_stand_ins()
    with warnings.catch_warnings():  # their own pytest marks (flash_attn_test, ...), registered in their conftest
        warnings.simplefilter("ignore", pytest.PytestUnknownMarkWarning)
        modeling = importlib.import_module(f"{PACKAGE}.test_modeling_common")
        configuration = importlib.import_module(f"{PACKAGE}.test_configuration_common")
        tokenization = importlib.import_module(f"{PACKAGE}.test_tokenization_common")
    suites = types.SimpleNamespace(
        ModelTesterMixin=modeling.ModelTesterMixin,
        ids_tensor=modeling.ids_tensor,
        random_attention_mask=modeling.random_attention_mask,
        floats_tensor=modeling.floats_tensor,
        ConfigTester=configuration.ConfigTester,
        TokenizerTesterMixin=tokenization.TokenizerTesterMixin,
        modeling=modeling,
    )
    return suites, None
