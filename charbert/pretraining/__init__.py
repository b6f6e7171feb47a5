"""The pretraining data path and job, in the order the data flows:

    corpus.py       text files (plain or .gz) -> lines, bad bytes skipped and counted
    hf_datasets.py  a `datasets` source -> the same lines
    blocks.py       lines -> packed text blocks on disk (memory-mapped, built once per corpus and tokenizer)
    vocab.py        the word splitter (what a "word" is) and the NLM word vocabulary
    collator.py     a text block -> a batch: character noise (NLM), whole-word masking (MLM), both channels
    job.py          what `python -m pretrain` assembles: model and vocabularies, evaluation metrics, the default job

The character noise itself lives in `charbert.noise` (pretraining and the robustness attacks share it).
"""
