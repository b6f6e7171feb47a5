"""Fine-tuning programs (thin command lines over charbert.tasks and charbert.training):

    python -m finetune.glue   GLUE (all nine tasks)        -> metrics.json, *_predictions.tsv
    python -m finetune.squad  SQuAD v1.1 / v2.0            -> metrics.json, *_predictions.json
    python -m finetune.ner    CoNLL NER                    -> metrics.json, *_predictions.txt
    python -m finetune.pos    CoNLL-U / token<TAB>tag POS  -> metrics.json, *_predictions.tsv
    python -m finetune.attack      a character-attacked copy of any of those task files
    python -m finetune.robustness  clean vs attacked scores of fine-tuned models -> report.md/json, scores.png
    python -m finetune.correct     typo correction with the pretrained NLM head (or a dictionary baseline)

Each also runs under ``accelerate launch -m finetune.<task>`` or torchrun. ``--model_name_or_path``
takes a CharBERT checkpoint or a plain BERT/RoBERTa checkpoint (the baseline); ``--charbert``
builds CharBERT on a plain checkpoint. See finetune/common.py for the shared flags and rules.
"""
