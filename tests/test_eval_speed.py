"""benchmarks/eval_speed.py and its modules: the report writer keeps other scripts' blocks; the roofline counts
a tied large vocabulary's lm_head at scored positions only; swa-262k's shape (built on the meta device: no
weights); the targets and the profiles of genft-hf's time; the comparison of outputs; the command line."""
from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import eval_backends  # noqa: E402
import eval_cells  # noqa: E402
import eval_report  # noqa: E402
import roofline  # noqa: E402


FT = "<!-- finetune_speed:start -->\n# Fine-tuning speed\n\n| a | b |\n<!-- finetune_speed:end -->\n"


def test_own_block_is_appended_then_replaced_in_place(tmp_path):
    out = tmp_path / "benchmarks.md"
    head = "# Evaluation speed\n\nhand-written notes\n\n"
    out.write_text(head + FT + "\ntrailing notes\n")
    eval_report.write_report(out, "## swa run 1\n", "eval_speed:swa-262k")
    first = out.read_text()
    assert first.startswith(head + FT + "\ntrailing notes\n")  # everything else byte for byte
    assert first.endswith("<!-- eval_speed:swa-262k:start -->\n## swa run 1\n<!-- eval_speed:swa-262k:end -->\n")
    eval_report.write_report(out, "## swa run 2\n", "eval_speed:swa-262k")
    second = out.read_text()
    assert second == first.replace("swa run 1", "swa run 2")  # replaced where it was, once
    # Another script writes its block after ours: ours stays where it is.
    out.write_text(second.replace("# Fine-tuning speed", "# Fine-tuning speed, new"))
    eval_report.write_report(out, "## swa run 3\n", "eval_speed:swa-262k")
    assert out.read_text() == second.replace("# Fine-tuning speed", "# Fine-tuning speed, new").replace(
        "swa run 2", "swa run 3")


def test_default_run_rewrites_the_rest_but_keeps_every_block(tmp_path):
    out = tmp_path / "benchmarks.md"
    swa = "<!-- eval_speed:swa-262k:start -->\n## swa\n<!-- eval_speed:swa-262k:end -->\n"
    out.write_text("# old report\n\n" + FT + "\nold notes\n\n" + swa)
    eval_report.write_report(out, "# new report\n", None)
    assert out.read_text() == "# new report\n\n" + FT + "\n" + swa


def test_unclosed_block_is_an_error_and_the_file_is_kept(tmp_path):
    out = tmp_path / "benchmarks.md"
    broken = "# report\n<!-- finetune_speed:start -->\nhalf written\n"
    out.write_text(broken)
    for owner in (None, "eval_speed:swa-262k"):
        with pytest.raises(ValueError, match="finetune_speed.*no end marker"):
            eval_report.write_report(out, "# new\n", owner)
    assert out.read_text() == broken


def _meta_model(config_cls, model_cls, **kw):
    import torch

    with torch.device("meta"):
        return model_cls(config_cls(**kw))


def test_swa_262k_shape_and_roofline_counts_the_lm_head_at_scored_positions():
    import torch
    from transformers import Gemma3ForCausalLM

    from genft.models import swa_262k_config

    config = swa_262k_config(types.SimpleNamespace(pad_token_id=2, bos_token_id=1, eos_token_id=2))
    assert config.layer_types.count("full_attention") == 3 and config.layer_types[5] == "full_attention"
    with torch.device("meta"):
        model = Gemma3ForCausalLM(config)
    sizes = roofline.model_sizes(model)
    # Gemma-3-270M: 262144 x 640 tied embedding / lm_head, 100.3M parameters in the 18 layers and norms.
    assert sizes["tied"] and sizes["head"] == 262144 * 640
    assert sizes["body"] == 268_098_176 - 262144 * 640 == 100_326_016
    assert sizes["bytes"] == 4 * 268_098_176  # a decoding step reads the tied matrix once, as the lm_head

    peaks = {"flops": 1e11, "bandwidth": 1e10}
    # 10 classification items, 1000 distinct prompt tokens: the lm_head at 10 positions, not 1000.
    pre, dec = eval_cells.bound_seconds({"prompt_tokens": 1000, "contexts": 10, "gen_tokens": 0}, sizes, peaks)
    assert pre == pytest.approx((2 * 100_326_016 * 1000 + 2 * 262144 * 640 * 10) / 1e11) and dec == 0
    # Generation: every decoding step runs the body and the lm_head (or reads every weight, if slower).
    _, dec = eval_cells.bound_seconds({"prompt_tokens": 0, "contexts": 0, "gen_tokens": 59}, sizes, peaks)
    assert dec == pytest.approx(59 * max(2 * 268_098_176 / 1e11, 4 * 268_098_176 / (8 * 1e10)))


