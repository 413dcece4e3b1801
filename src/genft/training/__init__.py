"""Supervised fine-tuning with TRL: plain (FT) and with in-context demonstrations (FTICL), full or LoRA.

`finetune/sft.py` is a thin command line over this module: `FinetuneConfig` holds every setting (TRL's
argument names, plus genft's data settings), `run(config)` trains ONE `trl.SFTTrainer` and writes an output
folder that lm-eval loads directly (`pretrained=OUT`).

Training data (one source of truth: every string comes from genft.prompts)::

    {"prompt": render_context(task, item, demos, prompt), "completion": render_target(task, item)}

TRL appends EOS to the completion and puts the loss on the completion only; no chat template.  With
`icl_shots=k` (FTICL) the prompt carries k demonstrations in lm-eval's exact few-shot layout, so a fixed-demo
training prompt equals, character for character, the context lm-eval builds for that item at k shots.

Batches are padding-free by default (TRL's padding_free: the rows of a batch flattened into one, no padding),
where a batch of the training examples gives the same loss padded and flattened on this model (batching.py);
the manifest's training.batching says which and why.

Truncation (docs/study.md §6: the original protocol lost ~360-870 XSum targets): before TRL sees the data,
each example whose tokens (prompt + completion + EOS) exceed `max_length` is shortened on the prompt side:
  1. demonstrations are dropped from the END of the demo list, one at a time (the first j demos are kept, so
     a cut fixed-demo example is still exactly lm-eval's j-shot context);
  2. then input text is cut from its START (the side away from the target), field by field in template order
     (document / context / premise / sentence1 first), at word boundaries; the template and the target stay.
An example that does not fit even with no demonstrations and empty inputs is an error.  The counts are
printed and stored in the manifest; after the trainer is built the row count entering it is checked against
the input count, so TRL's own end-truncation and silent row dropping cannot happen.

Output folder OUT::

    OUT/config.json, model.safetensors, tokenizer*   the fine-tuned model (for LoRA: the merged weights)
    OUT/adapter/                                      LoRA only: the adapter (pretrained=BASE,peft=OUT/adapter)
    OUT/genft_run.json                                the config, written when training starts
    OUT/checkpoint-*/                                 while training (resume); deleted when finished
    OUT/genft_manifest.json                           written LAST, atomically: its presence = finished
"""
from .config import (ADAPTER_DIR, DATA_FIELDS, FIELD_HELP, FIELDS, ICL_DEMOS, LOCK_FILE,
                     OPERATIONAL, RUN_FILE, ConfigError, DataArguments, FinetuneConfig, TruncationError, check_types,
                     config_dict, config_from_mapping, config_hash, launched_processes, load_yaml_config, validate)
from .batching import check_padding_free
from .manifest import MANIFEST, MANIFEST_VERSION, Manifest, ManifestError, read_manifest, training_facts, write_manifest
from .examples import TrainingData, build_examples, fit_example, load_training_items, random_demos
from .runner import device_settings, foreign_files, output_state, run, weight_deviation, weight_deviation_from_files

__all__ = [
    "ADAPTER_DIR", "DATA_FIELDS", "FIELD_HELP", "FIELDS", "ICL_DEMOS", "LOCK_FILE", "MANIFEST", "MANIFEST_VERSION", "Manifest", "ManifestError", "OPERATIONAL",
    "RUN_FILE", "ConfigError", "DataArguments", "FinetuneConfig", "TruncationError", "check_types", "config_dict",
    "config_from_mapping", "config_hash", "launched_processes", "load_yaml_config", "validate", "TrainingData",
    "check_padding_free", "build_examples", "fit_example", "load_training_items", "random_demos", "device_settings", "foreign_files", "output_state", "run",
    "read_manifest", "training_facts", "weight_deviation", "weight_deviation_from_files", "write_manifest",
]
