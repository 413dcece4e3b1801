"""genft-hf (genft.backend) inside lm-eval: registered beside `hf`, built by simple_evaluate and by the
genft-lm-eval command with hf's scores, and fast=False as plain HFLM.  Slow tests (-m slow) compare the two
backends with SmolLM2-135M through genft.harness on the study's real test sets and on the suites' generation
cells (one of them, -m ci, on the study-format release the tests make).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from backend_setup import DEMOS_A, ITEMS_A, TOL, _gen_requests, _ll_requests, save_random_lora
from conftest import REPO
from genft.backend import GenftHFLM


# --------------------------------------------------------------------------- registration


def test_registered_and_hf_still_resolves():
    from lm_eval.api.registry import get_model

    assert get_model("genft-hf") is GenftHFLM
    from lm_eval.models.huggingface import HFLM

    assert get_model("hf") is HFLM


EVAL_TASKS = ["genft_sentiment_builtin_products", "genft_summary_builtin_sports"]


@pytest.fixture(scope="module")
def hf_reference(lively, builtin_data):
    """lm-eval's own `hf` on two genft tasks (a classification and a generation), 1 shot, 3 items."""
    import lm_eval

    from genft import harness

    return lm_eval.simple_evaluate(model="hf", model_args=f"pretrained={lively},batch_size=2", tasks=EVAL_TASKS,
                                   num_fewshot=1, limit=3, device="cpu", log_samples=True,
                                   task_manager=harness.task_manager(lively, builtin_data))


def _same_results(got, want):
    for task in EVAL_TASKS:
        a, b = got["samples"][task], want["samples"][task]
        assert [x["doc_id"] for x in a] == [x["doc_id"] for x in b] == [0, 1, 2], task
        for x, y in zip(a, b):
            for ra, rb in zip(x["resps"], y["resps"]):
                if isinstance(rb[0], str):
                    assert ra == rb, task  # the same generated text
                else:
                    # (is_greedy: a bool in memory, "True" / "False" in a samples file)
                    assert abs(float(ra[0][0]) - float(rb[0][0])) < TOL and str(ra[0][1]) == str(rb[0][1]), task
        metrics = {k: v for k, v in want["results"][task].items() if isinstance(v, float) and "stderr" not in k}
        assert metrics and {k: got["results"][task][k] for k in metrics} == pytest.approx(metrics, abs=1e-9), task


def test_simple_evaluate_by_name(lively, builtin_data, hf_reference, monkeypatch):
    """The Python API path: `import genft.backend`, then simple_evaluate(model="genft-hf", model_args=...) builds
    genft's class, runs its own fast path, and scores as hf does."""
    import lm_eval

    from genft import harness

    built = []
    real_init = GenftHFLM.__init__

    def init(self, *a, **kw):
        real_init(self, *a, **kw)
        built.append(self)

    monkeypatch.setattr(GenftHFLM, "__init__", init)
    got = lm_eval.simple_evaluate(model="genft-hf", model_args=f"pretrained={lively},batch_size=2,prefix_min_tokens=4",
                                  tasks=EVAL_TASKS, num_fewshot=1, limit=3, device="cpu", log_samples=True,
                                  task_manager=harness.task_manager(lively, builtin_data))
    [lm] = built
    assert lm.prefix_min_tokens == 4 and lm.batch_size == 2 and not lm._fast_reason
    assert lm.stats["forward_calls"] > 0 and lm.stats["prefix_forwards"] > 0  # genft's own path scored it
    _same_results(got, hf_reference)


