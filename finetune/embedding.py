"""Fine-tune a sentence-embedding model on (query, positive) pairs with in-batch negatives.

    python -m finetune.embedding --model_name_or_path all-MiniLM-L6-v2/ --charbert \\
        --train_file squad/v1.1-train.json --query_noise --self_teaching 1 --output_dir out/emb

The model is a sentence-transformers folder, a plain Hugging Face encoder, or a CharBERT; --charbert
builds CharBERT on a plain one (identity start: it encodes as its backbone until training moves it;
its pooling and normalisation are kept; --char_encoder_from takes the character encoder of a pretrained
CharBERT instead of a random one). Pairs come from --train_file (JSON lines with `query` and
`positive` fields, a .tsv with a header row, or a SQuAD .json read as (question, paragraph)) or
--dataset_name. The loss is the multiple-negatives ranking loss (every other passage of the batch is
a negative; a passage equal to the positive is not). --query_noise trains on misspelt copies of the
queries too (typos-aware training); --self_teaching W adds W x KL(clean || noised) of the two score
distributions over the batch's passages (CharacterBERT-DR's self-teaching); --query_alignment W adds
W x (1 - cos) of the noised and the clean query's vectors; --teacher_model FOLDER (usually the plain
model itself) makes its vectors of the clean queries the targets of the trained model's clean and
misspelt queries (--teacher_weight W), and --teacher_word_weight W its token states of each clean word
the targets of that word's; --ranking_weight 0 leaves the ranking loss out (with a teacher: the misspelt
queries learn to land where the teacher puts the clean ones, passages unused, so a .txt file of texts, one
a line, is training data too; --query_encoder_only then saves a query/document model whose documents are
still the teacher's). The output folder is a
sentence-transformers model (modules.json): `SentenceTransformer(folder)` after `import charbert`,
or `charbert.embedding.load_embedding_model(folder)`.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from charbert.checkpoint import max_sequence_length
from charbert.cli import UsageError, one_line, program_name, run_main, setup_logging, write_json
from charbert.embedding import (
    DEFAULT_SCALE,
    NOISE_RULES,
    ContrastiveModel,
    NotAnEmbeddingModel,
    PairCollator,
    QueryNoise,
    build_charbert_embedding,
    is_charbert_embedding,
    load_embedding_model,
    pairs_from_rows,
    parse_operations,
    query_document_model,
    read_pairs,
)
from charbert.tasks.errors import TaskDataError
from charbert.tasks.features import FeatureDataset
from charbert.training import (
    CheckpointError,
    add_training_args,
    create_accelerator,
    stopped_line,
    train,
    training_config_from_args,
)
from charbert.training.lock import OutputDirError, lock_output_dir

from .common import METRICS_FILE, _versions

PROG = program_name("python -m finetune.embedding")
logger = logging.getLogger("finetune")


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    m = parser.add_argument_group("model")
    m.add_argument("--model_name_or_path", required=True,
                   help="A sentence-transformers folder, a plain Hugging Face encoder folder, or a CharBERT folder.")
    m.add_argument("--charbert", action="store_true",
                   help="Build CharBERT on a plain model (identity start, both channels pooled; its pooling and "
                        "normalisation kept). A CharBERT folder is used as it is.")
    m.add_argument("--char_encoder_from", default=None,
                   help="With --charbert: the character encoder and character vocabulary of this CharBERT folder (e.g. "
                        "a pretraining output) instead of random ones; the backbone and the identity start unchanged.")
    d = parser.add_argument_group("data")
    d.add_argument("--train_file", default=None,
                   help="Pairs: JSON lines with the query and positive fields, a .tsv with a header row, or a SQuAD "
                        ".json (question, paragraph); or texts, a .txt file with one a line (the query-only losses).")
    d.add_argument("--dataset_name", default=None,
                   help="Instead of --train_file: a datasets Hub name, a local dataset folder or a save_to_disk folder.")
    d.add_argument("--dataset_config_name", default=None, help="The dataset's configuration.")
    d.add_argument("--dataset_revision", default=None, help="The dataset's revision.")
    d.add_argument("--train_split_name", default="train", help="The dataset split to train on (default: %(default)s).")
    d.add_argument("--query_column", default="query", help="The queries' field or column (default: %(default)s).")
    d.add_argument("--positive_column", default="positive",
                   help="The positive passages' field or column (default: %(default)s).")
    d.add_argument("--max_train_samples", type=int, default=None, help="Use only the first N pairs.")
    d.add_argument("--max_seq_length", type=int, default=None,
                   help="Longest input in subword tokens, queries and passages (default: the model's own; longer "
                        "inputs are truncated and counted in metrics.json).")
    n = parser.add_argument_group("typos")
    n.add_argument("--query_noise", action="store_true",
                   help="Typos-aware training: the loss is the mean of the clean queries' and their misspelt copies'.")
    n.add_argument("--noise_probability", type=float, default=0.25,
                   help="Share of a query's eligible words misspelt (rounded, see charbert.noise.noise_words; "
                        "default: %(default)s).")
    n.add_argument("--noise_max_words", type=int, default=2,
                   help="At most this many misspelt words a query (0: no cap; default: %(default)s).")
    n.add_argument("--noise_operations", default="all",
                   help="'all' (drop, add, swap, keyboard: the attacks') or a comma-separated list of drop, add, "
                        "swap, keyboard, replace (default: %(default)s).")
    n.add_argument("--noise_rules", choices=sorted(NOISE_RULES), default="pruthi",
                   help="Which words may be misspelt and where: 'pruthi' (the attacks': words of 4+ letters, not "
                        "stop-words, first and last letters kept) or 'pretrain' (any word, any position; default: "
                        "%(default)s).")
    n.add_argument("--self_teaching", type=float, default=0.0,
                   help="Weight of the self-teaching term, KL(clean || noised) of the queries' score distributions "
                        "over the batch's passages (0: off; default: %(default)s).")
    n.add_argument("--self_teaching_temperature", type=float, default=1.0,
                   help="Temperature of the two distributions (default: %(default)s).")
    n.add_argument("--query_alignment", type=float, default=0.0,
                   help="Weight of the alignment term, 1 - cos(noised query, clean query) of the two query vectors (the "
                        "clean one the target, no gradient through it; 0: off; default: %(default)s).")
    n.add_argument("--teacher_model", default=None,
                   help="A fixed sentence-transformers model with the same vector size (usually the plain model "
                        "itself): its vectors of the clean queries become the targets of the trained model's clean "
                        "queries and (with --query_noise) misspelt ones, + W x (1 - cos). Not trained, not saved.")
    n.add_argument("--teacher_weight", type=float, default=1.0,
                   help="W of the teacher term (default: %(default)s).")
    n.add_argument("--teacher_word_weight", type=float, default=0.0,
                   help="With --teacher_model: + W x the teacher term word by word (each word's mean token state, "
                        "misspelt or not, against the teacher's of the clean word; 0: off; default: %(default)s).")
    n.add_argument("--teacher_clean_weight", type=float, default=1.0,
                   help="In the teacher terms, the clean queries' part weighted C to the misspelt ones' 1 (default: "
                        "%(default)s, their plain mean; a larger C keeps the clean queries closer to where the teacher "
                        "puts them).")
    n.add_argument("--query_encoder_only", action="store_true",
                   help="With --teacher_model and the query-only losses (--ranking_weight 0, no --self_teaching): "
                        "save a query/document model (sentence-transformers' Router) that encodes queries with the "
                        "trained model and documents with the teacher, so that documents the teacher already "
                        "encoded stay valid (encode_query / encode_document).")
    n.add_argument("--ranking_weight", type=float, default=1.0,
                   help="Weight of the multiple-negatives ranking loss (0: left out; then the passages are unused "
                        "unless --self_teaching; default: %(default)s).")
    n.add_argument("--word_side_base_lr", action="store_true",
                   help="With --charbert and --new_module_lr_multiplier: only the character side of CharBERT's new "
                        "modules is sped up; their subword side (the projection's subword half, each fusion's word map, "
                        "conv subword half and bias, word norm), which carries the plain model's own path, keeps the "
                        "base learning rate.")
    n.add_argument("--similarity_scale", type=float, default=DEFAULT_SCALE,
                   help="Cosine similarities are multiplied by this before the softmax (default: %(default)s, "
                        "sentence-transformers' MultipleNegativesRankingLoss).")
    add_training_args(parser)
    return parser


def check_args(args) -> QueryNoise | None:
    """Flags that cannot work together -> UsageError; the query noise the run uses (None: none)."""
    if args.char_encoder_from and not args.charbert:
        raise UsageError("--char_encoder_from goes with --charbert (a CharBERT built on a plain model)")
    if bool(args.train_file) == bool(args.dataset_name):
        raise UsageError("give --train_file or --dataset_name (one of them)")
    if args.max_train_samples is not None and args.max_train_samples < 1:
        raise UsageError(f"--max_train_samples must be >= 1; got {args.max_train_samples}")
    if args.max_seq_length is not None and args.max_seq_length < 8:
        raise UsageError(f"--max_seq_length must be >= 8; got {args.max_seq_length}")
    if not 0.0 <= args.noise_probability <= 1.0:
        raise UsageError(f"--noise_probability must be in [0, 1]; got {args.noise_probability}")
    if args.noise_max_words < 0:
        raise UsageError(f"--noise_max_words must be >= 0; got {args.noise_max_words}")
    if args.self_teaching < 0 or args.query_alignment < 0:
        raise UsageError(f"--self_teaching and --query_alignment must be >= 0; got {args.self_teaching}, "
                         f"{args.query_alignment}")
    if min(args.teacher_weight, args.teacher_word_weight, args.ranking_weight) < 0:
        raise UsageError(f"--teacher_weight, --teacher_word_weight and --ranking_weight must be >= 0; got "
                         f"{args.teacher_weight}, {args.teacher_word_weight}, {args.ranking_weight}")
    if not args.teacher_clean_weight > 0:
        raise UsageError(f"--teacher_clean_weight must be > 0; got {args.teacher_clean_weight}")
    if args.teacher_word_weight > 0 and not args.teacher_model:
        raise UsageError("--teacher_word_weight needs --teacher_model (the words' targets are its token states)")
    if args.train_file and Path(args.train_file).suffix == ".txt" and (args.ranking_weight > 0 or args.self_teaching > 0):
        raise UsageError(f"--train_file {args.train_file} holds texts (one a line), not pairs: train on it with "
                         "--ranking_weight 0 and --teacher_model or --query_alignment, no --self_teaching")
    if args.ranking_weight == 0 and not (args.teacher_model or args.self_teaching > 0 or args.query_alignment > 0):
        raise UsageError("--ranking_weight 0 leaves nothing to train: add --teacher_model, --query_alignment or "
                         "--self_teaching")
    if args.query_encoder_only and not (args.teacher_model and args.ranking_weight == 0 and args.self_teaching == 0):
        raise UsageError("--query_encoder_only needs --teacher_model and the query-only losses (--ranking_weight 0, no "
                         "--self_teaching): the documents stay the teacher's, so training must not encode them")
    if not args.self_teaching_temperature > 0 or not args.similarity_scale > 0:
        raise UsageError("--self_teaching_temperature and --similarity_scale must be > 0")
    if args.word_side_base_lr and args.new_module_lr_multiplier == 1.0:
        raise UsageError("--word_side_base_lr goes with --new_module_lr_multiplier (it keeps the subword side of "
                         "CharBERT's new modules at the base rate while the character side is sped up)")
    if args.per_device_train_batch_size < 2:
        raise UsageError("--per_device_train_batch_size must be >= 2: the other passages of a batch are the negatives")
    if not (args.query_noise or args.self_teaching > 0 or args.query_alignment > 0):
        return None
    try:
        operations = parse_operations(args.noise_operations)
    except ValueError as err:
        raise UsageError(str(err)) from None
    return QueryNoise(args.noise_probability, operations, NOISE_RULES[args.noise_rules], args.noise_max_words or None)


def read_training_pairs(args) -> tuple[list, str]:
    """The pairs and where they came from."""
    if args.train_file:
        return read_pairs(args.train_file, args.query_column, args.positive_column), args.train_file
    from charbert.pretraining.hf_datasets import open_dataset

    try:
        rows = open_dataset(args.dataset_name, args.dataset_config_name, args.train_split_name,
                            revision=args.dataset_revision, streaming=False)
    except (ImportError, ValueError, FileNotFoundError) as err:
        raise UsageError(f"--dataset_name {args.dataset_name}: {one_line(err)}") from None
    source = args.dataset_name + (f"/{args.dataset_config_name}" if args.dataset_config_name else "")
    source += f"[{args.train_split_name}]"
    return pairs_from_rows(rows, source, args.query_column, args.positive_column), source


def open_model(args):
    """The SentenceTransformer to train: CharBERT built on the given one with --charbert, else as it is."""
    if args.charbert:
        model = build_charbert_embedding(args.model_name_or_path, char_encoder_from=args.char_encoder_from)
    else:
        model = load_embedding_model(args.model_name_or_path)
    if args.max_seq_length is not None:
        limit = max_sequence_length(model[0].config) if hasattr(model[0], "config") else None
        if limit is not None and args.max_seq_length > limit:
            raise UsageError(f"--max_seq_length {args.max_seq_length} exceeds what {args.model_name_or_path} allows "
                             f"({limit} tokens)")
        model.max_seq_length = args.max_seq_length
    return model


def describe_loss(args) -> str:
    """The loss in words, e.g. "MNRL + noised queries + 1.0 x self-teaching"."""
    ranking = "" if args.ranking_weight == 0 else "MNRL" if args.ranking_weight == 1 else f"{args.ranking_weight} x MNRL"
    parts = [ranking + (" + noised queries" if ranking and args.query_noise else "")]
    parts += [f"{args.self_teaching} x self-teaching"] if args.self_teaching > 0 else []
    parts += [f"{args.query_alignment} x query alignment"] if args.query_alignment > 0 else []
    clean = f", clean part x {args.teacher_clean_weight}" if args.teacher_clean_weight != 1 else ""
    parts += [f"{args.teacher_weight} x teacher ({args.teacher_model}{clean})"] if args.teacher_model else []
    parts += [f"{args.teacher_word_weight} x teacher, word by word"] if args.teacher_word_weight > 0 else []
    return " + ".join(p for p in parts if p)


def open_teacher(args, encoder):
    """The --teacher_model (None without it), with the trained model's input length; its vectors must be the same size."""
    if not args.teacher_model:
        return None
    teacher = load_embedding_model(args.teacher_model)
    size, own = teacher.get_embedding_dimension(), encoder.get_embedding_dimension()
    if size != own:
        raise UsageError(f"--teacher_model {args.teacher_model} gives {size}-dimensional vectors; the model trained "
                         f"gives {own}")
    teacher.max_seq_length = encoder.max_seq_length
    return teacher


