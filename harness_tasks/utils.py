"""What the genft task YAMLs cannot say: the data loader, and the two scoring rules.

Prompts, targets and label words come from genft.prompts (the same strings fine-tuning uses); data comes
from the canonical layout of genft.data under $GENFT_DATA_DIR (default ./data).
"""
from __future__ import annotations

import os
from functools import lru_cache

from genft import data as gdata
from genft import metrics
from genft.prompts import TARGET_DELIMITER, get_task, render_prompt, render_target
from genft.study_tokens import APPLIED_KEY, first_label_text

# Columns the loader adds to every item; the YAMLs name them in doc_to_text / doc_to_target / doc_to_choice.
TASK, PROMPT, TARGET = "genft_task", "genft_prompt", "genft_target"
GOLD, CHOICES = "genft_gold", "genft_choices"


@lru_cache(maxsize=4)
def _tokenizer(name: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(name)  # never trust_remote_code


def load(genft_task: str, genft_dataset: str, genft_prompt: int = 1, **metadata):
    """custom_dataset loader: lm-eval passes dataset_kwargs plus its metadata (the CLI's --model_args)."""
    import datasets

    spec = get_task(genft_task)
    root = metadata.get("genft_data_dir") or os.environ.get("GENFT_DATA_DIR")
    delimiter = metadata.get("genft_target_delimiter", TARGET_DELIMITER)
    splits = {split: gdata.load_split(genft_task, genft_dataset, split, root) for split in ("test", "demos")}
    study = gdata.read_protocol(genft_task, genft_dataset, root) == gdata.STUDY
    if study and not metadata.get(APPLIED_KEY):
        raise ValueError(
            f"genft_{genft_task}_{genft_dataset}: {gdata.dataset_dir(genft_task, genft_dataset, root)} holds "
            "study-protocol data, whose prompts are the study's token ids; lm_eval (and genft-lm-eval) would "
            "tokenize them its own way.  Evaluate it with `genft eval --data-dir DIR ...` or a suite with "
            "data.protocol: study, or import the clean protocol into another folder for lm_eval"
        )
    tokenizer = None
    if spec.is_classification:
        name = metadata.get("tokenizer") or metadata.get("pretrained")
        if not name:
            raise ValueError(
                f"genft_{genft_task}_{genft_dataset}: the study's first-token rule needs the model's tokenizer; "
                "pass pretrained=... in --model_args (the lm_eval CLI forwards it) or metadata={'pretrained': ...}"
            )
        tokenizer = _tokenizer(str(name))
    out = {}
    for split, items in splits.items():
        rows = []
        for item in items:
            row = dict(item)
            row[PROMPT] = render_prompt(spec, item, int(genft_prompt))
            row[TARGET] = render_target(spec, item)
            row[TASK] = spec.name
            if spec.is_classification:
                # Study protocol: gold "-" (no annotator consensus) is no label index; -1 is never predicted, so the
                # item counts wrong and stays in the denominator, as the study's accuracy counted it.
                gold = item[spec.target]
                row[GOLD] = spec.labels.index(gold) if gold in spec.labels else -1
                # Study protocol: the label's bare first token (the study's fixed ids; genft.study_tokens).
                firsts = [first_label_text(tokenizer, delimiter + lab) if study else
                          metrics.first_token_text(tokenizer, row[PROMPT], delimiter + lab, len(delimiter))
                          for lab in spec.labels]
                # Choices: the full label words (lm-eval's rule), then each label's first token (the study's rule).
                row[CHOICES] = list(spec.labels) + firsts
            rows.append(row)
        out[split] = datasets.Dataset.from_list(rows)
    return datasets.DatasetDict(out)


def process_classification(doc, results):
    return metrics.classification_scores(get_task(doc[TASK]), doc[GOLD], [r[0] for r in results])


def process_generation(doc, results):
    """The raw generation (the task sets no stop sequence), stripped then cut at the first blank line, scored."""
    return metrics.generation_scores(doc[TARGET], results[0])
