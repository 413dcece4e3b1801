import json
import subprocess
import sys

from conftest import STUDY_DATA


def genft(*args, **kw):
    return subprocess.run([sys.executable, "-m", "genft.cli", *args], capture_output=True, text=True, **kw)


def test_import_study_cli(tmp_path):
    if not STUDY_DATA.is_dir():
        import pytest

        pytest.skip("no study data")
    out = genft("data", "import-study", str(STUDY_DATA), "--data-dir", str(tmp_path))
    assert out.returncode == 0, out.stderr
    assert "nli/mnli_m: test 492, demos 8, train_2000 2000" in out.stdout
    assert len(list(tmp_path.glob("*/*/test.jsonl"))) == 18


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
    assert cell["n"] == 100 and 0.0 <= cell["metrics"]["acc_first"] <= 1.0
