"""Supervised fine-tuning for genft with TRL: plain (FT) or with in-context demonstrations (FTICL), full or LoRA.

In the style of TRL's trl/scripts/sft.py: settings come from the command line or a `--config` YAML
(read bounded by genft.settings_yaml and type-checked; the command line wins), argument names are TRL's, and ONE trl.SFTTrainer is built.
The work is in genft.training; see finetune/README.md.

    # the study's recipe (full fine-tuning, lr 2e-5, 2 epochs, effective batch 32, max length 1024, seed 42)
    python finetune/sft.py --task sentiment --model_name_or_path smollm2-135m --output_dir runs/ft-amazon-2000

    # a recipe file, with a command-line override
    python finetune/sft.py --config finetune/recipes/ficl-sentiment-k2.yaml --output_dir runs/x

    # several GPUs: the same command under accelerate
    accelerate launch finetune/sft.py --config finetune/recipes/ft-summary-2000.yaml --output_dir runs/y

Exit status: 0 when the run finished (or was already finished with the same config: `OUT/genft_manifest.json`
exists), 2 for a bad configuration (nothing is written), 1 for a failure while training (resume by
running the same command again).
"""
from __future__ import annotations

import sys


def make_parser():
    from transformers import HfArgumentParser

    from genft.training import FinetuneConfig

    parser = HfArgumentParser([FinetuneConfig], prog="finetune/sft.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=None, help="YAML file of settings (the command line overrides it)")
    return parser


def parse_args(argv=None):
    """(config) from the command line and an optional --config YAML; the command line wins."""
    from genft.training import ConfigError, FinetuneConfig, load_yaml_config

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = make_parser()
    pre, _ = parser.parse_known_args(argv)  # only to find --config
    if pre.config:
        values = load_yaml_config(pre.config)
        parser.set_defaults(**values)
    ns = parser.parse_args(argv)  # unknown command-line arguments: argparse error, exit 2
    values = {k: v for k, v in vars(ns).items() if k != "config"}
    try:
        return FinetuneConfig(**values)
    except TypeError as e:  # defensive: should be impossible after the key checks
        raise ConfigError(str(e)) from None


def main(argv=None) -> int:
    from genft.data import DataError
    from genft.training import ConfigError, TruncationError

    try:
        cfg = parse_args(argv)
        from genft.training import run

        run(cfg)
    except (ConfigError, DataError, TruncationError) as e:
        print(f"finetune/sft.py: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # disk full, read-only, permission: one line; what was saved so far resumes
        from genft.files import describe_os_error

        print(f"finetune/sft.py: error: {describe_os_error(e)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
