"""Figures: the transfer heat map, shot curves, training-size curves (PNG bytes, deterministic)."""
from __future__ import annotations

import io
import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from .model import TASK_ORDER, SuiteData


def _fig_bytes(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


def _pyplot():
    plt.rcParams.update({"font.size": 8, "svg.hashsalt": "genft"})
    return plt


def figure_heatmap(s: SuiteData, base: str, prompt: int = 1, shots: int = 0) -> bytes | None:
    """Rows: fine-tuned models; columns: test sets; colour: change vs base at the same shots and prompt."""
    groups = s.ft_groups(base, plain=None)
    sets = [ts for ts in s.test_sets if any(s.vs_base(s.cond(g, ts, prompt, shots)) for g in groups)]
    groups = [g for g in groups if any(s.vs_base(s.cond(g, ts, prompt, shots)) for ts in sets)]
    if not sets or not groups:
        return None
    plt = _pyplot()
    vals = np.full((len(groups), len(sets)), np.nan)
    sig = np.zeros_like(vals, dtype=bool)
    for i, g in enumerate(groups):
        for j, ts in enumerate(sets):
            comp = s.vs_base(s.cond(g, ts, prompt, shots))
            if comp is not None:
                vals[i, j] = comp.diff
                sig[i, j] = comp.mark in ("▲", "▼")
    lim = float(np.nanmax(np.abs(vals))) or 1.0
    label_w = 0.075 * max(len(g.label) for g in groups)  # inches for the row labels
    label_h = 0.065 * max(len(ts.name) for ts in sets)  # for the rotated column labels
    fig, ax = plt.subplots(figsize=(max(4.5, 1.6 + label_w + 0.75 * len(sets)),
                                    max(3.0, 1.3 + label_h + 0.4 * len(groups))))
    cmap = plt.get_cmap("RdBu").with_extremes(bad="0.85")
    im = ax.imshow(np.ma.masked_invalid(vals), cmap=cmap, vmin=-lim, vmax=lim, aspect="auto")
    for i in range(len(groups)):
        for j in range(len(sets)):
            if not np.isnan(vals[i, j]):
                ax.text(j, i, f"{vals[i, j]:+.2f}{'*' if sig[i, j] else ''}", ha="center", va="center", fontsize=6,
                        color="white" if abs(vals[i, j]) > 0.6 * lim else "black")
    ax.set_xticks(range(len(sets)), [ts.name for ts in sets], rotation=60, ha="right")
    ax.set_yticks(range(len(groups)), [g.label for g in groups])
    ax.set_title(f"change vs base ({base})\nPrompt-{prompt}, {shots}-shot; * = 95% CI excludes 0")
    fig.colorbar(im, ax=ax, fraction=0.03)
    fig.tight_layout()
    return _fig_bytes(fig)


def figure_shots(s: SuiteData, base: str, task: str) -> bytes | None:
    """Score vs shots per test set of a task: the base model and the models fine-tuned on the task (Prompt-1)."""
    sets = [ts for ts in s.test_sets if ts.task == task]
    groups = [g for g in [s.base_group(base)] + s.ft_groups(base, task, plain=None) if g is not None]
    sets = [ts for ts in sets if any(len(s.conds_of(g, ts, 1)) > 1 for g in groups)]
    if not sets:
        return None
    plt = _pyplot()
    ncol = min(4, len(sets))
    nrow = math.ceil(len(sets) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.2 * ncol, 2.6 * nrow), squeeze=False)
    for ax, ts in zip(axes.flat, sets):
        for g in groups:
            cs = s.conds_of(g, ts, 1)
            if cs:
                ax.plot([c.shots for c in cs], [c.score for c in cs], marker="o",
                        linestyle="--" if g.is_base else "-", label=g.label)
        ax.set_title(f"{ts.name} ({ts.domain})")
        ax.set_xticks(sorted({c.shots for g in groups for c in s.conds_of(g, ts, 1)}))
        ax.set_xlabel("shots")
        ax.set_ylabel(s.conds_of(groups[0], ts, 1)[0].metric if s.conds_of(groups[0], ts, 1) else "score")
    for ax in list(axes.flat)[len(sets):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=6)
    fig.tight_layout()
    return _fig_bytes(fig)


def figure_train_size(s: SuiteData, base: str) -> bytes | None:
    """Score vs training size per test set (plain FT, 0-shot, Prompt-1); base as a dotted line."""
    tasks = [t for t in TASK_ORDER if len({g.size for g in s.ft_groups(base, t)}) > 1]
    if not tasks:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(tasks), figsize=(3.4 * len(tasks), 2.8), squeeze=False)
    bg = s.base_group(base)
    for ax, task in zip(axes.flat, tasks):
        groups = s.ft_groups(base, task)
        for i, ts in enumerate(ts for ts in s.test_sets if ts.task == task):
            pts = sorted((g.size, s.cond(g, ts, 1, 0).score) for g in groups if s.cond(g, ts, 1, 0) is not None)
            if not pts:
                continue
            color = f"C{i % 10}"
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", color=color, label=ts.dataset)
            b = s.cond(bg, ts, 1, 0)
            if b is not None:
                ax.axhline(b.score, color=color, linestyle=":", linewidth=1)
        ax.set_xticks(sorted({g.size for g in groups if g.size is not None}))
        ax.set_title(f"{task} (dotted: base)")
        ax.set_xlabel("training examples")
        ax.set_ylabel("score, 0-shot")
        ax.legend(fontsize=6)
    fig.tight_layout()
    return _fig_bytes(fig)
