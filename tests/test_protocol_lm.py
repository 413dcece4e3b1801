"""The study protocol through genft's evaluation with a tokenizer that is not sentencepiece-style (the tiny
model's): the study's string is tokenized as the study's call would have, the literal "<s> " included; and a
study-protocol evaluation gives the same per-item results through `genft eval` as through a suite.
(tests/test_study_tokens.py checks the ids with Llama-2's real tokenizer.)"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from genft import cli, data, harness, study_tokens
from genft.prompts import render_context
from genft.protocol_lm import StudyPromptLM, with_protocol
from genft.suite import observe, store
from genft.suite.run import run_suite

SENT = [{"text": "great phone, works well", "label": "positive"}, {"text": "broke in a day", "label": "negative"},
        {"text": "fine value", "label": "positive"}]
SENT_DEMOS = [{"text": "love it", "label": "positive"}, {"text": "awful", "label": "negative"}]
QUES = [{"context": "Tom ate lunch at noon.", "answer": "noon", "question": "When did Tom eat?"},
        {"context": "Ann ran home.", "answer": "Ann", "question": "Who ran home?"}]


def write_study_data(root: Path) -> None:
    meta = {"protocol": "study"}
    data.write_dataset("sentiment", "amazon", {"test": SENT, "demos": SENT_DEMOS}, root, meta)
    data.write_dataset("question", "socialiqa", {"test": QUES, "demos": QUES[::-1]}, root, meta)


@pytest.fixture(scope="module")
def study_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("study-data")
    write_study_data(root)
    return root


def test_the_studys_string_for_a_byte_level_tokenizer(tiny_model, study_root, monkeypatch):
    lm = harness.load_model(tiny_model, "hf", device="cpu", batch_size=2)
    tok = lm.tokenizer
    assert study_tokens.sentencepiece_prefix(tok) is None
    before, after = study_tokens.special_affixes(tok)
    scored, generated = [], []
    real_ll, real_gen = lm._loglikelihood_tokens, lm._model_generate
    monkeypatch.setattr(lm, "_loglikelihood_tokens", lambda reqs, **kw: scored.extend(reqs) or real_ll(reqs, **kw))

    def spy_gen(context, **kwargs):
        generated.extend(row[m.bool()].tolist() for row, m in zip(context, kwargs["attention_mask"]))
        return real_gen(context, **kwargs)

    monkeypatch.setattr(lm, "_model_generate", spy_gen)
    for shots in (0, 2):
        scored.clear()
        generated.clear()
        # the protocol is that of the data the task manager reads (no data_root given: benchmarks call it so)
        harness.evaluate(lm, ["genft_sentiment_amazon", "genft_question_socialiqa"], num_fewshot=shots, limit=1,
                         tm=harness.task_manager(tiny_model, study_root))
        cls = render_context("sentiment", SENT[0], SENT_DEMOS[:shots])
        gen = render_context("question", QUES[0], QUES[::-1][:shots])
        prefix = "<s> " if shots == 0 else ""  # the study's literal text, whatever the model's BOS string is
        assert {tuple(c) for _, c, _ in scored} == {tuple(tok(prefix + cls, add_special_tokens=False)["input_ids"])}
        assert [list(t) for _, _, t in scored][:2] == [tok(w, add_special_tokens=False)["input_ids"]
                                                       for w in ("positive", "negative")]
        assert generated == [before + tok(prefix + gen, add_special_tokens=False)["input_ids"] + after]
    assert "tok_batch_encode" not in vars(lm)  # the study's encoding was for those calls only


def test_with_protocol(tiny_model):
    lm = harness.load_model(tiny_model, "hf", device="cpu", batch_size=2)
    assert with_protocol(lm, "clean", 0) is lm
    wrapped = with_protocol(lm, "study", 2)
    assert isinstance(wrapped, StudyPromptLM) and wrapped.shots == 2 and wrapped.tokenizer is lm.tokenizer
    with pytest.raises(ValueError, match="already wrapped"):
        with_protocol(wrapped, "study", 0)

    class Other:  # a backend that encodes generation prompts itself (vllm): refused, not silently re-tokenized
        tokenizer = lm.tokenizer

    with pytest.raises(ValueError, match="needs the hf or genft-hf backend"):
        StudyPromptLM(Other(), 0, wrapped.quirks).generate_until([])


def test_genft_eval_and_a_suite_give_the_same_items_on_study_data(tmp_path, tiny_model, study_root, monkeypatch):
    monkeypatch.setenv("GENFT_DATA_DIR", str(study_root))  # `genft eval` sets it; restored after the test
    doc = {"name": "p", "data": {"source": "study", "data_dir": str(study_root), "protocol": "study"},
           "models": {"tiny": {"model": "tiny"}},
           "eval": {"test_sets": ["amazon", "socialiqa"], "shots": {"classification": [0, 2], "generation": [0, 1]},
                    "prompts": [1, 2], "backend": "genft-hf", "group": "cell"},
           "output": str(tmp_path / "out")}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(doc))
    assert run_suite(path, log=lambda *_: None) == 0
    recs, _ = store.load_finished(tmp_path / "out")
    assert {r.protocol for r in recs} == {"study"} and len(recs) == 8
    # the modules that build the study's ids are part of a study cell's key: changing them re-runs the cell
    assert {r.material["study_tokens"] for r in recs} == {observe.study_tokens_hash()}
    got = {}
    sent, ques = ["genft_sentiment_amazon", "genft_sentiment_amazon_p2"], ["genft_question_socialiqa",
                                                                          "genft_question_socialiqa_p2"]
    for shots, tasks in ((0, sent + ques), (2, sent), (1, ques)):
        out = tmp_path / f"eval-{shots}.json"
        assert cli.main(["eval", "--model", tiny_model, "--backend", "genft-hf", "--data-dir", str(study_root),
                         "--shots", str(shots), "--output", str(out), "--tasks", *tasks]) == 0
        res = json.loads(out.read_text())
        assert res["protocol"] == "study"
        got.update({(c["task"], c["shots"]): c for c in res["cells"]})
    assert len(got) == 8
    for r in recs:
        cell = got[(harness.task_name(r.task, r.dataset, r.prompt), r.shots)]
        assert (cell["doc_ids"], cell["items"], cell["outputs"]) == (r.doc_ids, r.items, r.outputs), \
            (r.task, r.prompt, r.shots)
        assert cell["n"] == r.n == len(SENT if r.task == "sentiment" else QUES)
        # lm-eval's responses (each choice's log-likelihood, the raw generation), as the suite's samples file has them
        lines = (tmp_path / "out" / "cells" / f"{r.key}.samples.jsonl").read_text().splitlines()
        suite_resps = [s["filtered_resps"] for s in sorted(map(json.loads, lines), key=lambda s: s["doc_id"])]
        if r.task == "sentiment":
            lls = [ll for item in cell["responses"] for ll, _ in item]
            assert lls == pytest.approx([ll for item in suite_resps for ll, _ in item], abs=1e-5)
        else:
            assert cell["responses"] == suite_resps


def test_a_study_protocol_suite_evaluates_the_studys_release(tmp_path, tiny_model, study_release):
    """A suite on a (made) study release under the study protocol: 4 MNLI items, the release's item 3 with gold
    "-" kept, scored, and wrong whatever the model answers."""
    root = tmp_path / "data-study"
    data.import_study(study_release.data, root, log=lambda *_: None, protocol="study")
    doc = {"name": "p", "data": {"source": "study", "data_dir": str(root), "protocol": "study"},
           "models": {"tiny": {"model": "tiny"}},
           "eval": {"test_sets": ["mnli_m"], "shots": {"nli": [0, 3]}, "limit": 4, "backend": "hf",
                    "group": "cell"}, "output": str(tmp_path / "out")}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(doc))
    assert run_suite(path, log=lambda *_: None) == 0
    recs, _ = store.load_finished(tmp_path / "out")
    assert {r.protocol for r in recs} == {"study"} and len(recs) == 2
    for r in recs:
        assert r.n == 4 and r.doc_ids == [0, 1, 2, 3] and r.items["acc_first"][3] == r.items["acc"][3] == 0.0
        assert not any(r.items[f"gold_{lab}"][3] for lab in ("entailment", "neutral", "contradiction"))
