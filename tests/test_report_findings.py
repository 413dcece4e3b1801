"""The findings' rules, on records written and read by the real store: comparisons with no information left
out and counted, collapses kept, fine-tunes that did not take effect, margins per metric, "no difference" never
supporting a directional claim, replicates, pooled effects, Holm with p-values fine enough for hundreds of
comparisons, training size step by step, the weight-deviation tolerance, best over shots."""
from __future__ import annotations

import numpy as np
import pytest
from report_records import ft, ok, record, roundtrip

from genft.report import (DOES_NOT_HOLD, HOLDS, INCONCLUSIVE, NOT_MEASURED, Margin, ReportSettings, SuiteData,
                          build, findings, holm)
from genft.report import diagnostics
from genft.report.judging import CONTRADICTS, DEGENERATE, NO_DIFFERENCE, SUPPORTS, UNDETERMINED, VACUOUS, fmt_p


def judged(tmp_path, recs, num, settings=None):
    s = SuiteData("s", roundtrip(tmp_path, recs), settings=settings)
    return next(f for f in findings(s) if f.num == num)


def classes(part):
    return [e.verdict_class for e in part.evidence]


def alternating(n, labels=("yes", "no")):
    return [labels[i % len(labels)] for i in range(n)]


def right_on(gold, k, labels=("yes", "no"), last=False):
    """Predictions right on the first (or last) k items, wrong on the others (the other label)."""
    right = set(range(len(gold) - k, len(gold))) if last else set(range(k))
    return [g if i in right else labels[1 - labels.index(g)] for i, g in enumerate(gold)]


