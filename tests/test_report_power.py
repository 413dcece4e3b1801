"""The power planner: the comparisons each finding part of a planned suite would make (from the report's own
finding functions over placeholder records of the plan), their precision from a pilot's per-item variances or
the stated defaults, and the items a part needs to be decided."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml
from report_records import ft, record, stored

from genft.cli import main
from genft.report import write_report
from genft.report.power import DEFAULT_UNIT_VARIANCE, TARGET_HALF_WIDTH, pilot_variances, power
from genft.suite import load_suite


def suite_file(tmp: Path, builtin_data: Path, limit: int = 24) -> Path:
    """Sentiment fine-tuned at two sizes (a series) on the tiny model; sentiment in- and out-of-domain, one
    summary set for the cross-task cells."""
    trainer = {"use_peft": True, "learning_rate": 2.0e-4, "max_steps": 1, "max_length": 128}
    doc = {"name": "p", "data": {"source": "builtin", "data_dir": str(builtin_data)},
           "models": {"tiny": {"model": "tiny"}},
           "finetune": [{"name": f"ft-{n}", "base": "tiny", "task": "sentiment", "train_size": n, "trainer": trainer}
                        for n in (100, 200)],
           "eval": {"test_sets": ["builtin_products", "builtin_restaurants", "builtin_sports"],
                    "shots": {"classification": [0, 2], "generation": [0]}, "prompts": [1],
                    "limit": {"classification": limit, "generation": 8}, "backend": "hf"},
           "output": str(tmp / "out")}
    path = tmp / "suite.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def test_parts_and_their_precision_from_the_defaults(tmp_path, builtin_data):
    rows, note = power(load_suite(suite_file(tmp_path, builtin_data)))
    by = {r.key: r for r in rows}
    assert "defaults" in note
    # 3b: 2 fine-tunes x 1 out-of-domain set x 2 shot counts, 24 items each
    r = by["3b"]
    assert (r.comparisons, r.items, r.source) == (4, 24, "defaults")
    se = math.sqrt(4 * DEFAULT_UNIT_VARIANCE["classification"] / 24) / 4
    assert r.half_width == pytest.approx(1.959964 * se, rel=1e-4)
    assert not r.decidable and r.items_needed == math.ceil(24 * (r.half_width / TARGET_HALF_WIDTH) ** 2)
    # 4a: 2 sentiment fine-tunes on the summary set at 0 shots; ROUGE-L near zero, in units of the ~0 level
    assert by["4a"].comparisons == 2 and by["4a"].items == 8
    # 2a: one step 100 -> 200 on the in-domain set, judged alone
    assert by["2a"].comparisons == 1
    assert by["5a"].comparisons == 0 and not by["5a"].decidable  # no FTICL run planned


def test_a_pilot_sets_the_variances_and_more_items_make_a_part_decidable(tmp_path, builtin_data):
    gold = ["positive" if i % 2 else "negative" for i in range(40)]
    f = ft("sentiment", "builtin_products")

    def preds(k):
        return [g if i < k else ("negative" if g == "positive" else "positive") for i, g in enumerate(gold)]

    recs = [record("sentiment", "builtin_products", "in", None, gold=gold, preds=preds(20)),
            record("sentiment", "builtin_products", "in", f, gold=gold, preds=preds(38)),
            record("sentiment", "builtin_restaurants", "out", None, gold=gold, preds=preds(24)),
            record("sentiment", "builtin_restaurants", "out", f, gold=gold, preds=preds(30))]
    write_report(stored(tmp_path / "pilot-out", recs), out_dir=tmp_path / "rep")
    pilot = tmp_path / "rep" / "synth" / "cells.jsonl.gz"
    u = pilot_variances(pilot)[("3b", "classification")]
    assert u > 0
    small = {r.key: r for r in power(load_suite(suite_file(tmp_path, builtin_data)), pilot)[0]}["3b"]
    assert small.source == "pilot"
    assert small.half_width == pytest.approx(1.959964 * math.sqrt(4 * u / 24) / 4, rel=1e-4)
    (tmp_path / "big").mkdir()
    big_suite = load_suite(suite_file(tmp_path / "big", builtin_data, limit=10_000))
    big = {r.key: r for r in power(big_suite, pilot)[0]}["3b"]
    assert big.items > small.items and big.half_width < small.half_width
    assert big.half_width == pytest.approx(small.half_width * math.sqrt(small.items / big.items), rel=1e-4)


def test_the_command_prints_the_table_and_the_parts_it_cannot_decide(tmp_path, builtin_data, capsys):
    assert main(["suite", "power", str(suite_file(tmp_path, builtin_data))]) == 0
    out = capsys.readouterr().out
    assert "| 3b " in out and "Cannot be decided at this size:" in out and "3b" in out.split("Cannot be decided")[1]


def test_a_recipe_whose_pilot_did_not_take_effect_gets_no_on_par_comparisons(tmp_path, builtin_data):
    """The pilot ran the suite's two recipes: ft-100 left the model unchanged in-domain, ft-200 took effect.
    The report will leave ft-100's "on par" comparisons (3b) and the 100 -> 200 step (2a) out as vacuous, so
    the planner does not count them either, and says so."""
    from genft.report.power import pilot_effects, placeholder_records
    from genft.suite.observe import read_plan

    suite = load_suite(suite_file(tmp_path, builtin_data))
    hashes = {r.finetune.name: r.finetune.replicate_hash for r in placeholder_records(read_plan(suite))
              if r.finetune is not None}
    gold = ["positive" if i % 2 else "negative" for i in range(40)]

    def preds(k):
        return [g if i < k else ("negative" if g == "positive" else "positive") for i, g in enumerate(gold)]

    def tuned(name):
        return ft("sentiment", "builtin_products", name=name).model_copy(update={"replicate_hash": hashes[name]})

    recs = [record("sentiment", "builtin_products", "in", None, gold=gold, preds=preds(20)),
            record("sentiment", "builtin_products", "in", tuned("ft-100"), gold=gold, preds=preds(20)),
            record("sentiment", "builtin_products", "in", tuned("ft-200"), gold=gold, preds=preds(38))]
    write_report(stored(tmp_path / "pilot-out", recs), out_dir=tmp_path / "rep")
    pilot = tmp_path / "rep" / "synth" / "cells.jsonl.gz"
    assert pilot_effects(pilot) == {hashes["ft-100"]: False, hashes["ft-200"]: True}
    by = {r.key: r for r in power(suite, pilot)[0]}
    assert by["3b"].comparisons == 2 and by["3b"].source.endswith("; 2 left out: vacuous in the pilot")
    assert by["2a"].comparisons == 0 and "1 left out: vacuous in the pilot" in by["2a"].source
    assert by["4a"].comparisons == 2  # "~0 ROUGE-L" is not an "on par" claim: both fine-tunes count
    without = {r.key: r for r in power(suite)[0]}  # no pilot: every fine-tune is assumed to take effect
    assert without["3b"].comparisons == 4 and without["2a"].comparisons == 1
