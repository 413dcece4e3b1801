"""A fine-tuning run's training examples: the items and demonstration pool from the data folder, FTICL
demonstrations, and target-safe truncation to max_length (the token counts as TRL's SFTTrainer makes them)."""
from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

from .. import data as gdata
from ..prompts import TARGET_DELIMITER, get_task, render_context, render_target
from .config import ConfigError, FinetuneConfig, TruncationError

# ---------------------------------------------------------------- data


@dataclass
class TrainingData:
    examples: list[dict]  # {"prompt", "completion"}, after truncation
    items: list[dict]  # the training items, in order
    demos: list[list[int]] | list[dict]  # per example: the demo items used (before truncation)
    files: dict[str, str]  # file name -> sha256
    paths: dict[str, str]
    truncation: dict


def load_training_items(cfg: FinetuneConfig) -> tuple[list[dict], list[dict], dict[str, str], dict[str, str]]:
    """(training items, demo pool for fixed demos, {file: sha256}, {file: path}); clear errors if missing."""
    root = cfg.data_dir
    info = gdata.get_dataset(cfg.task, cfg.dataset)
    folder = gdata.dataset_dir(cfg.task, cfg.dataset, root)
    split = f"train_{cfg.train_size}"
    if not folder.is_dir():
        raise gdata.DataError(
            f"data set {cfg.task}/{cfg.dataset} is not in {gdata.data_dir(root)}: create it with "
            f"`{gdata.data_command(info)} --data-dir {gdata.data_dir(root)}` (or point --data_dir / GENFT_DATA_DIR at it)"
        )
    if not (folder / f"{split}.jsonl").is_file():
        sizes = gdata.train_sizes(cfg.task, cfg.dataset, root)
        raise gdata.DataError(
            f"train_size {cfg.train_size}: {folder / (split + '.jsonl')} does not exist; {cfg.task}/{cfg.dataset} has "
            f"training sizes {', '.join(map(str, sizes)) or 'none (not a training data set)'}"
            + ("" if sizes else f"; the training sets come from `{gdata.data_command(info)}`")
        )
    items = gdata.load_split(cfg.task, cfg.dataset, split, root)
    files = {f"{split}.jsonl": gdata.file_sha256(folder / f"{split}.jsonl")}
    paths = {f"{split}.jsonl": str(folder / f"{split}.jsonl")}
    if cfg.train_limit is not None:
        if cfg.train_limit > len(items):
            raise ConfigError(f"train_limit: {cfg.train_limit} is more than the {len(items)} items of {paths[split + '.jsonl']}")
        items = items[: cfg.train_limit]
    pool: list[dict] = []
    if cfg.icl_shots and cfg.icl_demos == "fixed":
        pool = gdata.load_split(cfg.task, cfg.dataset, "demos", root)
        files["demos.jsonl"] = gdata.file_sha256(folder / "demos.jsonl")
        paths["demos.jsonl"] = str(folder / "demos.jsonl")
        if cfg.icl_shots > len(pool):
            raise ConfigError(
                f"icl_shots: k={cfg.icl_shots} is larger than the demo pool of {cfg.task}/{cfg.dataset} "
                f"({len(pool)} items in {paths['demos.jsonl']})"
            )
    elif cfg.icl_shots and cfg.icl_shots > len(items) - 1:
        raise ConfigError(f"icl_shots: k={cfg.icl_shots} random demos need at least k+1 training items, have {len(items)}")
    return items, pool, files, paths


def _item_key(spec, item) -> tuple:
    return tuple(item[f] for f in spec.fields)


def random_demos(task: str, items: Sequence[Mapping[str, str]], k: int, seed: int) -> list[list[int]]:
    """Per example i: k distinct indices into `items`, drawn with a seeded RNG, never i nor a copy of item i."""
    spec = get_task(task)
    keys = [_item_key(spec, it) for it in items]
    rng = random.Random(f"genft-icl-{seed}")
    out = []
    for i in range(len(items)):
        chosen: list[int] = []
        seen = set()
        attempts = 0
        while len(chosen) < k:
            j = rng.randrange(len(items))
            attempts += 1
            if j != i and j not in seen and keys[j] != keys[i]:
                chosen.append(j)
                seen.add(j)
            if attempts > 100 * (k + 1) + 10 * len(items):
                raise ConfigError(f"icl_shots: cannot draw {k} demos different from training item {i} (too many duplicates)")
        out.append(chosen)
    return out


class _Measure:
    """Token count of prompt + completion + EOS, tokenized exactly as TRL's SFTTrainer does (one string)."""

    def __init__(self, tokenizer):
        self.tok = tokenizer
        self.eos = tokenizer.eos_token or ""

    def __call__(self, prompt: str, completion: str) -> int:
        return len(self.tok(text=prompt + completion + self.eos)["input_ids"])


def _word_starts(text: str) -> list[int]:
    starts = [m.start() for m in re.finditer(r"\S+", text)]
    if len(starts) <= 1:  # no spaces to cut at (e.g. one long token run): cut at characters
        starts = list(range(len(text)))
    return starts + [len(text)]


