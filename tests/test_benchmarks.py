"""benchmarks/: the fine-tuning speed benchmark on the tiny model (both arms train the same tokens, the
first-step losses agree, the report section is written between its markers and the rest of the file stays),
the marked sections that benchmarks/eval_speed.py carries over when it rewrites the report, and the time
model fit."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import report_section  # noqa: E402
from genft.precision import cpu_bf16_missing  # noqa: E402

START, END = report_section.markers("finetune_speed")

OTHER = """# Evaluation speed: `genft-hf`, `hf` and the study's method

| task | items/s |
|---|---|
| genft_nli_mnli_m | 1.37 |

Hand-written notes under the table.
"""


def test_section_upsert_keeps_the_rest():
    first = report_section.upsert(OTHER, "finetune_speed", "## Fine-tuning\n\nold figures")
    assert first.startswith(OTHER) and first.count(START) == 1 and first.count(END) == 1
    second = report_section.upsert(first, "finetune_speed", "## Fine-tuning\n\nnew figures")
    assert second.startswith(OTHER) and "old figures" not in second and "new figures" in second
    assert second.count(START) == 1
    # a section in the middle of the file is replaced in place: what follows it stays, after it
    middle = report_section.upsert(OTHER, "finetune_speed", "A") + "\n## Later\n\ntext\n"
    replaced = report_section.upsert(middle, "finetune_speed", "B")
    assert replaced.index("B") < replaced.index("## Later") and "\nA\n" not in replaced
    assert report_section.upsert("", "finetune_speed", "x") == f"{START}\nx\n{END}\n"
    with pytest.raises(ValueError, match="no end marker"):
        report_section.upsert(OTHER + START + "\nno end\n", "finetune_speed", "x")


def test_eval_speed_rewrite_carries_the_section_over():
    old = report_section.upsert(OTHER, "finetune_speed", "## Fine-tuning\n\nfigures")
    rewritten = report_section.carry_over(old, "# Evaluation speed\n\nnew table\n")
    assert rewritten.startswith("# Evaluation speed\n\nnew table\n")
    assert report_section.extract(rewritten, "finetune_speed") == report_section.extract(old, "finetune_speed")
    assert "Hand-written notes" not in rewritten  # the rest is eval_speed's own, rewritten
    assert report_section.carry_over("", "t\n") == "t\n"


pytest.importorskip("torch")
pytest.importorskip("trl")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    from genft import data as gdata

    pos = ["Great product, works well and the battery lasts all week.", "I love it, the quality is great.",
           "Fast delivery, sturdy, and it works exactly as described."]
    neg = ["Broke after two days and support never answered.", "Terrible quality, do not buy.",
           "It stopped working after a week, very poor value for the money."]
    items = [{"text": f"{(pos if i % 2 == 0 else neg)[(i // 2) % 3]} (item {i})",
              "label": "positive" if i % 2 == 0 else "negative"} for i in range(16)]
    root = tmp_path_factory.mktemp("ftbench-data")
    gdata.write_dataset("sentiment", "amazon", {"train_16": items, "demos": items[:4], "test": items[:4]}, root)
    return root


def _tiny_run(tiny_model, data_root, tmp_path, section: str, text: str, arms: str, *extra: str):
    """finetune_speed.py on the tiny model (8 examples, 2 steps of 4, one run per arm) into a report that holds
    `text` in `section`: (the report's path, the exit status, the JSON figures)."""
    import finetune_speed

    out = tmp_path / "benchmarks.md"
    out.write_text(report_section.upsert(OTHER, section, text))
    raw = tmp_path / "ft.json"
    rc = finetune_speed.main([
        "--model", tiny_model, "--threads", "1", "--task", "sentiment", "--dataset", "amazon",
        "--data-dir", str(data_root), "--train-limit", "8", "--steps", "2", "--batch-size", "4", "--max-length", "128",
        "--reps", "1", "--arms", arms, "--profile", "never", "--out", str(out), "--json", str(raw), *extra,
    ])
    return out, rc, json.loads(raw.read_text())


def test_finetune_speed_tiny(tiny_model, data_root, tmp_path):
    import finetune_bench

    out, rc, res = _tiny_run(tiny_model, data_root, tmp_path, "finetune_speed", "stale figures",
                             "genft,genft-padded,trainer")
    assert rc == 0, res["failures"]
    g, t = res["summary"]["genft"], res["summary"]["trainer"]
    # the same batches: the same non-padding input tokens and target tokens, in the same number of steps
    assert g["input_tokens"] == t["input_tokens"] == res["truncation"]["tokens"]  # 2 steps x 4 = all 8 examples
    assert g["target_tokens"] == t["target_tokens"] > 0
    assert g["batches"] == t["batches"] == 2
    assert g["manifest_trained_tokens"] == g["input_tokens"]
    # sft.py's default flattens its batches (no padding run); --padding_free false pads like the plain loop
    p = res["summary"]["genft-padded"]
    assert g["batching"]["padding_free"] is True and p["batching"]["padding_free"] is False
    assert g["positions"] == g["input_tokens"] < p["positions"] == t["positions"]
    assert p["input_tokens"] == g["input_tokens"] and abs(p["first_loss"] - g["first_loss"]) < 1e-4
    # both train the same thing: the first step (the base model, LoRA's B = 0) gives the same loss
    assert abs(g["first_loss"] - t["first_loss"]) < 1e-4
    assert g["sizes"]["trainable"] == t["sizes"]["trainable"] > 0
    assert g["tokens_per_s"] > 0 and t["tokens_per_s"] > 0 and 0 < g["matmul_share"] < 1
    assert g["lm_head"] == p["lm_head"] == "target positions"
    # which runs get a profile: a genft arm slower than the plain loop's arm with its batching, and that arm
    speeds = {"genft": 135, "genft-padded": 91, "trainer": 74, "trainer-padfree": 157}  # reports/benchmarks.md
    summary = {arm: {"tokens_per_s": v} for arm, v in speeds.items()}
    assert finetune_bench.profile_pairs(summary, "auto") == [("genft", "trainer-padfree")]
    assert finetune_bench.profile_pairs({a: summary[a] for a in res["summary"]}, "always") == [
        ("genft", "trainer"), ("genft-padded", "trainer")]  # the arms this run had
    assert finetune_bench.profile_pairs(summary, "never") == []
    assert 0 < t["rss_train_mib"] < 8192
    text = out.read_text()
    assert text.startswith(OTHER)  # the evaluation benchmark's part is untouched
    assert text.count(START) == 1 and text.count(END) == 1 and "stale figures" not in text
    section = report_section.extract(text, "finetune_speed")
    assert "| genft " in section and "| trainer " in section and "Target" in section
    assert "--arms genft,genft-padded,trainer" in section and "Padding-free in genft" in section  # the command that generated it


def test_time_model_fits_the_records_it_is_given(tmp_path, capsys):
    """time_model reads the store's records; --since keeps the later ones, and the fit recovers the line that
    made their times (generation: n x (GEN_ITEM_S + GEN_SHOT_S x shots))."""
    import time_model
    from report_records import record, stored

    def cell(dataset, shots, n, per_item, time):
        r = record("summary", dataset, "in", shots=shots, rouge=[0.1] * n)
        return r.model_copy(update={"wall_s": n * per_item,
                                    "provenance": r.provenance.model_copy(update={"time": time})})

    later = [cell("xsum", s, n, 2.5 + 0.75 * s, f"2026-12-01T08:0{s}:00+00:00") for s, n in ((0, 20), (1, 10), (2, 20))]
    earlier = [cell("cnn_dailymail", 0, 20, 9.0, "2026-11-30T08:00:00+00:00")]  # a loaded machine: left out
    out = stored(tmp_path / "run", later + earlier)
    md = tmp_path / "benchmarks.md"
    assert time_model.main([str(out), "--since", "2026-12-01T07:00", "--train-tokens-s", "80", "--out", str(md)]) == 0
    section = report_section.extract(md.read_text(), "time_model")
    consts = {line.split("|")[1].strip(): float(line.split("|")[3]) for line in section.splitlines()
              if line.startswith("| ") and line.split("|")[1].strip().isupper()}
    assert consts["GEN_ITEM_S"] == pytest.approx(2.5, rel=1e-6) and consts["GEN_SHOT_S"] == pytest.approx(0.75, rel=1e-6)
    assert consts["TRAIN_TOKENS_S"] == 80 and "3 finished cells" in section and "--since 2026-12-01T07:00" in section
    with pytest.raises(SystemExit, match="--since: 'yesterday' is not an ISO time"):
        time_model.main([str(out), "--since", "yesterday"])


@pytest.mark.skipif(bool(cpu_bf16_missing()), reason=f"no native bf16 on this CPU: {cpu_bf16_missing()}")
def test_finetune_speed_bf16_measures_against_the_bf16_peak(tiny_model, data_root, tmp_path):
    """--dtype bfloat16: every arm trains in bf16 mixed precision, the shares are of the bf16 matmul peak
    (measured the same way as the fp32 one), and the run writes its own block next to the fp32 one."""
    import roofline

    out, rc, res = _tiny_run(tiny_model, data_root, tmp_path, "finetune_speed", "the fp32 figures", "genft,trainer",
                             "--dtype", "bfloat16")
    assert rc == 0, res["failures"]
    assert res["peaks"]["dtype"] == "bfloat16"
    g, t = res["summary"]["genft"], res["summary"]["trainer"]
    assert g["bf16"] is True and t["bf16"] is True
    assert g["input_tokens"] == t["input_tokens"] and g["target_tokens"] == t["target_tokens"]
    assert abs(g["first_loss"] - t["first_loss"]) < 2e-2
    assert 0 < g["matmul_share"] < 1
    text = out.read_text()
    assert "the fp32 figures" in text and "<!-- finetune_speed:bfloat16:start -->" in text
    assert "GFLOP/s bf16 matmul" in report_section.extract(text, "finetune_speed:bfloat16")
    # the bf16 peak is measured as the fp32 one is: the same 2048^3 matmul, in bf16
    peak = roofline.machine_peaks(1, rounds=1, dtype="bfloat16")
    assert peak["dtype"] == "bfloat16" and peak["flops"] > 0


@pytest.mark.skipif(bool(cpu_bf16_missing()), reason=f"no native bf16 on this CPU: {cpu_bf16_missing()}")
def test_finetune_speed_puts_the_precisions_side_by_side(tiny_model, data_root, tmp_path):
    """The precision arms in one run: each trains in its own numerics (the manifests say which), all against the
    bf16 peak, their first-step losses within bf16 rounding of float32's, the ratio and the loss per step shown
    in their own section."""

    out, rc, res = _tiny_run(tiny_model, data_root, tmp_path, "finetune_speed:bfloat16", "the bf16 figures",
                             "genft-fp32,genft-bf16,genft-bf16-base")
    assert rc == 0, res["failures"]
    assert res["peaks"]["dtype"] == "bfloat16"
    s = res["summary"]
    assert s["genft-fp32"]["precision"] == "float32 throughout" and s["genft-fp32"]["bf16"] is False
    assert s["genft-bf16"]["precision"].startswith("bf16 mixed precision (autocast; float32 weights, gradients")
    assert "frozen base weights bfloat16" in s["genft-bf16-base"]["precision"]
    assert len({a["input_tokens"] for a in s.values()}) == 1
    for arm in ("genft-bf16", "genft-bf16-base"):
        assert 0 < s[arm]["first_loss_diff"] < 2e-2 * max(1.0, s["genft-fp32"]["first_loss"])
        assert [st for st, _ in s[arm]["loss_curve"]] == [1, 2]
    section = report_section.extract(out.read_text(), "finetune_speed:dtypes")
    assert "the bf16 figures" in out.read_text()
    assert "**genft-bf16 over genft-fp32**" in section and "**genft-bf16-base over genft-fp32**" in section
    assert "GFLOP/s bf16 matmul" in section and "Loss at each optimizer step" in section


@pytest.mark.skipif(bool(cpu_bf16_missing()), reason="needs a CPU with native bf16")
def test_bf16_train_spread_measures_every_attention_against_float32(tiny_model, data_root, tmp_path):
    """benchmarks/bf16_train_spread.py on the tiny model: every evaluator's batch losses against float32's, the
    per-example attention equal to sdpa in float32, its own section written next to the others; and the
    verdict turns 'no' where genft's attention is the farthest from float32."""
    import bf16_train_spread as spread

    out = tmp_path / "benchmarks.md"
    before = report_section.upsert(OTHER, "finetune_speed", "figures")
    out.write_text(before)
    rc = spread.main(["--model", tiny_model, "--threads", "1", "--data-dir", str(data_root), "--train-limit", "8",
                      "--batch-size", "4", "--max-length", "128", "--out", str(out)])
    assert rc == 0
    text = out.read_text()
    section = report_section.extract(text, "bf16_train_spread")
    assert report_section.extract(text, "finetune_speed") == report_section.extract(before, "finetune_speed")
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in section.splitlines()
            if line.startswith("| float32") or line.startswith("| bf16")]
    assert [tuple(r[:3]) for r in rows] == list(spread.EVALUATORS)
    assert all(len(r[5].split()) == 2 for r in rows)  # 8 examples in batches of 4
    assert float(rows[0][3]) <= spread.FP32_AGREE and "**yes**" in section
    ref = [7.0, 6.0]
    res = {spread.REFERENCE: ref, **{ev: list(ref) for ev in spread.EVALUATORS}}
    res[("bf16 base", "genft_examples", "flattened")] = [7.1, 6.0]
    res[("bf16 base", "sdpa", "padded")] = [7.05, 6.0]
    dist, ok = spread.judge(res)
    assert not ok and dist[("bf16 base", "genft_examples", "flattened")] == pytest.approx((0.1, 0.05))