def test_untied_input_embedding_is_free():
    from transformers import LlamaConfig, LlamaForCausalLM

    model = _meta_model(LlamaConfig, LlamaForCausalLM, vocab_size=1000, hidden_size=64, intermediate_size=128,
                        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)
    total = sum(p.numel() for p in model.parameters())
    sizes = roofline.model_sizes(model)
    assert not sizes["tied"] and sizes["head"] == 64_000
    assert sizes["body"] == total - 2 * 64_000
    assert sizes["bytes"] == 4 * (total - 64_000)  # the input embedding is a lookup, not read per step


def test_generation_work_counts_the_first_token_with_the_prefill():
    tok = lambda text, add_special_tokens=True: {"input_ids": list(text.encode())}  # noqa: E731 (a byte tokenizer)
    reqs = [types.SimpleNamespace(args=("demo. item one", {})), types.SimpleNamespace(args=("demo. item 2", {}))]
    work = eval_cells.cell_work(tok, reqs, ["abc", "x" * 100], max_gen_toks=60)
    # "abc" + a stop: 4 tokens, the first from the prefill; the other runs to 60 tokens.
    assert work == {"prompt_tokens": len("demo. item ") + 3 + 1, "contexts": 2, "gen_tokens": 3 + 59}


def test_targets():
    med = [("genft_nli_mnli_m", 0, 40, False, {"genft-hf": 10.0, "hf": 30.0, "study": 12.0}),
           ("genft_paraphrase_paws", 4, 40, False, {"genft-hf": 10.0, "hf": 29.0, "study": 20.0}),
           ("genft_question_socialiqa", 0, 16, True, {"genft-hf": 10.0, "hf": 11.0, "study": 9.0})]
    text = "\n".join(eval_report.targets_section(med))
    assert "| genft_paraphrase_paws | 4 | 40 | classification k-shot | 2.00x | 2.90x |" in text
    assert "study's method: **does not hold**: generation 0-shot (genft_question_socialiqa 0-shot: 0.90x)" in text
    assert "3x lm-eval's `hf`: **does not hold** (genft_paraphrase_paws 4-shot: 2.90x)" in text
    med[1][4]["hf"], med[2][4]["study"] = 30.0, 10.0
    text = "\n".join(eval_report.targets_section(med))
    assert "study's method: **holds**" in text and "3x lm-eval's `hf`: **holds**" in text
    assert eval_report.targets_section([(t, s, n, g, {"genft-hf": m["genft-hf"]}) for t, s, n, g, m in med]) == []
    shares = {("genft_nli_mnli_m", 0): 0.65, ("genft_paraphrase_paws", 4): 0.55}
    text = "\n".join(eval_report.targets_section(med, shares))
    assert ("60% of the matmul FLOP/s (genft-hf): **does not hold** (genft_nli_mnli_m 0-shot 65%, "
            "genft_paraphrase_paws 4-shot 55%)") in text
    shares[("genft_paraphrase_paws", 4)] = 0.6
    assert "FLOP/s (genft-hf): **holds**" in "\n".join(eval_report.targets_section(med, shares))
    assert "matmul FLOP/s (genft-hf)" not in "\n".join(eval_report.targets_section(med))


