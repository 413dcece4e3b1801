"""Learning-forgetting curves: how a run's transfer changes during training.

A run with `evaluate_checkpoints: [steps]` has cells of its intermediate models (their checkpoint identity
holds the `step`).  They are kept out of the transfer tables and findings (`split`), and shown here per run:
the change vs the base model (the report's comparison of each cell with the base model's cell of the same
test set, prompt, shots and demonstrations, with its 95% bootstrap interval) after each step and at the end
of training, grouped by setting: in-domain gain, out-of-domain change, cross-task change.  Step 0 is the base
model itself (change 0).  A figure per run (the first prompt, fewest shots) and a table (every cell).
"""
from __future__ import annotations

from collections import defaultdict
from typing import Callable, Mapping

from matplotlib.ticker import MaxNLocator

from ..suite.store import CellRecord
from .export import one_cell, setting, split, step_of  # noqa: F401 (split: re-exported for write)
from .figures import _fig_bytes, _pyplot
from .markdown import table
from .model import Comp, Cond, SuiteData, fmt

SETTINGS = ("in-domain", "out-of-domain", "cross-task")
STYLE = {"in-domain": "-", "out-of-domain": "--", "cross-task": ":"}


class Curves:
    """Per run: series (setting, test set, prompt, shots, demos) -> {step: comparison vs base}."""

    def __init__(self, s: SuiteData, stepped: list[CellRecord], facts: Mapping[str, Mapping]):
        self.s = s
        self.final_step: dict[str, int | None] = {}
        self.series: dict[str, dict[tuple, dict[int | str, Comp]]] = {}
        self._alive: list[Cond] = []  # SuiteData remembers comparisons by the conditions' ids
        by_run: dict[str, list[tuple[int | str, CellRecord]]] = defaultdict(list)
        for r in stepped:
            by_run[r.finetune.run].append((step_of(r), r))
        for run in sorted(by_run):
            final = (facts.get(run) or {}).get("training", {}).get("global_steps")
            self.final_step[run] = final
            points = by_run[run] + [("final", r) for r in s.cells if r.finetune and r.finetune.run == run]
            series: dict[tuple, dict] = defaultdict(dict)
            for step, r in points:
                comp = self._vs_base(r)
                if comp is not None:
                    key = (SETTINGS.index(setting(r)), r.task, r.dataset, r.prompt, r.shots,
                           -1 if r.demo_seed is None else r.demo_seed)
                    series[key][step] = comp
            self.series[run] = dict(sorted(series.items()))

    def _vs_base(self, rec: CellRecord) -> Comp | None:
        cond = one_cell(self.s, rec)
        self._alive.append(cond)
        base = self.s.cond(self.s.base_group(rec.base), (rec.task, rec.dataset), rec.prompt, rec.shots, rec.demo_seed)
        return self.s.compare(cond, base)

    def steps(self, run: str) -> list[int | str]:
        found = {st for pts in self.series[run].values() for st in pts}
        return sorted((x for x in found if x != "final"), key=int) + (["final"] if "final" in found else [])

    def x(self, run: str, step: int | str) -> int | None:
        return self.final_step[run] if step == "final" else int(step)

    def figure(self, run: str) -> bytes | None:
        """Change vs base over steps: one line per test set at the first prompt and fewest shots."""
        keys = list(self.series[run])
        if not keys:
            return None
        prompt, shots = min(k[3] for k in keys), min(k[4] for k in keys)
        plt = _pyplot()
        fig, ax = plt.subplots(figsize=(6.4, 3.6))
        colors = plt.get_cmap("tab10")
        for i, key in enumerate(k for k in keys if k[3] == prompt and k[4] == shots and k[5] == -1):
            pts = [(self.x(run, st), c) for st, c in self.series[run][key].items() if self.x(run, st) is not None]
            pts = [(0, None)] + sorted(pts, key=lambda p: p[0])
            xs = [p[0] for p in pts]
            ys = [0.0 if c is None else c.diff for _, c in pts]
            err = [[0.0 if c is None else c.diff - c.lo for _, c in pts], [0.0 if c is None else c.hi - c.diff
                                                                        for _, c in pts]]
            ax.errorbar(xs, ys, yerr=err, linestyle=STYLE[SETTINGS[key[0]]], marker="o", markersize=3, capsize=2,
                        color=colors(i % 10), label=f"{SETTINGS[key[0]]}: {key[1]}/{key[2]}")
        ax.axhline(0, color="0.5", linewidth=0.8)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("optimizer step (0: the base model)")
        ax.set_ylabel("change vs base (primary metric)")
        ax.set_title(f"{run}: learning vs forgetting, Prompt-{prompt}, {shots}-shot (95% intervals)")
        ax.legend(fontsize=6, loc="best")
        fig.tight_layout()
        return _fig_bytes(fig)

    def table(self, run: str) -> str:
        steps = self.steps(run)
        final = self.final_step[run]
        heads = [f"step {st}" if st != "final" else (f"final (step {final})" if final else "final") for st in steps]
        rows = []
        for key, pts in self.series[run].items():
            some = next(iter(pts.values()))
            demos = "" if key[5] == -1 else f", demos seed {key[5]}"
            rows.append([SETTINGS[key[0]], f"{key[1]}/{key[2]}", f"P{key[3]}, {key[4]}-shot{demos}", fmt(some.b)]
                        + [pts[st].text() if st in pts else "—" for st in steps])
        return table(rows, ["setting", "test set", "prompt, shots", "base"] + heads)


def section(s: SuiteData, stepped: list[CellRecord], facts: Mapping[str, Mapping],
            add: Callable[[str, Callable[[], bytes | None]], str | None]) -> list[str]:
    """The report's "Learning vs forgetting" section (nothing when no run evaluated intermediate models)."""
    if not stepped:
        return []
    c = Curves(s, stepped, facts)
    lines = ["## Learning vs forgetting over training steps", "",
             "Runs whose models were also evaluated after intermediate optimizer steps (`evaluate_checkpoints`): "
             "the change vs the base model (same test set, prompt, shots and demonstrations; 95% bootstrap "
             "interval over the items) at each step. In-domain gain against out-of-domain and cross-task change; "
             "step 0 is the base model. These cells are not in the tables and findings above.", ""]
    for run in c.series:
        lines += [f"### {run}", ""]
        fig = add(f"curve-{run}.png", lambda r=run: c.figure(r))
        if fig:
            lines += [f"![learning vs forgetting]({fig})", ""]
        lines += [c.table(run) if c.series[run] else "No cell of this run has a matching base-model cell.", ""]
    return lines
