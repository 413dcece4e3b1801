"""The time model: what a fine-tune or a cell is expected to take, calibrated by what this suite measured.

The defaults are SmolLM2-135M on 2 CPU cores (genft-hf, 2 threads, a machine measuring ~370 GFLOP/s fp32
matmul), fitted by benchmarks/time_model.py to the 200 cells and 10 fine-tunes of runs/study-cpu on an idle
machine (2026-12-03; reports/benchmarks.md, time_model): classification 0.055 s/item for two labels whatever
the shots (the study's fixed demonstrations are one prefix, which genft-hf scores once; the fit saw no
random-demonstration cells); generation (to 60 new tokens, cut at the first blank line) 0.337 s/item + 0.017 s
per demonstration; LoRA training 224 tokens/s (padding-free batches of 8, the LM head at target positions).
One thread, or a machine shared with other work: about twice as long; a slower machine: in proportion to its
matmul speed.  bf16 (a model's `dtype: bfloat16`, a run's `bf16: true`, on a CPU with native bf16) scales these
by DTYPE_TIME / BF16_TRAIN_SPEEDUP, measured with float32 and bf16 side by side in one run on an idle 2-core
machine (2026-12-04; reports/benchmarks.md, eval_speed:dtypes and finetune_speed:dtypes): genft-hf's model
time in bf16 over float32's, the median over eval_speed.py's default cells of each family (classification
0.37, 3 cells; generation 0.45, 8 cells), and LoRA training tokens/s in bf16 mixed precision over float32's
(1.75: SmolLM2-135M, r16 all-linear, batch 8, 8 steps, 3 runs each; with LoRA's base in bf16 2.24, taken
as 1.75 too).  A rough
start: a suite's own finished cells calibrate it as they do the float32 defaults.  Once cells of a suite finish, the plan scales the defaults per task family by measured /
estimated time (`calibrate`).
"""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

from .. import data as gdata
from ..files import fmt_duration
from ..prompts import get_task

LOAD_S = 15.0  # one model load
CLS_ITEM_S = 0.055  # per classification item at 0 shots, for two labels
CLS_SHOT = {"hf": 1.0, "genft-hf": 0.0, "vllm": 0.05}  # extra cost per demonstration, x the 0-shot cost
GEN_ITEM_S = 0.337  # per generated item (up to 60 new tokens) ...
GEN_SHOT_S = 0.017  # ... plus per demonstration
ONE_THREAD = 2.0  # the slowdown of one thread (the defaults are for 2)
BACKEND_FACTOR = {"hf": 1.0, "genft-hf": 1.0, "vllm": 0.3}
TRAIN_TOKENS_S = 224.0  # LoRA on SmolLM2-135M, 2 threads, padding-free batches
# A cell's time in a dtype over its float32 time, per task family (bf16: the measurement above; float16 and
# others: not measured, taken as float32's)
DTYPE_TIME = {"bfloat16": {"classification": 0.37, "generation": 0.45}}
BF16_TRAIN_SPEEDUP = 1.75  # bf16 mixed precision's training tokens/s over float32's (the measurement above)


def slowdown(threads: int | None) -> float:
    return ONE_THREAD if threads == 1 else 1.0


def cell_seconds(task: str, shots: int, n: int, backend: str, threads: int | None, *,
                 cls_item_s: float = CLS_ITEM_S, cls_shot: float | None = None, gen_item_s: float = GEN_ITEM_S,
                 gen_shot_s: float = GEN_SHOT_S, dtype: str | None = None) -> float:
    """The default time of one cell: genft-hf scores the demonstrations' shared prefix once, so shots cost
    it less than hf.  The keywords replace the model's constants (benchmarks/time_model.py fits them);
    cls_shot None: the backend's CLS_SHOT; dtype: the weights' (DTYPE_TIME; None: float32)."""
    spec = get_task(task)
    if spec.is_classification:
        shot = CLS_SHOT.get(backend, 1.0) if cls_shot is None else cls_shot
        per = cls_item_s * (1 + shot * shots) * len(spec.labels) / 2
    else:
        per = gen_item_s + gen_shot_s * shots
    per *= DTYPE_TIME.get(dtype or "float32", {}).get("classification" if spec.is_classification else "generation", 1.0)
    return n * per * BACKEND_FACTOR.get(backend, 1.0) * slowdown(threads)


def training_tokens(cfg, root: Path) -> int:
    """Rough training tokens (chars / 3.5 of prompt + target, demonstrations included), times epochs."""
    path = gdata.dataset_dir(cfg.task, cfg.dataset, root) / f"train_{cfg.train_size}.jsonl"
    if path.is_file():
        lines = path.read_text(encoding="utf-8").splitlines()
        n = min(len(lines), cfg.train_limit or len(lines))
        per = sum(len(line) for line in lines[:n]) / max(n, 1)
    else:  # data not there yet: typical item sizes in characters
        n = min(cfg.train_size, cfg.train_limit or cfg.train_size)
        per = 200 if gdata.all_datasets()[cfg.dataset].source == "builtin" else {"summary": 2000}.get(cfg.task, 400)
    per *= 1 + (cfg.icl_shots or 0)
    items = n * cfg.num_train_epochs
    if cfg.max_steps and cfg.max_steps > 0:
        items = cfg.max_steps * cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps
    return int(items * min((per + 40) / 3.5, cfg.max_length))


def calibrate(pairs: Iterable[tuple[str, float, float]]) -> dict[str, float]:
    """(family, measured s, estimated s) of finished cells -> measured / estimated per family."""
    sums: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for family, measured, est in pairs:
        sums[family][0] += measured
        sums[family][1] += est
    return {k: m / e for k, (m, e) in sums.items() if m > 0 and e > 0}


def train_rate(measured_tps: Sequence[float], threads: int | None, bf16: bool = False) -> float:
    """Training tokens/s: the mean of this suite's finished runs of the same precision, else the default."""
    if measured_tps:
        return sum(measured_tps) / len(measured_tps)
    return TRAIN_TOKENS_S * (BF16_TRAIN_SPEEDUP if bf16 else 1.0) / slowdown(threads)


class Progress:
    """Counts finished cells and prints one line per cell with the time left (re-calibrated as cells finish)."""

    def __init__(self, cells: Sequence, ratios: Mapping[str, float], log: Callable[[str], None]):
        self.total = len(cells)
        self.done = 0
        self.left = {id(c): c for c in cells}
        self.ratios = dict(ratios)
        self.measured: list[tuple[str, float, float]] = []
        self.loads_left = len({c.checkpoint.id for c in cells})
        self.log = log

    def loaded(self) -> None:
        self.loads_left = max(0, self.loads_left - 1)

    def finished(self, cell, wall: float, value: float | None) -> None:
        self.done += 1
        self.left.pop(id(cell), None)
        self.measured.append((cell.family, wall, cell.est_s))
        self.ratios.update(calibrate(self.measured))
        rest = sum(c.est_s * self.ratios.get(c.family, 1.0) for c in self.left.values()) + LOAD_S * self.loads_left
        val = "n/a" if value is None else f"{value:.3f}"
        self.log(f"[{self.done}/{self.total}] {cell.label()}: {cell.metric} {val} ({wall:.0f} s)"
                 + (f", ~{fmt_duration(rest)} left" if self.left else ""))