def test_generation_profile_reads_genft_hf_counters(tiny_model):
    """The profile lines from the counters genft-hf really writes: prompt tokens run, decoding steps and the
    tokens they produced (each row's first token comes with its prefill)."""
    import torch
    from lm_eval.api.instance import Instance

    from genft.backend import GenftHFLM

    torch.set_num_threads(1)
    lm = GenftHFLM(pretrained=tiny_model, device="cpu", batch_size=4)
    contexts = ["Question: what is red?\nAnswer:", "Question: what is blue and green?\nAnswer:", "Hi"]
    kw = {"until": [], "max_gen_toks": 7, "do_sample": False}
    lm.generate_until([Instance("generate_until", {}, (c, dict(kw)), i) for i, c in enumerate(contexts)],
                      disable_tqdm=True)
    st = dict(lm.stats)
    prompt = sum(len(lm._gen_encode(c, 100)) for c in contexts)
    assert st["prefill_tokens"] + st.get("prefix_tokens", 0) == prompt
    assert st["generated_tokens"] == 3 * 7  # no stop sequence, no EOS in 7 tokens of the tiny model
    peaks = {"flops": 1e11, "bandwidth": 2e10}
    sizes = roofline.model_sizes(lm.model)
    step = roofline.decode_matmuls(lm.model, threads=1, rows=4)
    lines = eval_report.generation_profile([("genft_x", 0, 3, st, 0.5, 0.25)], peaks, sizes, step)
    row = next(line for line in lines if line.startswith("| genft_x |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[2] == "3" and cells[3].split()[0] == f"{st['generate_prefill_s']:.2f}"
    assert f"({prompt} tokens," in cells[3]
    assert cells[7] == str(st["decode_steps"]) and cells[8] == f"{(3 * 7 - 3) / st['decode_steps']:.1f}"
    assert eval_report.generation_profile([], peaks, sizes, step) == []


def test_classification_profile_splits_a_real_profiled_call(tiny_model):
    """One loglikelihood call of genft-hf under the benchmark's own timer with its profiler on: the linear
    layers' GEMMs (one per linear layer per forward, plus the lm_head), the attention kernels and the rest."""
    import torch
    from lm_eval.api.instance import Instance

    from genft.backend import GenftHFLM

    torch.set_num_threads(1)
    lm = GenftHFLM(pretrained=tiny_model, device="cpu", batch_size=4)
    lm._fast_ok()  # its one-time check runs forwards of its own; the benchmark calls it at load too
    bucket = {"seconds": 0.0, "profile": True}
    lm = eval_backends.timed(lm, bucket)
    demos = "Review: good film\nSentiment: positive\n\nReview: dull plot\nSentiment: negative\n\n"
    reqs = [Instance("loglikelihood", {}, (demos + f"Review: {t}\nSentiment:", lab), i)
            for i, t in enumerate(["great", "boring and long", "fine", "awful acting", "a joy"])
            for lab in (" positive", " negative")]
    lm.loglikelihood(reqs, disable_tqdm=True)
    assert "profile" not in bucket and bucket["ops"]
    ops = eval_backends.op_seconds(bucket["ops"])
    assert ops["linear"] > 0 and ops["attention"] > 0 and ops["other"] > 0
    assert abs(ops["linear"] + ops["attention"] + ops["other"] - ops["total"]) < 1e-9
    assert ops["total"] <= bucket["seconds"]
    st = dict(lm.stats)
    layers = [m for m in lm.model.modules() if isinstance(m, torch.nn.Linear)]
    gemms = sum(ev.count for ev in bucket["ops"] if ev.key in eval_backends.LINEAR_OPS)
    # every linear layer but the lm_head once per forward, the lm_head once per scoring batch
    assert gemms == (len(layers) - 1) * st["forward_calls"] + (st["forward_calls"] - st["prefix_forwards"])
    # the next call is not profiled
    bucket["seconds"] = 0.0
    del bucket["ops"]
    lm.loglikelihood(reqs[:2], disable_tqdm=True)
    assert "ops" not in bucket and bucket["seconds"] > 0

    peaks = {"flops": 1e11, "bandwidth": 2e10}
    sizes = roofline.model_sizes(lm.model)
    lines = eval_report.classification_profile([("genft_x", 2, 5, 2.0, ops, st, 0.5)], peaks, sizes)
    row = next(line for line in lines if line.startswith("| genft_x |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    flops = 2 * sizes["body"] * st["forward_positions"] + 2 * sizes["head"] * st["head_rows"]
    assert cells[3] == "2.00" and cells[4] == f"{ops['linear']:.2f} ({100 * flops / ops['linear'] / 1e11:.0f}% of peak)"
    assert cells[9] == "25%" and cells[10] == f"{100 * 0.5 / ops['linear']:.0f}%"
    assert eval_report.classification_profile([], peaks, sizes) == []


def test_bf16_comparison_allows_bf16_rounding_and_counts_parted_texts():
    """--dtype bfloat16 compares log-likelihoods within max(0.05, 2**-6 relative) (hf's own are bf16-rounded) and
    counts the items whose texts part; float32 keeps the absolute tolerance."""
    hf = [[[(-40.0, False)], [(-2.0, True)]], [[(-0.01, True)], [(-9.0, False)]]]
    near = [[[(-40.5, False)], [(-2.02, True)]], [[(-0.02, True)], [(-9.0, False)]]]
    assert eval_cells._parted(hf, near, eval_cells.BF16_LL_ABS, eval_cells.BF16_LL_REL) == (0, pytest.approx(0.5))
    assert eval_cells._parted(hf, near, 1e-4)[0] == 2  # float32: every item off
    far = [[[(-41.0, False)], [(-2.0, True)]], [[(-0.01, False)], [(-9.0, False)]]]  # 2.5% off; a greedy flag
    assert eval_cells._parted(hf, far, eval_cells.BF16_LL_ABS, eval_cells.BF16_LL_REL)[0] == 2
    texts = [[["a cat\n\nmore"]], [["the dog"]], [["x"]]]
    other = [[["a cat"]], [["the dig"]], [["y"]]]  # the first is the same once cut at its blank line
    assert eval_cells._parted(texts, other, 1e-4, eval_cells.BF16_LL_REL)[0] == 2 and not eval_cells._same(texts, other, 1e-4)[0]


def test_the_table_shows_each_tasks_primary_metric():
    """The score column is the task's own primary metric (genft's rule), never the first metric found."""
    res = {"acc,none": 0.5, "acc_first,none": 0.75, "rougeL,none": 0.125}
    assert eval_cells._metric("genft_question_sciq_p2", res) == "rougeL 0.125"
    assert eval_cells._metric("genft_nli_mnli_m", {"acc,none": 0.5, "rougeL,none": 0.1}) == ""  # acc_first missing
    assert eval_cells._metric("genft_sentiment_amazon", res) == "acc_first 0.750"


def test_the_command_line_picks_the_cells_backends_and_block():
    """benchmarks/eval_speed.py, loaded as the script it is: its options give the cells and the backends, one
    way of choosing cells at a time; the default model's float32 run owns the file, any other run its block."""
    spec = importlib.util.spec_from_file_location("eval_speed", REPO / "benchmarks" / "eval_speed.py")
    es = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(es)
    args = es.parse_args(["--quick", "--backends", "genft-hf,hf"])
    assert args.cells == es.QUICK and args.backends == ["genft-hf", "hf"] and args.tol == 1e-4
    assert es.parse_args(["--cell", "genft_nli_mnli_m:5:40"]).cells == [("genft_nli_mnli_m", 5, 40)]
    assert es.parse_args([]).cells == es.CELLS and es.parse_args([]).backends == list(es.BACKENDS)
    for bad in (["--quick", "--preset", "swa"], ["--backends", "vllm"]):
        with pytest.raises(SystemExit):
            es.parse_args(bad)
    assert eval_report.own_block(eval_report.DEFAULT_MODEL, "float32") is None
    assert eval_report.own_block("swa-262k", "float32") == "eval_speed:swa-262k"
    assert eval_report.own_block(eval_report.DEFAULT_MODEL, "bfloat16") == "eval_speed:smollm2-135m:bfloat16"


@pytest.mark.skipif(bool(__import__("genft.precision", fromlist=["x"]).cpu_bf16_missing()),
                    reason="no native bf16 on this CPU")
def test_eval_dtypes_runs_both_dtypes_side_by_side(tiny_model, builtin_data, tmp_path):
    """benchmarks/eval_dtypes.py on the tiny model: every cell in both dtypes, one row each with both
    speeds as shares of the bf16 limit, the predictions compared, its own section written next to the others."""
    import torch

    import eval_dtypes
    import report_section

    torch.set_num_threads(1)
    out = tmp_path / "benchmarks.md"
    out.write_text(FT)
    cells = ["genft_summary_builtin_sports:0:3", "genft_question_builtin_social:1:3",
             "genft_sentiment_builtin_products:2:6", "genft_nli_builtin_work:0:6"]
    assert eval_dtypes.main(["--model", tiny_model, "--threads", "1", "--reps", "2", "--data-dir", str(builtin_data),
                             "--out", str(out)] + [x for c in cells for x in ("--cell", c)]) == 0
    text = out.read_text()
    section = report_section.extract(text, "eval_speed:dtypes")
    assert report_section.extract(text, "finetune_speed") == FT.strip()
    rows = [line for line in section.splitlines() if line.startswith("| genft_")]
    assert len(rows) == len(cells)
    for line in rows:
        cells = [c.strip() for c in line.strip("|").split("|")]
        fp32, bf16, ratio = float(cells[4]), float(cells[5]), float(cells[6][:-1])
        assert ratio == pytest.approx(bf16 / fp32, rel=0.02)
        assert cells[3] == ("generation" if "summary" in cells[0] or "question" in cells[0] else "classification")
        same, of = cells[11].split(" of ")
        assert 0 <= int(same) <= int(of) == int(cells[2])
    assert "Targets (bf16 over fp32" in section and "GFLOP/s bf16" in section