def run(args, argv: Sequence[str], prog: str) -> dict[str, Any]:
    start = time.perf_counter()
    noise = check_args(args)
    try:
        config = training_config_from_args(args)
    except ValueError as err:
        raise UsageError(str(err)) from None
    accelerator = create_accelerator(config)
    if accelerator.is_main_process:
        lock_output_dir(config.output_dir)
    setup_logging(("finetune", "charbert"), logging.INFO if accelerator.is_main_process else logging.WARNING)
    output_dir = Path(config.output_dir)

    pairs, source = read_training_pairs(args)  # bad data fails before any model is loaded
    if args.max_train_samples is not None:
        pairs = pairs[:args.max_train_samples]
    if len(pairs) < 2:
        raise TaskDataError(f"{source}: {len(pairs)} pair(s); in-batch negatives need at least 2")

    from accelerate.utils import set_seed

    set_seed(args.seed)  # the character encoder's and fusion's initial weights
    encoder = open_model(args)
    teacher = open_teacher(args, encoder)
    model = ContrastiveModel(encoder, scale=args.similarity_scale, query_noise=args.query_noise,
                             self_teaching=args.self_teaching, temperature=args.self_teaching_temperature,
                             query_alignment=args.query_alignment, teacher=teacher,
                             teacher_weight=args.teacher_weight, ranking_weight=args.ranking_weight,
                             teacher_word_weight=args.teacher_word_weight, word_side_base_lr=args.word_side_base_lr,
                             teacher_clean_weight=args.teacher_clean_weight)
    if args.word_side_base_lr and not is_charbert_embedding(encoder):
        raise UsageError(f"--word_side_base_lr: {args.model_name_or_path} is not a CharBERT embedding model (add --charbert)")
    collator = PairCollator(encoder, noise, teacher, passages=model.reads_passages, words=model.reads_words)
    logger.info("embedding: %s (%s), %d pairs from %s, max_seq_length %s, loss: %s",
                args.model_name_or_path, "CharBERT, both channels" if is_charbert_embedding(encoder) else "plain",
                len(pairs), source, encoder.max_seq_length, describe_loss(args))

    outcome = train(model, FeatureDataset(pairs), config, collator, accelerator=accelerator)
    if outcome.stopped_early:
        accelerator.print(stopped_line(outcome))
        return {"task": "embedding", "stopped_early": True, "global_step": outcome.global_step}
    unwrapped = accelerator.unwrap_model(model).encoder
    record: dict[str, Any] = {
        "task": "embedding", "command": f"{prog} {shlex.join(list(argv))}", "seed": args.seed,
        "versions": _versions(), "num_processes": accelerator.num_processes,
        "model": {"model_name_or_path": args.model_name_or_path, "charbert": is_charbert_embedding(unwrapped),
                  "modules": [type(m).__name__ for m in unwrapped], "max_seq_length": unwrapped.max_seq_length,
                  "embedding_dimension": unwrapped.get_embedding_dimension(),
                  "num_parameters": sum(p.numel() for p in unwrapped.parameters())},
        "train": {"global_step": outcome.global_step, "epochs_completed": outcome.epochs_completed,
                  "train_loss": outcome.train_loss, "wall_time_s": round(outcome.wall_time_s, 2),
                  "num_pairs": len(pairs), "source": source,
                  "truncated_inputs": getattr(unwrapped, "truncated_inputs", 0)},
    }
    if args.query_encoder_only:
        record["model"]["query_encoder_only"] = {"documents": args.teacher_model}
    if accelerator.is_main_process:
        # the documents' route is the teacher as given (its own max_seq_length, not the one the training set)
        saved = query_document_model(unwrapped, load_embedding_model(args.teacher_model)) if args.query_encoder_only \
            else unwrapped
        saved.save(str(output_dir))
        record["args"] = {k: v for k, v in sorted(vars(args).items())}
        record["wall_time_s"] = round(time.perf_counter() - start, 2)
        write_json(output_dir / METRICS_FILE, record)
        print(json.dumps({"output_dir": str(output_dir), "train_loss": outcome.train_loss,
                          "global_step": outcome.global_step}))
    accelerator.wait_for_everyone()
    return record


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    return run_main(PROG, lambda: run(args, argv, PROG),
                    known_errors=(TaskDataError, NotAnEmbeddingModel, CheckpointError, OutputDirError, ImportError))


if __name__ == "__main__":
    raise SystemExit(main())
