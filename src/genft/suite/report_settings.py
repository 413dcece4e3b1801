"""How the report judges a finding: equivalence margins, the degenerate-arm rule, tolerances, resampling.

The suite's `report:` block is parsed into `ReportSettings`; a suite without the block gets the defaults
below.  It lives with the suite schema (the report reads it; the suite never imports the report).
"""
from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class Margin(BaseModel):
    """An equivalence margin: a difference inside ±margin counts as "no difference"."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["absolute", "relative"] = Field(
        description="absolute: `value` on the metric's own 0-1 scale; relative: `value` times the reference "
                    "arm's score (the base model, or the plain fine-tuned model for FTICL)")
    value: float = Field(gt=0, description="the margin (absolute) or the fraction of the reference score")
    floor: float = Field(0.0, ge=0, description="relative: the smallest margin, on the metric's own scale (a "
                         "reference score near 0 would otherwise give a margin near 0)")

    def of(self, reference: float) -> float:
        if self.kind == "absolute":
            return self.value
        return max(self.value * abs(reference), self.floor) if not math.isnan(reference) else self.floor

    def text(self) -> str:
        if self.kind == "absolute":
            return f"±{self.value:g}"
        return f"±{self.value:.0%} of the reference score" + (f", at least {self.floor:g}" if self.floor else "")


def _default_margins() -> dict[str, Margin]:
    return {"acc_first": Margin(kind="absolute", value=0.05), "acc": Margin(kind="absolute", value=0.05),
            "rougeL": Margin(kind="relative", value=0.2, floor=0.01)}


TRACKERS = ("tensorboard", "wandb", "mlflow", "trackio")


class ReportSettings(BaseModel):
    """The suite's `report:` block (every key optional)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    margins: dict[str, Margin] = Field(
        default_factory=_default_margins,
        description="equivalence margin per primary metric; default: 5 accuracy points for acc_first / acc, "
                    "20% of the reference score for ROUGE-L (0.02 at a ROUGE-L of 0.10), at least 0.01")
    one_label_share: float = Field(
        0.9, gt=0.5, le=1.0, description="an arm answering one label on at least this share of the items, at or "
                                         "below the majority rate, carries no information (degenerate)")
    near_zero: float = Field(0.05, ge=0, description="a ROUGE-L whose interval lies below this counts as ~0")
    weight_tolerance: float = Field(
        0.05, ge=0, description="weight deviations whose ratio lies within 1 ± this count as equal")
    alpha: float = Field(0.05, gt=0, lt=1, description="family-wise error rate per finding part (Holm)")
    n_resamples: int = Field(2000, ge=100, description="bootstrap resamples")
    seed: int = Field(0, description="bootstrap seed (the report is deterministic)")
    # where the results are also logged: not how findings are judged, so never part of the evidence file
    log_to: Literal[TRACKERS] | None = Field(  # type: ignore[valid-type]
        None, exclude=True, description="also log every cell's metrics and the findings to this tracker "
                                        "(tensorboard, wandb, mlflow, trackio) when the report is written")
    log_dir: str | None = Field(None, exclude=True, description="the tracker's folder (tensorboard: its event "
                                "files; default <output>/tensorboard)")

    def margin(self, metric: str) -> Margin:
        if metric not in self.margins:
            raise KeyError(f"report settings: no equivalence margin for metric {metric!r} "
                           f"(set report.margins.{metric} in the suite)")
        return self.margins[metric]