def took_effect(f, task="paraphrase", dataset="builtin_people", n=200):
    """In-domain cells that show a fine-tune took effect: base 100 of 200 right, the fine-tune 180."""
    gold = alternating(n)
    return [record(task, dataset, "in", None, gold=gold, preds=right_on(gold, n // 2)),
            record(task, dataset, "in", f, gold=gold, preds=right_on(gold, n * 9 // 10))]


# ---------------------------------------------------------------- comparisons with no information


def test_one_label_arm_at_the_majority_floor_is_degenerate_above_it_is_not(tmp_path):
    gold = alternating(20)
    floor = record("paraphrase", "builtin_questions", "out", None, gold=gold, preds=["no"] * 20)
    above = record("paraphrase", "builtin_questions", "out", None, shots=2, gold=["no"] * 18 + ["yes"] * 2,
                   preds=["no"] * 19 + ["yes"])
    read = {r.key: r for r in roundtrip(tmp_path, [floor, above])}
    floor, above = read[floor.key], read[above.key]
    assert diagnostics.one_label([floor], 0.9) == "answers 'no' on 100% (score 0.500 ≤ majority 0.500)"
    assert diagnostics.one_label([above], 0.9) is None  # 95% 'no' but 0.95 > the 0.90 majority rate


def test_floor_and_identical_comparisons_are_left_out_a_collapse_is_kept(tmp_path):
    """Finding 3b (classification-tuned on par or better out-of-domain), a fine-tune that took effect: at
    0 shots it collapsed to 'no' (its base did not): kept, marked, and it counts; at 2 shots both arms give the
    same outputs; at 4 both sit at the floor; at 6 an informative comparison."""
    n = 200
    gold = alternating(n)
    f = ft("paraphrase", "builtin_people")
    floor_base = ["no"] * 190 + ["yes"] * 10  # 95% 'no', accuracy 0.5: at the floor
    recs = took_effect(f) + [
        record("paraphrase", "builtin_questions", "out", None, shots=0, gold=gold, preds=right_on(gold, 150)),
        record("paraphrase", "builtin_questions", "out", f, shots=0, gold=gold, preds=["no"] * n),  # collapse
        record("paraphrase", "builtin_questions", "out", None, shots=2, gold=gold, preds=right_on(gold, 100)),
        record("paraphrase", "builtin_questions", "out", f, shots=2, gold=gold, preds=right_on(gold, 100)),  # same
        record("paraphrase", "builtin_questions", "out", None, shots=4, gold=gold, preds=floor_base),
        record("paraphrase", "builtin_questions", "out", f, shots=4, gold=gold, preds=["no"] * n),  # both floor
        record("paraphrase", "builtin_questions", "out", None, shots=6, gold=gold, preds=right_on(gold, 100)),
        record("paraphrase", "builtin_questions", "out", f, shots=6, gold=gold, preds=right_on(gold, 190)),
    ]
    part = judged(tmp_path, recs, 3).parts[1]
    collapse, same, floor, good = part.evidence
    assert [e.verdict_class for e in (same, floor)] == [DEGENERATE, DEGENERATE]
    assert collapse.verdict_class == CONTRADICTS  # 0.50 vs 0.75: below the -0.05 margin, and it is kept
    assert collapse.comp.note.startswith("collapse: FT builtin_people@2000 answers 'no' on 100%")
    assert collapse.comp.mark.endswith("⊘") and good.verdict_class == SUPPORTS
    assert same.degenerate == "identical outputs on every item" and same.comp.text() == "+0.000 [+0.000, +0.000] ≡"
    assert floor.degenerate.startswith("floor: every arm answers one label")
    assert "over 2 of 4 comparisons" in part.counts
    assert "left out 2 with no information (floor 1, identical outputs on every item 1)" in part.counts
    # the pooled effect is the mean of (-0.25 and +0.45) in units of the 0.05 margin
    assert part.pooled.value == pytest.approx((-0.25 / 0.05 + 0.45 / 0.05) / 2)
    assert part.verdict.startswith(INCONCLUSIVE + " (mixed")  # one significantly below zero, one above


def test_every_comparison_without_information_is_inconclusive_not_a_verdict(tmp_path):
    gold = alternating(40)
    f = ft("paraphrase", "builtin_people")
    recs = [record("paraphrase", "builtin_questions", "out", m, gold=gold, preds=right_on(gold, 30)) for m in (None, f)]
    part = judged(tmp_path, recs, 3).parts[1]
    assert part.verdict == f"{INCONCLUSIVE} (no informative comparison)"


def test_a_fine_tune_that_did_not_take_effect_is_marked_and_its_parity_is_vacuous(tmp_path):
    """The fine-tune scores as its base in-domain (0.50 vs 0.51): its out-of-domain parity is automatic, so it
    cannot support "on par or better"; the Models table says so."""
    n = 200
    gold = alternating(n)
    f = ft("paraphrase", "builtin_people")
    recs = [record("paraphrase", "builtin_people", "in", None, gold=gold, preds=right_on(gold, 100)),
            record("paraphrase", "builtin_people", "in", f, gold=gold, preds=right_on(gold, 102)),
            record("paraphrase", "builtin_questions", "out", None, gold=gold, preds=right_on(gold, 120)),
            record("paraphrase", "builtin_questions", "out", f, gold=gold, preds=right_on(gold, 121))]
    read = roundtrip(tmp_path, recs)
    s = SuiteData("s", read)
    [g] = [g for g in s.ordered_groups if not g.is_base]
    assert s.effect(g).status == "did not take effect" and s.effect(g).comp.diff == pytest.approx(0.01)
    part = next(f for f in findings(s) if f.num == 3).parts[1]
    assert classes(part) == [VACUOUS] and part.evidence[0].vacuous == "FT builtin_people@2000: did not take effect"
    assert part.verdict == f"{INCONCLUSIVE} (no informative comparison)" and "1 vacuous" in part.counts
    md, _ = build("s", read, figures_=False)
    assert "⚠ did not take effect: paraphrase/builtin_people 0-shot, FT − base +0.010" in md
    assert "1 of 1 fine-tuned models did not take effect" in md
    # the same data with a fine-tune that took effect in-domain: parity now counts
    part = judged(tmp_path, took_effect(f) + recs[2:], 3).parts[1]
    assert classes(part) == [SUPPORTS] and part.verdict == HOLDS


def test_generations_equal_after_normalization_are_identical_and_copies_are_found(tmp_path):
    """Outputs that differ only in spacing and punctuation are the same output; an output that copies a
    demonstration's target up to a trailing " ." is a copy."""
    n = 20
    title = "Learning to rank with partial labels"
    f = ft("summary", "builtin_sports")
    base = record("summary", "builtin_weather", "out", None, shots=1, rouge=[0.1] * n, outputs=[title + " ."] * n,
                  demo_targets=[title])
    tuned = record("summary", "builtin_weather", "out", f, shots=1, rouge=[0.1] * n, outputs=[title + "."] * n,
                   demo_targets=[title])
    read = {r.key: r for r in roundtrip(tmp_path, [base, tuned])}
    assert diagnostics.demo_copy_share(read[base.key]) == 1.0 and diagnostics.repeated_share(read[base.key]) == 1.0
    assert diagnostics.normalize("  Hello ,  world!\n") == "Hello world"
    part = judged(tmp_path, [base, tuned], 3).parts[0]
    assert part.evidence[0].degenerate == "identical outputs on every item"


# ---------------------------------------------------------------- margins and "no difference"


def near_equal_generation(tmp_path, settings=None):
    """Finding 3a (generation-tuned below base, a directional claim): ROUGE-L 0.100 vs 0.101 on 100 items."""
    rng = np.random.default_rng(0)
    base = 0.1 + rng.normal(0, 0.01, 100)
    f = ft("summary", "builtin_sports")
    recs = [record("summary", "builtin_weather", "out", None, rouge=base),
            record("summary", "builtin_weather", "out", f, rouge=base - 0.001)]
    return judged(tmp_path, recs, 3, settings).parts[0]


def test_no_difference_counts_against_a_directional_claim_never_for_it(tmp_path):
    part = near_equal_generation(tmp_path)
    # the margin is relative for ROUGE-L: 20% of the base's ~0.10; the difference, -0.001, lies inside it:
    # negligible, although its interval excludes zero
    e = part.evidence[0]
    assert e.margin == pytest.approx(0.2 * e.comp.b) and e.comp.hi < 0
    assert classes(part) == [NO_DIFFERENCE]
    assert part.verdict == f"{DOES_NOT_HOLD} (no difference: pooled interval inside ±1 margin)"
    # with a margin of 0.0001 ROUGE-L the same difference is a real one: "lower" is supported
    tight = ReportSettings(margins={"rougeL": Margin(kind="absolute", value=0.0001)})
    assert classes(near_equal_generation(tmp_path, tight)) == [SUPPORTS]


def test_margins_are_per_metric_and_set_in_the_settings(tmp_path):
    rng = np.random.default_rng(1)
    f = ft("sentiment", "builtin_products")
    n = 400
    base = rng.integers(0, 2, n)
    same_mean = base.copy()
    same_mean[:40] = 1 - same_mean[:40]  # 40 answers flipped: some up, some down, the mean nearly unchanged
    gold = ["positive" if i % 2 else "negative" for i in range(n)]

    def preds(correct):
        return [g if c else ("negative" if g == "positive" else "positive") for g, c in zip(gold, correct)]

    recs = took_effect(f, "sentiment", "builtin_products") + [
        record("sentiment", "builtin_restaurants", "out", None, gold=gold, preds=preds(base)),
        record("sentiment", "builtin_restaurants", "out", f, gold=gold, preds=preds(same_mean))]
    # "on par or better": the interval's lower bound lies above -0.05 (5 accuracy points): supported
    assert classes(judged(tmp_path, recs, 3).parts[1]) == [SUPPORTS]
    # a margin of 0.001 for acc_first: the same data can no longer show parity
    tight = ReportSettings(margins={"acc_first": Margin(kind="absolute", value=0.001),
                                    "rougeL": Margin(kind="relative", value=0.2)})
    assert classes(judged(tmp_path, recs, 3, tight).parts[1]) == ["undetermined"]
    with pytest.raises(KeyError, match="no equivalence margin for metric 'acc_first'"):
        judged(tmp_path, recs, 3, ReportSettings(margins={"rougeL": Margin(kind="absolute", value=0.01)}))


def test_an_equivalent_comparison_does_not_support_greater(tmp_path):
    """Finding 1 (FT 0-shot above the base's best with demos): equal within the margin -> no difference,
    which counts against the claim; never as support."""
    n = 400
    gold = alternating(n)
    f = ft("paraphrase", "builtin_people")
    base = right_on(gold, 300)
    mixed = list(base)
    for i in range(0, 40, 2):  # swap 20 right answers for 20 wrong ones elsewhere: same accuracy
        mixed[i] = "no" if gold[i] == "yes" else "yes"
        j = 300 + i
        mixed[j] = gold[j]
    recs = [record("paraphrase", "builtin_people", "in", None, shots=2, gold=gold, preds=base),
            record("paraphrase", "builtin_people", "in", f, shots=0, gold=gold, preds=mixed)]
    fd = judged(tmp_path, recs, 1)
    assert classes(fd.parts[0]) == [NO_DIFFERENCE]
    assert fd.verdict == DOES_NOT_HOLD
    assert "0 support, 0 contradict, 1 no difference" in fd.parts[0].counts
    assert fd.parts[0].evidence[0].p == pytest.approx(max(  # the p shown is the test that decided the class
        fd.parts[0].evidence[0].comp.est.p_above(-0.05), fd.parts[0].evidence[0].comp.est.p_below(0.05)))


# ---------------------------------------------------------------- replicates and intervals


def test_two_seeds_resample_seeds_then_items_one_seed_says_so(tmp_path):
    n = 100
    gold = alternating(n)
    s1, s2 = ft("paraphrase", "builtin_people", seed=1), ft("paraphrase", "builtin_people", seed=2)
    one = ft("paraphrase", "builtin_people", seed=1, lr=1e-3)
    recs = [record("paraphrase", "builtin_questions", "out", None, gold=gold, preds=right_on(gold, 50)),
            record("paraphrase", "builtin_questions", "out", s1, gold=gold, preds=right_on(gold, 60)),
            record("paraphrase", "builtin_questions", "out", s2, gold=gold, preds=right_on(gold, 90)),
            record("paraphrase", "builtin_questions", "out", one, gold=gold, preds=right_on(gold, 75))]
    part = judged(tmp_path, recs, 3).parts[1]
    by = {e.group.seeds.__len__(): e for e in part.evidence}
    two, single = by[2], by[1]
    assert two.comp.est.variance_text == "2 seeds, then items" and single.comp.est.variance_text == "1 seed: items only"
    assert two.comp.diff == pytest.approx(0.25) and single.comp.diff == pytest.approx(0.25)
    # the seeds disagree (0.60 vs 0.90): the interval carries that spread, the one-seed interval cannot
    assert (two.comp.hi - two.comp.lo) > 1.5 * (single.comp.hi - single.comp.lo)
    assert "(2 seeds)" in two.comp.text() and "seeds" not in single.comp.text()


def test_holm_adjusts_step_down():
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5]) == [0.5]
    assert holm([0.001, 0.2, 0.01, 0.04]) == pytest.approx([0.004, 0.2, 0.03, 0.08])


def test_a_part_with_many_comparisons_is_holm_adjusted(tmp_path):
    """Four out-of-domain shot counts, each barely above the base: significant alone, not after Holm."""
    n = 60
    gold = alternating(n)
    f = ft("paraphrase", "builtin_people")
    recs = took_effect(f)
    for k in (0, 2, 4, 6):
        recs.append(record("paraphrase", "builtin_questions", "out", None, shots=k, gold=gold,
                           preds=right_on(gold, 30)))
        recs.append(record("paraphrase", "builtin_questions", "out", f, shots=k, gold=gold,
                           preds=right_on(gold, 30)[:30] + [g for g in gold[30:38]] + right_on(gold, 0)[38:]))
    part = judged(tmp_path, recs, 4 - 1).parts[1]
    raw = [e.comp.est.p_above(-e.margin) for e in part.evidence]
    assert "Holm over 4" in part.counts and set(classes(part)) <= {SUPPORTS, UNDETERMINED}
    assert [e.p for e in part.evidence] == pytest.approx(holm(raw))


def test_p_values_survive_holm_over_252_comparisons(tmp_path):
    """Finding 4a over 252 comparisons (21 classification-tuned models x 2 generation sets x 6 shot counts),
    every one clearly near 0 ROUGE-L: bootstrap p-values bounded by 1/2001 could never survive Holm over 252
    (252/2001 > 0.05); the analytic ones do, and the part holds."""
    rng = np.random.default_rng(0)
    recs = []
    for i in range(21):
        f = ft("sentiment", "builtin_products", lr=1e-4 * (i + 1))
        for ds in ("builtin_sports", "builtin_weather"):
            for k in range(6):
                recs.append(record("summary", ds, "in", f, shots=k, rouge=rng.uniform(0, 0.02, 60),
                                   demo_targets=[]))
    part = judged(tmp_path, recs, 4).parts[0]
    assert len(part.evidence) == 252 and classes(part) == [SUPPORTS] * 252
    assert max(e.p for e in part.evidence) < 0.05 and part.verdict == HOLDS
    assert "over 252 of 252 comparisons" in part.counts and part.pooled.hi < 0
    assert fmt_p(1e-9) == "1.0e-09" and fmt_p(0.0123) == "0.012" and fmt_p(float("nan")) == "—"


# ---------------------------------------------------------------- the study's own comparisons


def size_series(tmp_path, correct, sizes=(2000, 4000, 6000), n=250):
    """A training-size series on 250 in-domain PAWS-like items, each size right on the first k items."""
    gold = alternating(n)
    recs = [record("paraphrase", "builtin_people", "in", None, gold=gold, preds=right_on(gold, n // 2))]
    for size, k in zip(sizes, correct):
        recs.append(record("paraphrase", "builtin_people", "in", ft("paraphrase", "builtin_people", size), gold=gold,
                           preds=right_on(gold, k)))
    return judged(tmp_path, recs, 2)


def test_training_size_is_judged_step_by_step_the_studys_paws_numbers(tmp_path):
    """The study's PAWS: 81.6% at 2K, 93.2% at 4K, flat at 6K (92.8%): a gain, then none: "more is not reliably
    better" holds, as the study concluded (a slope over the sizes would call this a contradiction)."""
    paws = size_series(tmp_path, (204, 233, 232))
    steps = paws.parts[0].evidence
    assert [e.comp.diff for e in steps] == [pytest.approx(0.116), pytest.approx(-0.004)]
    assert classes(paws.parts[0]) == [CONTRADICTS, SUPPORTS] and paws.verdict == HOLDS
    assert steps[0].what.startswith("step 2000 → 4000") and "series: 1 support, 0 contradict" in paws.parts[0].counts
    # every step gains: more data is reliably better here, the claim does not hold
    up = size_series(tmp_path, (170, 200, 230))
    assert classes(up.parts[0]) == [CONTRADICTS, CONTRADICTS] and up.verdict == DOES_NOT_HOLD
    # fine-tunes that did not take effect (all near the base's 50%): "no gain" is automatic, not support
    flat = size_series(tmp_path, (125, 126, 125))
    assert classes(flat.parts[0]) == [VACUOUS, VACUOUS] and flat.verdict.startswith(INCONCLUSIVE)


def test_weight_deviation_has_a_tolerance(tmp_path):
    def verdict_for(icl_wd):
        plain = ft("summary", "builtin_sports", wd=1.0e-4)
        icl = ft("summary", "builtin_sports", icl=1, wd=icl_wd)
        recs = [record("summary", "builtin_sports", "in", m, rouge=[0.3, 0.4]) for m in (None, plain, icl)]
        fd = judged(tmp_path, recs, 6)
        return classes(fd.parts[0]), fd.verdict, fd.parts[0].evidence[0].cells[-1]

    assert verdict_for(0.8e-4) == ([SUPPORTS], HOLDS, "0.800")
    assert verdict_for(1.018e-4)[0] == [NO_DIFFERENCE]  # equal within ±5%: not a contradiction
    assert verdict_for(2e-4)[:2] == ([CONTRADICTS], DOES_NOT_HOLD)


def test_fticl_is_judged_best_over_shots(tmp_path):
    """FTICL 0.30 / 0.60 at 0 / 2 shots, plain FT 0.50 / 0.20: best 0.60 vs best 0.50."""
    n = 200
    gold = alternating(n)
    plain, icl = ft("paraphrase", "builtin_people"), ft("paraphrase", "builtin_people", icl=2)
    recs = [record("paraphrase", "builtin_people", "in", None, gold=gold, preds=right_on(gold, 100))]
    for m, scores in ((icl, (60, 120)), (plain, (100, 40))):
        for k, right in zip((0, 2), scores):
            recs.append(record("paraphrase", "builtin_people", "in", m, shots=k, gold=gold,
                               preds=right_on(gold, right)))
    part = judged(tmp_path, recs, 5).parts[2]
    [e] = part.evidence
    assert (e.comp.a, e.comp.b) == (pytest.approx(0.6), pytest.approx(0.5))
    assert e.comp.diff == pytest.approx(0.1)
    assert "best FTICL − best FT" in e.what and "[0, 2]-shot" in e.what
    assert classes(part) == [CONTRADICTS]  # FTICL is better, not worse, in-domain


def test_cross_task_near_zero_and_prompt2(tmp_path):
    f = ft("sentiment", "builtin_products")
    n = 100
    recs = [record("summary", "builtin_sports", "in", None, prompt=p, rouge=[0.3] * n) for p in (1, 2)]
    recs += [record("summary", "builtin_sports", "in", f, prompt=1, rouge=[0.0] * n, outputs=["positive"] * n),
             record("summary", "builtin_sports", "in", f, prompt=2, rouge=[0.15] * n)]
    fd = judged(tmp_path, recs, 4)
    assert [p.verdict for p in fd.parts] == [HOLDS, HOLDS, NOT_MEASURED]
    # Prompt-2 vs a Prompt-1 score of 0: the relative ROUGE-L margin (20% of 0) falls back to its 0.01 floor
    assert fd.parts[1].evidence[0].margin == pytest.approx(0.01)
    assert fd.verdict.startswith(INCONCLUSIVE) and "cells missing: part c" in fd.verdict


def test_missing_cells_say_not_measured(tmp_path):
    s = SuiteData("s", roundtrip(tmp_path, [record("sentiment", "builtin_products", "in", None, correct=ok(10, 5))]))
    assert [f.verdict for f in findings(s)] == [NOT_MEASURED] * 6


# ---------------------------------------------------------------- comparing two judgements


def test_compare_reads_a_written_report_and_rejudges_evidence_under_other_settings(tmp_path, capsys):
    """A report's markdown and its evidence file give the same verdicts; the same evidence under a tight
    margin changes the parity part (3b), and --compare names it with the evidence behind both verdicts."""
    from genft.cli import main
    from genft.report import write_report
    from report_records import stored

    n = 200
    gold = alternating(n)
    f = ft("paraphrase", "builtin_people")
    base = right_on(gold, 120)
    flip = set(range(5)) | set(range(120, 127))  # 5 answers right -> wrong, 7 wrong -> right: +0.01
    tuned = [("no" if p == "yes" else "yes") if i in flip else p for i, p in enumerate(base)]
    recs = took_effect(f) + [record("paraphrase", "builtin_questions", "out", None, gold=gold, preds=base),
                             record("paraphrase", "builtin_questions", "out", f, gold=gold, preds=tuned)]
    md = write_report(stored(tmp_path / "out", recs), out_dir=tmp_path / "rep")
    evidence = tmp_path / "rep" / "synth" / "cells.jsonl.gz"
    assert main(["report", "--compare", str(md), str(evidence)]) == 0
    assert capsys.readouterr().out.startswith("0 of 11 finding parts changed verdict.")
    tight = tmp_path / "tight.yaml"
    tight.write_text("name: tight\nmodels: {m: tiny}\nreport:\n  margins:\n    acc_first: {kind: absolute, value: 0.001}\n"
                     "    acc: {kind: absolute, value: 0.001}\n    rougeL: {kind: relative, value: 0.2}\n")
    assert main(["report", "--compare", str(md), str(evidence), "--settings", str(tight)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("1 of 11 finding parts changed verdict.")
    [line] = [ln for ln in out.splitlines() if ln.startswith("| 3b")]
    assert "| holds " in line and "inconclusive (pooled interval too wide)" in line and "changed" in line