def test_genft_lm_eval_command(lively, builtin_data, hf_reference, tmp_path):
    """`genft-lm-eval --model genft-hf ...`: lm-eval's own command line with genft-hf registered."""
    command = shutil.which("genft-lm-eval", path=str(Path(sys.executable).parent))
    assert command, "the genft-lm-eval command is not installed beside this python (pip install -e .)"
    env = {**os.environ, "GENFT_DATA_DIR": str(builtin_data), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([command, "--model", "genft-hf", "--model_args", f"pretrained={lively}", "--batch_size", "2",
                          "--device", "cpu", "--include_path", "harness_tasks", "--tasks", ",".join(EVAL_TASKS),
                          "--num_fewshot", "1", "--limit", "3", "--output_path", str(tmp_path / "out"),
                          "--log_samples"], capture_output=True, text=True, timeout=600, cwd=REPO, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    [result_file] = list((tmp_path / "out").rglob("results_*.json"))
    got = json.loads(result_file.read_text())
    assert got["config"]["model"] == "genft-hf"
    got["samples"] = {t: [json.loads(line) for line in next(result_file.parent.glob(f"samples_{t}_[0-9]*.jsonl"))
                          .read_text().splitlines()] for t in EVAL_TASKS}
    for t in EVAL_TASKS:
        got["samples"][t].sort(key=lambda x: x["doc_id"])
    _same_results(got, hf_reference)


def test_fast_off_is_plain_hflm(lively, models):
    """fast=False hands every request to HFLM itself: hf's numbers and texts exactly, genft's path never runs."""
    hf, _ = models
    off = GenftHFLM(pretrained=lively, device="cpu", batch_size=4, fast=False)
    reqs = _ll_requests()
    assert off.loglikelihood(reqs, disable_tqdm=True) == hf.loglikelihood(reqs, disable_tqdm=True)
    gen = _gen_requests([DEMOS_A + f"### Input:\n{t}\n### Sentiment:" for t in ITEMS_A], until=["\n\n"])
    assert off.generate_until(gen, disable_tqdm=True) == hf.generate_until(gen, disable_tqdm=True)
    assert off.stats["forward_calls"] == off.stats["prefix_forwards"] == off.stats["prefill_calls"] == 0


# --------------------------------------------------------------------------- slow: SmolLM2 on the study's data


def _harness_ready() -> bool:
    try:
        from genft import harness

        harness.tasks_dir()
        return hasattr(harness, "task_manager") and hasattr(harness, "evaluate")
    except Exception:  # noqa: BLE001
        return False


@pytest.fixture(scope="module")
def smollm2() -> str:
    from genft.models import ModelError, prepare

    try:
        return str(prepare("smollm2-135m"))
    except ModelError as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def smollm2_lora(smollm2, tmp_path_factory) -> str:
    return save_random_lora(smollm2, tmp_path_factory.mktemp("smol-lora"), ["q_proj", "v_proj"], 0.02, 3)


def _samples(results, task):
    return results["samples"][task]


def _compare_cells(smollm2, study_data, peft=None, cells=(), **fast_args):
    from genft import harness
    from genft.metrics import clean_generation

    tm = harness.task_manager(smollm2, study_data)
    args = {"peft": peft} if peft else {}
    hf = harness.load_model(smollm2, backend="hf", batch_size=4, **args)
    fast = harness.load_model(smollm2, backend="genft-hf", batch_size=4, **args, **fast_args)
    for task, shots, limit in cells:
        a = harness.evaluate(hf, [task], num_fewshot=shots, limit=limit, tm=tm, log_samples=True)
        b = harness.evaluate(fast, [task], num_fewshot=shots, limit=limit, tm=tm, log_samples=True)
        sa, sb = _samples(a, task), _samples(b, task)
        assert len(sa) == len(sb) == limit
        for x, y in zip(sa, sb):
            assert x["doc_id"] == y["doc_id"]
            for ra, rb in zip(x["resps"], y["resps"]):
                if isinstance(ra[0], str):  # the scored text (genft-hf stops at the study's cut)
                    assert clean_generation(ra[0]) == clean_generation(rb[0]), (task, shots, x["doc_id"])
                    assert ra == rb or (fast.cut_at_blank_line and len(rb[0]) < len(ra[0])), (task, shots)
                else:
                    assert abs(float(ra[0][0]) - float(rb[0][0])) < TOL and ra[0][1] == rb[0][1], (task, shots)
        ra, rb = a["results"][task], b["results"][task]
        for key, val in ra.items():
            if isinstance(val, float) and "stderr" not in key:
                assert val == pytest.approx(rb[key], abs=1e-9), (task, shots, key)
    assert not fast._fast_reason  # genft-hf's own path ran (no delegation to HFLM)
    return fast


CELLS = [("genft_sentiment_amazon", 0, 10), ("genft_sentiment_amazon", 4, 10), ("genft_nli_mnli_m", 5, 10),
         ("genft_summary_xsum", 2, 4), ("genft_question_socialiqa", 0, 4)]


@pytest.mark.slow
def test_smollm2_study_data_matches_hf(smollm2, study_data):
    if not _harness_ready():
        pytest.skip("genft.harness / harness_tasks not available")
    torch.set_num_threads(int(os.environ.get("GENFT_TEST_THREADS", "1")))
    _compare_cells(smollm2, study_data, cells=CELLS)


@pytest.mark.slow
def test_smollm2_lora_study_data_matches_hf(smollm2, smollm2_lora, study_data):
    if not _harness_ready():
        pytest.skip("genft.harness / harness_tasks not available")
    _compare_cells(smollm2, study_data, peft=smollm2_lora,
                   cells=[("genft_nli_mnli_m", 3, 8), ("genft_summary_xsum", 1, 3)])


# The suites' generation cells: genft's builtin summary/question sets and the study's XSum/SocialIQA, at 0 and k
# shots.  Four decode slots for more items than that: rows finish at different steps and others refill.
GEN_CELLS = [("genft_summary_xsum", 0, 6), ("genft_summary_xsum", 1, 6), ("genft_question_socialiqa", 0, 8),
             ("genft_question_socialiqa", 2, 8), ("genft_summary_builtin_sports", 0, 6),
             ("genft_summary_builtin_weather", 2, 6), ("genft_question_builtin_social", 0, 6),
             ("genft_question_builtin_science", 2, 6)]


@pytest.fixture(scope="module")
def gen_data(study_data):
    """The study's data plus genft's builtin sets in one folder."""
    from genft.builtin import generate

    generate(study_data, log=lambda *_: None)
    return study_data


@pytest.mark.slow
def test_smollm2_generation_matches_hf(smollm2, gen_data):
    if not _harness_ready():
        pytest.skip("genft.harness / harness_tasks not available")
    torch.set_num_threads(int(os.environ.get("GENFT_TEST_THREADS", "1")))
    fast = _compare_cells(smollm2, gen_data, cells=GEN_CELLS, gen_batch_size=4)
    assert fast.stats["prefill_calls"] > len(GEN_CELLS) and fast.stats["prefix_forwards"] >= 4


@pytest.mark.slow
@pytest.mark.ci
def test_smollm2_generation_matches_hf_ci(smollm2, study_format_data):
    """CI's share of the check above, on any clone: SocialIQA in the study's format (the release the tests
    make) with two demonstrations, 5 items through 2 decode slots."""
    if not _harness_ready():
        pytest.skip("genft.harness / harness_tasks not available")
    fast = _compare_cells(smollm2, study_format_data, cells=[("genft_question_socialiqa", 2, 5)], gen_batch_size=2)
    assert fast.stats["prefill_calls"] >= 3 and fast.stats["prefix_forwards"] == 1
