"""Version shims, in one place: transformers 4.x vs 5.x, and configs saved by older charbert code.

Everything that differs between versions is imported or decided here, so the model code reads
as one version.
"""

from __future__ import annotations

from torch import nn

try:  # transformers 5.x: init functions that skip tensors already loaded from a checkpoint
    from transformers import initialization as init
except ImportError:  # transformers 4.x
    from torch.nn import init

try:  # transformers >= 4.52: layers that checkpoint themselves
    from transformers.modeling_layers import GradientCheckpointingLayer
except ImportError:
    GradientCheckpointingLayer = None

try:
    from transformers.masking_utils import create_bidirectional_mask, create_bidirectional_sliding_window_mask
except ImportError:  # transformers 4.x
    create_bidirectional_mask = create_bidirectional_sliding_window_mask = None

# Base class of a module transformers can gradient-checkpoint by itself (plain Module before 4.52).
CheckpointableModule = GradientCheckpointingLayer if GradientCheckpointingLayer is not None else nn.Module

# What a CharBERT config saved before the architecture switches existed was built with (our first
# variant). A saved config.json without these fields keeps loading as that model; new configs
# default to the authors' architecture instead (see CharBertConfig).
LEGACY_ARCHITECTURE = {"char_token_norm": True, "fusion_activation": True, "fusion_bias": True}


def upgrade_saved_config(config_dict: dict) -> dict:
    """A saved CharBERT config dict with every field the current code reads (a copy).

    Fields missing from a config written by older code get the value that code used.
    """
    upgraded = dict(config_dict)
    for key, value in LEGACY_ARCHITECTURE.items():
        upgraded.setdefault(key, value)
    return upgraded


def layer_output(out):
    """A backbone layer's hidden states: transformers 4.x layers return tuples, 5.x a tensor."""
    return out[0] if isinstance(out, tuple) else out


__all__ = [
    "LEGACY_ARCHITECTURE",
    "CheckpointableModule",
    "GradientCheckpointingLayer",
    "create_bidirectional_mask",
    "create_bidirectional_sliding_window_mask",
    "init",
    "layer_output",
    "upgrade_saved_config",
]
