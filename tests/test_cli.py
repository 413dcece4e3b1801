import json
import subprocess
import sys

from genft import data, harness


def genft(*args, **kw):
    return subprocess.run([sys.executable, "-m", "genft.cli", *args], capture_output=True, text=True, **kw)


def test_import_study_cli(tmp_path, study_release):
    out = genft("data", "import-study", str(study_release.data), "--data-dir", str(tmp_path))
    assert out.returncode == 0, out.stderr
    assert "nli/mnli_m: test 253, demos 8, train_2000 6, train_4000 8, train_6000 10; dropped 3 defective items " \
           "(gold '-' or an empty text) in test" in out.stdout
    assert len(list(tmp_path.glob("*/*/test.jsonl"))) == 18
    # a second import with another protocol into the folder: exit 2, a message, the data untouched
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    out = genft("data", "import-study", str(study_release.data), "--protocol", "study", "--data-dir", str(tmp_path))
    assert out.returncode == 2 and "holds clean-protocol data" in out.stderr
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


def test_cli_errors_exit_nonzero_with_a_message(tmp_path):
    out = genft("data", "import-study", str(tmp_path / "nope"))
    assert out.returncode == 2 and "no such folder" in out.stderr
    out = genft("model", "prepare", "gpt5")
    assert out.returncode == 2 and "unknown model name 'gpt5'" in out.stderr
    out = genft("eval", "--model", "tiny", "--tasks", "genft_nope", "--data-dir", str(tmp_path))
    assert out.returncode == 2 and "no genft task matches 'genft_nope'" in out.stderr


def test_builtin_cli_then_eval(tmp_path, tiny_model):
    out = genft("data", "builtin", "--data-dir", str(tmp_path))
    assert out.returncode == 0, out.stderr
    out = genft("eval", "--model", "tiny", "--tasks", "genft_sentiment_builtin_products", "genft_summary_builtin_sports",
                "--shots", "0", "1", "--limit", "2", "--data-dir", str(tmp_path))
    assert out.returncode == 0, out.stderr
    assert "genft_sentiment_builtin_products 1-shot: acc " in out.stdout
    assert "| genft_summary_builtin_sports" in out.stdout
    # Without --limit the item count comes from lm-eval's results (the whole test set), not from the flag.
    out = genft("eval", "--model", "tiny", "--tasks", "genft_sentiment_builtin_products", "--data-dir", str(tmp_path),
                "--output", str(tmp_path / "scores.json"))
    assert out.returncode == 0, out.stderr
    scores = json.loads((tmp_path / "scores.json").read_text())
    assert scores["backend"] == "genft-hf"  # the default: hf's scores, faster
    [cell] = scores["cells"]
    m = cell["metrics"]
    assert cell["n"] == 100 and f"genft_sentiment_builtin_products 0-shot: acc {m['acc']:.3f}  acc_first " \
                                 f"{m['acc_first']:.3f}" in out.stdout
    # the scores are those of every test item: the gold labels' shares are the test file's, and the same
    # evaluation in this process gives the same numbers
    test = data.load_split("sentiment", "builtin_products", "test", tmp_path)
    assert len(test) == 100 and m["gold_positive"] == sum(t["label"] == "positive" for t in test) / 100
    lm = harness.load_model(tiny_model, "hf", batch_size=8)
    want = harness.evaluate(lm, ["genft_sentiment_builtin_products"], num_fewshot=0, pretrained=tiny_model,
                            data_root=tmp_path)["results"]["genft_sentiment_builtin_products"]
    assert m == {k.split(",")[0]: v for k, v in want.items() if k.endswith(",none")}
