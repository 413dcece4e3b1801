"""Running the genft lm-eval tasks from Python: task names, the task manager, one model load per checkpoint.

The YAMLs live in harness_tasks/ at the top of the repository ($GENFT_TASKS_DIR overrides); the same
folder serves `lm_eval --include_path harness_tasks --tasks 'genft_*'`.
"""
from __future__ import annotations

import os
from typing import Any, Sequence

from .data import DataError, data_dir, data_protocols
from .harness_names import BACKENDS, task_name, task_spec, tasks_dir  # noqa: F401 (re-exported)
from .metrics import PREDFIRST, clean_generation, label_metric
from .precision import check_eval_dtype
from .prompts import TaskSpec
from .protocol_lm import with_protocol
from .study_tokens import APPLIED_KEY


def task_manager(pretrained: str | None = None, data_root: str | os.PathLike | None = None, **metadata):
    """A TaskManager over genft's tasks only (skips indexing lm-eval's 14k built-in tasks).

    `pretrained` (the tokenizer) is needed by classification tasks for the study's first-token rule.  Its tasks
    are evaluated through `evaluate`, which gives study-protocol data the study's token ids (APPLIED_KEY tells
    the task loader so; without it the loader refuses such data).
    """
    from lm_eval.tasks import TaskManager

    meta = {"genft_data_dir": str(data_dir(data_root)), APPLIED_KEY: True, **metadata}
    if pretrained:
        meta["pretrained"] = pretrained
    return TaskManager(include_path=str(tasks_dir()), include_defaults=False, metadata=meta)


def match_tasks(patterns: Sequence[str], tm=None) -> list[str]:
    """Expand globs and tags ('genft_*', 'genft_sentiment') into task names, as the lm_eval CLI does."""
    tm = tm or task_manager()
    names: list[str] = []
    for pat in patterns:
        found = tm.match_tasks([pat])
        if not found:
            raise KeyError(f"no genft task matches {pat!r}; `lm_eval ls tasks --include_path {tasks_dir()}` lists them")
        for name in found:
            if name in tm.all_tags:
                names += [t for t in _tag_members(tm, name) if t not in names]
            elif name in tm.all_tasks and name not in names and not name.startswith("_"):
                names.append(name)
    return names


def _tag_members(tm, tag: str) -> list[str]:
    return sorted(name for name, entry in tm.task_index.items() if tag in (getattr(entry, "tags", None) or ()))


def data_protocol(data_root: str | os.PathLike | None = None) -> str:
    """The protocol of the data folder's data sets (a folder holds one)."""
    found = sorted(set(data_protocols(data_root).values()))
    if len(found) > 1:
        raise DataError(f"{data_dir(data_root)} holds data of both protocols ({', '.join(found)}); keep each protocol "
                        "in its own data folder")
    return found[0] if found else "clean"


def per_item(spec: TaskSpec, samples: Sequence[dict], by_doc_id: bool = True) -> dict:
    """Per-item results of one task from lm-eval's samples, in doc_id order (by_doc_id=False: in the order given,
    as a staged cell's items are drawn): doc_ids, each metric's values, and each item's output (the label the
    first-token rule predicts, or the stripped-and-cut generation)."""
    if by_doc_id:
        samples = sorted(samples, key=lambda s: s["doc_id"])
    names = list(dict.fromkeys(m for s in samples for m in s.get("metrics") or []))
    if spec.is_classification:
        outputs = [next((lab for lab in spec.labels if s.get(label_metric(PREDFIRST, lab))), "") for s in samples]
    else:
        outputs = [clean_generation((s.get("filtered_resps") or [""])[0]) for s in samples]
    return {"doc_ids": [int(s["doc_id"]) for s in samples], "items": {m: [s.get(m) for s in samples] for m in names},
            "outputs": outputs}


def load_model(
    pretrained: str,
    backend: str = "hf",
    peft: str | None = None,
    device: str = "cpu",
    batch_size: int = 8,
    dtype: str | None = None,
    dtype_setting: str = "dtype",
    **kwargs: Any,
):
    """Load one checkpoint once as an lm-eval model; every cell of that checkpoint reuses it.

    dtype: the weights' dtype (None: transformers' default).  bfloat16 on a CPU without native bf16 raises
    genft.precision.PrecisionError (naming `dtype_setting`) before anything is loaded."""
    from lm_eval.api.registry import get_model

    check_eval_dtype(device, dtype, dtype_setting)

    args: dict[str, Any] = {"pretrained": pretrained, "device": device, "batch_size": batch_size, **kwargs}
    if backend == "genft-hf":
        from . import backend as _backend  # noqa: F401  (registers genft-hf)

        # genft's generation tasks strip, then cut at the first blank line: rows stop there
        args.setdefault("cut_at_blank_line", True)
    if peft:
        args["peft"] = peft
    if dtype:
        args["dtype"] = dtype
    return get_model(backend).create_from_arg_obj(args)


def evaluate(
    lm,
    tasks: Sequence[str],
    num_fewshot: int = 0,
    limit: int | None = None,
    pretrained: str | None = None,
    data_root: str | os.PathLike | None = None,
    log_samples: bool = False,
    fewshot_random_seed: int = 1234,
    tm=None,
    samples: dict[str, list[int]] | None = None,
    protocol: str | None = None,
) -> dict:
    """Evaluate a loaded model on genft tasks at one shot count; returns lm-eval's results dict.

    `samples` (instead of `limit`): task name -> the doc ids to evaluate, each list non-empty and ascending
    (lm-eval numbers the selected docs in file order and maps them back through this list).
    protocol: the data's ("clean" or "study"; default: that of the data folder the task manager reads).
    Study-protocol data is evaluated on the study's token ids (genft.protocol_lm), whoever calls: suites and
    `genft eval` alike."""
    import lm_eval

    if samples is not None:
        if limit is not None:
            raise ValueError("give limit or samples, not both")
        for name, ids in samples.items():
            if not ids or list(ids) != sorted(set(ids)):
                raise ValueError(f"samples[{name!r}] must be a non-empty ascending list of doc ids, got {ids!r}")
    tm = tm or task_manager(pretrained, data_root)
    root = (getattr(tm, "metadata", None) or {}).get("genft_data_dir", data_root)
    return lm_eval.simple_evaluate(
        model=with_protocol(lm, protocol or data_protocol(root), num_fewshot),
        tasks=list(tasks),
        num_fewshot=num_fewshot,
        limit=limit,
        samples=samples,
        task_manager=tm,
        log_samples=log_samples,
        fewshot_random_seed=fewshot_random_seed,
        random_seed=0,
        numpy_random_seed=1234,
        torch_random_seed=1234,
        bootstrap_iters=0,
    )