def fit_example(
    task: str,
    item: Mapping[str, str],
    demos: Sequence[Mapping[str, str]],
    measure: Callable[[str, str], int],
    max_length: int,
    prompt: int = 1,
    target_delimiter: str = TARGET_DELIMITER,
) -> tuple[dict, dict]:
    """One training example that fits into max_length: drop trailing demos, then cut inputs from their start.

    Returns ({"prompt", "completion"}, {"demos_dropped": n, "input_chars_cut": n, "length": tokens}).
    """
    spec = get_task(task)
    completion = render_target(spec, item)
    kept = list(demos)
    text = render_context(spec, item, kept, prompt, target_delimiter)
    n = measure(text, completion)
    dropped = 0
    while n > max_length and kept:
        kept.pop()  # the last demo goes first: the first j demos stay, as in lm-eval's j-shot context
        dropped += 1
        text = render_context(spec, item, kept, prompt, target_delimiter)
        n = measure(text, completion)
    cut_chars = 0
    if n > max_length:
        work = dict(item)
        bare = dict(item, **{f: "" for f in spec.inputs})
        n_bare = measure(render_context(spec, bare, [], prompt, target_delimiter), completion)
        if n_bare > max_length:
            raise TruncationError(
                f"the bare template + target + EOS of this example takes {n_bare} tokens, more than max_length "
                f"{max_length}: raise --max_length (target: {completion[:80]!r}{'...' if len(completion) > 80 else ''})"
            )
        for fname in spec.inputs:  # template order: the field farthest from the target first
            value = item[fname]
            starts = _word_starts(value)
            def length_at(pos: int) -> int:
                return measure(render_context(spec, dict(work, **{fname: value[pos:]}), [], prompt, target_delimiter),
                               completion)
            if length_at(len(value)) > max_length:  # even empty this field is not enough: empty it, go on
                work[fname] = ""
                cut_chars += len(value)
                continue
            lo, hi = 0, len(starts) - 1  # smallest cut position (in starts) that fits
            while lo < hi:
                mid = (lo + hi) // 2
                if length_at(starts[mid]) <= max_length:
                    hi = mid
                else:
                    lo = mid + 1
            while length_at(starts[lo]) > max_length:  # tokenization is not strictly monotone: step on
                lo += 1
            work[fname] = value[starts[lo]:]
            cut_chars += starts[lo]
            break
        text = render_context(spec, work, [], prompt, target_delimiter)
        n = measure(text, completion)
        assert n <= max_length, (n, max_length)
    return {"prompt": text, "completion": completion}, {"demos_dropped": dropped, "input_chars_cut": cut_chars, "length": n}


def build_examples(
    cfg: FinetuneConfig, tokenizer, items: Sequence[dict], pool: Sequence[dict], log: Callable[[str], None] = print
) -> tuple[list[dict], list[list[dict]], dict]:
    """The prompt-completion examples (truncated to fit), the demos each example was given, and the counts."""
    k = cfg.icl_shots
    if k and cfg.icl_demos == "fixed":
        demo_lists = [list(pool[:k])] * len(items)
    elif k:
        demo_lists = [[items[j] for j in idx] for idx in random_demos(cfg.task, items, k, cfg.seed)]
    else:
        demo_lists = [[] for _ in items]
    measure = _Measure(tokenizer)
    examples, lengths = [], []
    counts = {"examples": len(items), "examples_demos_cut": 0, "demos_dropped": 0, "examples_input_cut": 0,
              "input_chars_cut": 0, "max_length": cfg.max_length}
    for i, (item, demos) in enumerate(zip(items, demo_lists)):
        try:
            ex, info = fit_example(cfg.task, item, demos, measure, cfg.max_length, cfg.prompt)
        except TruncationError as e:
            raise TruncationError(f"training item {i} of {cfg.task}/{cfg.dataset} train_{cfg.train_size}: {e}") from None
        examples.append(ex)
        lengths.append(info["length"])
        if info["demos_dropped"]:
            counts["examples_demos_cut"] += 1
            counts["demos_dropped"] += info["demos_dropped"]
        if info["input_chars_cut"]:
            counts["examples_input_cut"] += 1
            counts["input_chars_cut"] += info["input_chars_cut"]
    counts["tokens"] = sum(lengths)
    counts["longest"] = max(lengths) if lengths else 0
    cut = counts["examples_demos_cut"] + counts["examples_input_cut"]
    log(f"[genft] {len(examples)} examples, {counts['tokens']} tokens (longest {counts['longest']}, max_length "
        f"{cfg.max_length}); truncated: {counts['examples_demos_cut']} lost demos ({counts['demos_dropped']} demos), "
        f"{counts['examples_input_cut']} had input cut ({counts['input_chars_cut']} chars){'' if cut else ' (none)'}")
    return examples, demo_lists, counts


