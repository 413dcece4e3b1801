"""The study protocol's prompt quirks, as the model sees them: the token sequences the study's code built
(genft.data.protocol), through lm-eval's real tokenizing, and through a suite with data.protocol: study."""
from __future__ import annotations

import json

import pytest
import yaml

from genft import harness
from genft import suite as gsuite
from genft.data import import_study
from genft.protocol_lm import StudyPromptLM, with_protocol
from genft.suite import store


class Capture:
    """Stands behind the wrapper where lm-eval's model would: records the tokens HFLM would score / prompt."""

    def __init__(self, lm):
        self.lm, self.tokens = lm, []

    def __getattr__(self, name):
        return getattr(self.lm, name)

    def loglikelihood(self, requests):
        self.tokens += [self.lm._encode_pair(*r.arguments)[0] for r in requests]
        return [(0.0, False)] * len(requests)

    def generate_until(self, requests):
        self.tokens += [self.lm.tok_encode(r.arguments[0]) for r in requests]
        return [""] * len(requests)


class Req:
    def __init__(self, *arguments):
        self.arguments = arguments


@pytest.fixture(scope="module")
def lm(tiny_model):
    return harness.load_model(tiny_model, "hf", device="cpu", batch_size=2)


def test_study_prompts_have_the_studys_bos_tokens(lm):
    bos = lm.tokenizer.bos_token_id
    ctx = "### Input:\ngreat phone\n### Sentiment:"
    plain = lm.tok_encode(ctx)
    assert plain[0] != bos  # this tokenizer adds no BOS by itself: the clean protocol's prompt has none

    def seen(shots, kind):
        cap = Capture(lm)
        wrapped = StudyPromptLM(cap, shots, lm.tokenizer.bos_token, with_protocol(lm, "study", 0).quirks)
        getattr(wrapped, "loglikelihood" if kind == "cls" else "generate_until")(
            [Req(ctx, " positive") if kind == "cls" else Req(ctx, {"until": []})])
        assert lm.add_bos_token is None  # restored after the call
        return cap.tokens[0]

    cls0, clsk, gen0, genk = seen(0, "cls"), seen(2, "cls"), seen(0, "gen"), seen(2, "gen")
    assert cls0[0] == bos and cls0[1] != bos  # "<s> " at 0 shots: [BOS, ...]
    assert bos not in clsk and clsk == plain  # demonstrations: no BOS at all
    assert gen0[:2] == [bos, bos] and gen0[2] != bos  # vLLM's BOS + the "<s> " text
    assert genk[0] == bos and genk[1:] == plain  # vLLM's one BOS
    assert with_protocol(lm, "clean", 0) is lm


def test_a_study_protocol_suite_evaluates_the_studys_prompts(tmp_path, tiny_model, study_release):
    root = tmp_path / "data-study"
    import_study(study_release.data, root, log=lambda *_: None, protocol="study")
    doc = {"name": "p", "data": {"source": "study", "data_dir": str(root), "protocol": "study"},
           "models": {"tiny": {"model": "tiny"}},
           "eval": {"test_sets": ["mnli_m"], "shots": {"nli": [0, 3]}, "limit": 4, "backend": "hf",
                    "group": "cell"}, "output": str(tmp_path / "out")}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(doc))
    assert gsuite.run_suite(path, log=lambda *_: None) == 0
    recs, _ = store.load_finished(tmp_path / "out")
    assert {r.protocol for r in recs} == {"study"} and len(recs) == 2
    for r in recs:
        samples = [json.loads(line) for line in
                   (tmp_path / "out" / "cells" / f"{r.key}.samples.jsonl").read_text().splitlines()]
        contexts = {args[0] for s in samples for args in s["arguments"]}
        assert len(contexts) == 4 and all(c.startswith("<s> ### Input_1") == (r.shots == 0) for c in contexts)
        # the release's item 3 has gold "-": kept, scored, and wrong whatever the model answers
        assert r.n == 4 and r.doc_ids == [0, 1, 2, 3] and r.items["acc_first"][3] == r.items["acc"][3] == 0.0
        assert not any(r.items[f"gold_{lab}"][3] for lab in ("entailment", "neutral", "contradiction"))
