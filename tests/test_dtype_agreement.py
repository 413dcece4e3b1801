"""benchmarks/dtype_agreement.py: two dtypes' cells of the same checkpoints compared item by item, on records
written by the real store and read back as the report reads them."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
from report_records import ft, record, stored

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import dtype_agreement  # noqa: E402


def side(tmp_path, name, flip, weights=None):
    """A base and a fine-tuned sentiment cell on 40 items; `flip` answers of the fine-tune changed."""
    gold = ["positive" if i % 2 else "negative" for i in range(40)]
    f = ft("sentiment", "builtin_products")
    if weights:
        f = f.model_copy(update={"weights_sha256": weights})
    preds = [g if i < 30 else ("negative" if g == "positive" else "positive") for i, g in enumerate(gold)]
    changed = [("negative" if p == "positive" else "positive") if i < flip else p for i, p in enumerate(preds)]
    recs = [record("sentiment", "builtin_products", "in", None, gold=gold, preds=preds, suite=name),
            record("sentiment", "builtin_products", "in", f, gold=gold, preds=changed, suite=name)]
    return stored(tmp_path / name, recs)


def test_the_table_counts_same_predictions_and_score_changes(tmp_path):
    a, b = side(tmp_path, "a", 0), side(tmp_path, "b", 4)
    out = tmp_path / "bench.md"
    out.write_text("# bench\n\nkept text\n")
    assert dtype_agreement.main(["--a", str(a), "--b", str(b), "--out", str(out)]) == 0
    text = out.read_text()
    assert text.startswith("# bench\n\nkept text\n") and "<!-- dtype_agreement:start -->" in text
    [row] = [ln for ln in text.splitlines() if ln.startswith("| classification")]
    cells = [c.strip() for c in row.strip("|").split("|")]
    # 2 cells, 80 items, 4 of them changed (the fine-tune's first 4: right -> wrong): 76/80 the same
    assert cells[:4] == ["classification", "2", "80", "0.950"]
    assert cells[4] == "0.0500" and cells[5] == "0.1000" and cells[6] == "-0.0500"


def test_cells_of_other_weights_are_refused(tmp_path):
    a, b = side(tmp_path, "a", 0), side(tmp_path, "b", 0, weights="f" * 64)  # the run retrained to other weights
    with pytest.raises(SystemExit, match="the two sides' trained weights differ"):
        dtype_agreement.section(str(a), str(b), "float32", "bfloat16")
