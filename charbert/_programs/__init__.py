"""Where an installed charbert keeps its command-line programs.

In the repository the programs are the top-level folders ``pretrain/`` and ``finetune/`` (run as
``python -m pretrain``, ``python -m finetune.glue``, ...).  The wheel installs those folders as
``charbert._programs.pretrain`` and ``charbert._programs.finetune`` (see ``package-dir`` in
pyproject.toml), so installing charbert claims no top-level name besides ``charbert``; the
console scripts (``charbert-pretrain``, ``charbert-finetune-glue``, ...) point here.
"""
