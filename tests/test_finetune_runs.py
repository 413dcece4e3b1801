"""finetune/sft.py and genft.training, training: a few steps of full and LoRA training on the tiny model, the
folder and manifest a run writes, determinism, padding-free batches and the target-position LM head, reruns
and resumes, LoRA adapter == merged scores in lm-eval, two processes under accelerate, bf16 mixed precision."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("trl")

from conftest import REPO  # noqa: E402
from finetune_setup import TRAIN, _cfg, _lm_eval_contexts, _quiet, sft, without_cpu_bf16  # noqa: E402
from genft import training  # noqa: E402
from genft.precision import cpu_bf16_missing  # noqa: E402
from genft.training import ConfigError, FinetuneConfig  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def full_run(tiny_model, data_root, tmp_path_factory):
    """FTICL k=2 (fixed) full fine-tuning, with a max_length that forces some demos out."""
    out = tmp_path_factory.mktemp("runs") / "full"
    cfg = _cfg(tiny_model, data_root, out, icl_shots=2, max_length=72)
    return cfg, training.run(cfg, log=_quiet)


@pytest.fixture(scope="module")
def lora_run(tiny_model, data_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "lora"
    cfg = _cfg(tiny_model, data_root, out, use_peft=True, lora_r=4, lora_alpha=8, lora_dropout=0.0,
               lora_target_modules=["all-linear"], learning_rate=5e-2)
    return cfg, training.run(cfg, log=_quiet)


# ---------------------------------------------------------------- training runs


def test_full_run_folder_and_manifest(full_run):
    cfg, man = full_run
    out = Path(cfg.output_dir)
    assert (out / "genft_manifest.json").is_file() and (out / "model.safetensors").is_file()
    assert not list(out.glob("checkpoint-*")), "checkpoints are removed when the run finished"
    disk = json.loads((out / "genft_manifest.json").read_text())
    assert disk["config_hash"] == man.config_hash and disk["status"] == "finished"
    assert disk["data"]["examples"] == 16 and disk["training"]["global_steps"] == 3
    assert set(disk["data"]["files"]) == {"train_16.jsonl", "demos.jsonl"}
    assert all(len(h) == 64 for h in disk["data"]["files"].values())
    for lib in ("torch", "transformers", "trl", "peft", "genft"):
        assert disk["versions"][lib]
    assert disk["device"]["device"] == "cpu" and disk["device"]["bf16"] is False
    assert len(disk["training"]["loss_curve"]) == 3 and disk["training"]["tokens_per_s"] > 0
    assert disk["weight_deviation"]["mean_abs_diff"] > 0
    # max_length 72 pushes demos out of some examples: counted, and every row still reached the trainer
    t = disk["truncation"]
    assert t["examples_demos_cut"] > 0 and t["longest"] <= 72
    # the folder loads as an ordinary model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    AutoModelForCausalLM.from_pretrained(out)
    AutoTokenizer.from_pretrained(out)


def test_the_manifest_training_wrote_round_trips(full_run, tmp_path):
    """What run() returns is what it wrote (genft's JSON names), and what every reader reads back; a copy of
    the run with its manifest in an older, unversioned form is refused by name, not retrained over."""
    import shutil

    cfg, man = full_run
    out = Path(cfg.output_dir)
    disk = json.loads((out / training.MANIFEST).read_text())
    assert isinstance(man, training.Manifest) and disk == man.dump() and training.read_manifest(out) == man
    assert disk["genft_manifest_version"] == training.MANIFEST_VERSION
    assert man.outputs.model_dir == str(out) and man.truncation.longest <= 72 and man.training.batching.padding_free
    old = tmp_path / "old"
    shutil.copytree(out, old)
    del disk["genft_manifest_version"]
    (old / training.MANIFEST).write_text(json.dumps(disk))
    with pytest.raises(ConfigError, match=f"output_dir: {old / training.MANIFEST}: no genft_manifest_version"):
        training.run(FinetuneConfig(**{**training.config_dict(cfg), "output_dir": str(old)}), log=_quiet)


def test_lora_run_folder(lora_run):
    cfg, man = lora_run
    out = Path(cfg.output_dir)
    assert (out / "adapter" / "adapter_config.json").is_file()
    assert (out / "model.safetensors").is_file() and (out / "genft_manifest.json").is_file()
    assert man.model.method == "lora" and man.model.trainable_parameters < man.model.parameters
    assert man.weight_deviation.mean_abs_diff > 0


def test_same_seed_identical_weights(full_run, tmp_path):
    from safetensors.torch import load_file

    cfg, _ = full_run
    again = FinetuneConfig(**{**training.config_dict(cfg), "output_dir": str(tmp_path / "again")})
    training.run(again, log=_quiet)
    a = load_file(Path(cfg.output_dir) / "model.safetensors")
    b = load_file(tmp_path / "again" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_padding_free_trains_the_padded_objective(full_run, tmp_path):
    """The default run flattens its batches; the same run padded sees the same tokens and the same losses."""
    from safetensors.torch import load_file

    cfg, man = full_run
    flat = man.training
    assert flat.batching.padding_free is True, flat.batching
    padded_cfg = FinetuneConfig(**{**training.config_dict(cfg), "output_dir": str(tmp_path / "padded"),
                                   "padding_free": False})
    assert training.config_hash(padded_cfg, man.data.files) == man.config_hash, "not part of the identity"
    padded = training.run(padded_cfg, log=_quiet).training
    assert padded.batching.model_dump(exclude_none=True) == {"padding_free": False, "reason": "padding_free is off"}
    assert flat.lm_head == padded.lm_head == "target positions"
    # both ran per-example attention: per example in the flattened batches, sdpa with its mask in the padded ones
    assert flat.attention == padded.attention == "genft_examples"
    # the same input tokens counted (EOS included: the tokenizer's pad token is its EOS)
    assert flat.trained_tokens == padded.trained_tokens > 0
    # step 1 sees the same weights: the same loss up to summation order; later steps stay within rounding
    (s1, a1), (_, b1) = flat.loss_curve[0], padded.loss_curve[0]
    assert s1 == 1 and a1 == pytest.approx(b1, rel=1e-5)
    assert [x for _, x in flat.loss_curve] == pytest.approx([x for _, x in padded.loss_curve], rel=1e-3)
    a = load_file(Path(cfg.output_dir) / "model.safetensors")
    b = load_file(tmp_path / "padded" / "model.safetensors")
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-4


def test_lm_head_at_target_positions_gives_the_same_loss_gradients_and_metrics(tiny_model, monkeypatch):
    """TRL's fused LM head, as SFTTrainer adds it, on a batch whose prompt positions have no target: with
    scored_positions_only it projects only the target positions, with the same outputs and gradients."""
    import trl.trainer.utils as tu
    from transformers import AutoModelForCausalLM

    from genft.training.lm_head import scored_positions_only

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    tu.add_fused_lm_head(model, outputs=("log_probs", "entropy", "is_top1"))  # SFTTrainer's call
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(3, model.config.vocab_size, (2, 24), generator=gen)
    labels = ids.clone()
    labels[:, :18] = -100  # the prompt: only the last 6 tokens of each row are targets
    projected = []
    real = tu._ChunkedLogProbFunction

    class Counting:
        @staticmethod
        def apply(hidden, *args):
            projected.append(hidden.shape[0])
            return real.apply(hidden, *args)

    monkeypatch.setattr(tu, "_ChunkedLogProbFunction", Counting)

    def step():
        model.zero_grad()
        out = model(input_ids=ids, labels=labels, fused_lm_head=True)
        out.loss.backward()
        return out, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    full, full_grads = step()
    original = tu._use_triton
    with scored_positions_only() as where:
        compact, compact_grads = step()
    assert where == "target positions" and tu._use_triton is original
    assert projected == [2 * 23, 2 * 6]  # every (shifted) position, then the targets only
    assert float(compact.loss) == pytest.approx(float(full.loss), rel=1e-6)
    for field in ("log_probs", "entropy"):
        assert torch.allclose(getattr(compact, field), getattr(full, field), atol=1e-5), field
    assert torch.equal(compact.is_top1, full.is_top1)
    assert full_grads.keys() == compact_grads.keys() and full_grads
    for name, g in full_grads.items():
        assert torch.allclose(compact_grads[name], g, atol=1e-6), name


def _ignores_the_mask(module, query, key, value, attention_mask, **kwargs):
    """A custom attention (registered like any user's) that is causal over the whole row and ignores the mask:
    correct for right-padded rows, wrong for flattened ones."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    return sdpa_attention_forward(module, query, key, value, None, is_causal=True,
                                  **{k: v for k, v in kwargs.items() if k != "is_causal"})


def test_padding_free_checked_against_padded_batches(tiny_model, tok):
    from transformers import AttentionInterface, AutoModelForCausalLM

    AttentionInterface.register("genft_test_ignores_mask", _ignores_the_mask)
    rows = [{"prompt": f"Review: {r['text']}\nSentiment:", "completion": f" {r['label']}"} for r in TRAIN[:4]]
    good = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).train()
    ok = training.check_padding_free(good, tok, rows, "float32")
    assert ok["padding_free"] is True and ok["padded_loss"] == pytest.approx(ok["flat_loss"], rel=1e-5), ok
    assert good.training, "the model is handed back in training mode, as the trainer expects"
    bad = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32,
                                               attn_implementation="genft_test_ignores_mask")
    no = training.check_padding_free(bad, tok, rows, "float32")
    assert no["padding_free"] is False and "does not keep flattened examples apart" in no["reason"], no
    assert no["padded_loss"] == pytest.approx(ok["padded_loss"], rel=1e-5), "padded rows are right for both"
    same = training.check_padding_free(good, tok, [rows[0], rows[0]], "float32")
    assert same["padding_free"] is False and "no two rows of different lengths" in same["reason"]


def test_rerun_same_config_does_not_train(full_run):
    cfg, man = full_run
    manifest = Path(cfg.output_dir) / "genft_manifest.json"
    before = manifest.stat().st_mtime_ns
    lines = []
    again = training.run(FinetuneConfig(**training.config_dict(cfg)), log=lines.append)
    assert any("nothing to do" in line for line in lines)
    assert again.config_hash == man.config_hash and manifest.stat().st_mtime_ns == before
    # an operational setting (logging, checkpointing) is not a different config: nothing trained or rewritten
    weights = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in Path(cfg.output_dir).glob("*.safetensors")}
    lines.clear()
    again = training.run(FinetuneConfig(**{**training.config_dict(cfg), "logging_steps": 7, "save_steps": 50}),
                         log=lines.append)
    assert any("nothing to do" in line for line in lines) and not any("step " in line for line in lines), lines
    assert again.config_hash == man.config_hash and again.weights_sha256 == man.weights_sha256
    assert manifest.stat().st_mtime_ns == before and weights and weights == {
        p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in Path(cfg.output_dir).glob("*.safetensors")}


def test_other_config_in_same_dir_is_an_error(full_run):
    cfg, _ = full_run
    other = FinetuneConfig(**{**training.config_dict(cfg), "learning_rate": 3e-4})
    with pytest.raises(ConfigError, match="learning_rate"):
        training.run(other, log=_quiet)


def test_interrupted_run_resumes_from_checkpoint(tiny_model, data_root, tmp_path):
    from safetensors.torch import load_file

    kw = dict(max_steps=4, save_steps=2, keep_checkpoints=True)
    ref = _cfg(tiny_model, data_root, tmp_path / "ref", **kw)
    training.run(ref, log=_quiet)
    cfg = _cfg(tiny_model, data_root, tmp_path / "cut", **kw)
    training.run(cfg, log=_quiet)
    out = tmp_path / "cut"
    # simulate an interruption after step 2: no manifest, no final weights, only checkpoint-2
    (out / "genft_manifest.json").unlink()
    shutil.rmtree(out / "checkpoint-4")
    (out / "model.safetensors").unlink()
    lines = []
    man = training.run(cfg, log=lines.append)
    assert any("resuming from" in line and "checkpoint-2" in line for line in lines)
    assert man.training.resumed_from_checkpoint.endswith("checkpoint-2")
    a, b = load_file(tmp_path / "ref" / "model.safetensors"), load_file(out / "model.safetensors")
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


# ---------------------------------------------------------------- LoRA: adapter == merged in lm-eval


def test_lora_adapter_and_merged_give_the_same_scores(lora_run, tiny_model, data_root):
    cfg, man = lora_run
    out = cfg.output_dir
    merged = _lm_eval_contexts(out, data_root, 0)
    adapter = _lm_eval_contexts(tiny_model, data_root, 0, peft=str(Path(out) / "adapter"))
    base = _lm_eval_contexts(tiny_model, data_root, 0)
    r_m, r_a = merged["results"]["genft_sentiment_amazon"], adapter["results"]["genft_sentiment_amazon"]
    for m in ("acc,none", "acc_first,none"):
        assert r_m[m] == r_a[m]

    def lls(res):
        return [float(r[0][0]) for s in sorted(res["samples"]["genft_sentiment_amazon"], key=lambda s: s["doc_id"])
                for r in s["resps"]]

    assert lls(merged) == pytest.approx(lls(adapter), abs=1e-4)
    assert lls(merged) != pytest.approx(lls(base), abs=1e-4)  # the adapter did change the model


# ---------------------------------------------------------------- several processes


def test_weight_deviation_from_saved_files_equals_the_in_memory_one(full_run, tiny_model):
    """Sharded runs (FSDP, ZeRO-3) compute the deviation from the saved checkpoint; on an ordinary run the two
    ways agree."""
    cfg, man = full_run
    d = training.weight_deviation_from_files(tiny_model, Path(cfg.output_dir), torch.float32)
    assert d["parameters"] == man.weight_deviation.parameters
    assert d["mean_abs_diff"] == pytest.approx(man.weight_deviation.mean_abs_diff, rel=1e-6)
    assert d["mean_abs_diff"] > 0


def _stop_tree(proc: subprocess.Popen) -> str:
    """Stop a launcher and every process under it (torchrun starts each worker in its own session, so a process
    group does not reach them): found by parent id, never by name; each dumps its stack first (faulthandler).
    Returns what was running."""
    import psutil

    try:
        tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return "(the launcher had exited)"
    seen = []
    for p in tree:
        with contextlib.suppress(psutil.NoSuchProcess):
            seen.append(f"{p.pid} {p.status()} {' '.join(p.cmdline())[:200]}")
            p.send_signal(signal.SIGABRT)
    psutil.wait_procs(tree, timeout=5)
    for p in tree:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    proc.wait(timeout=30)
    return "\n".join(seen)


def test_two_processes_under_accelerate_write_one_checkpoint_and_manifest(tiny_model, data_root, tmp_path):
    """`accelerate launch --multi_gpu --num_processes 2` runs data parallel on CPU too (gloo): the manifest
    records 2 processes, the effective batch doubles, the checkpoint loads, and num_processes is part of the
    recipe hash (one process with the same config is another model)."""
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", str(REPO / "finetune" / "sft.py"),
           "--task", "sentiment", "--dataset", "amazon", "--train_size", "16", "--data_dir", str(data_root),
           "--model_name_or_path", tiny_model, "--output_dir", str(out), "--max_steps", "2",
           "--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "1", "--max_length", "128",
           "--torch_threads", "1", "--save_steps", "100"]
    log = tmp_path / "ddp.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ACCELERATE_", "TORCHELASTIC"))
           and k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    # The rendezvous port: accelerate's default (29500), or its port 0, is a port found free and released, which
    # another process may take before the launcher binds it.  Given a port that is taken (held here, listening),
    # accelerate launches torchrun's standalone rendezvous instead, whose store binds a free port itself.
    with socket.socket() as held, open(log, "w") as f:  # a file, not a pipe: a hung worker cannot block its output
        held.bind(("127.0.0.1", 0))
        held.listen()
        cmd[cmd.index("--num_machines"):cmd.index("--num_machines")] = [
            "--main_process_port", str(held.getsockname()[1])]
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, text=True,
                                env=env | {"OMP_NUM_THREADS": "1", "PYTHONFAULTHANDLER": "1"})
        try:
            proc.wait(timeout=300)
        except subprocess.TimeoutExpired:
            ps = _stop_tree(proc)
            pytest.fail(f"2-process fine-tune hung; processes:\n{ps}\nlog:\n{log.read_text()[-12000:]}")
    assert "standalone" in log.read_text(), "accelerate did not take the standalone rendezvous"
    assert proc.returncode == 0, log.read_text()[-3000:]
    man = json.loads((out / "genft_manifest.json").read_text())
    assert man["config"]["num_processes"] == 2 and man["device"]["world_size"] == 2
    assert man["training"]["effective_batch_size"] == 2 * 1 * 2 and man["training"]["global_steps"] == 2
    assert man["training"]["epochs"] == pytest.approx(0.5)  # 2 steps x 4 examples of 16: both processes trained
    assert man["weights_sha256"] and man["weight_deviation"]["mean_abs_diff"] > 0
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(out)  # a valid checkpoint
    single = _cfg(tiny_model, data_root, tmp_path / "one", max_steps=2, per_device_train_batch_size=2,
                  max_length=128)
    files = training.load_training_items(training.validate(single))[2]
    assert training.config_hash(single, files) != man["config_hash"]
    # a config that asks for 2 processes, launched as one (accelerate's --cpu runs one process): refused
    two = _cfg(tiny_model, data_root, tmp_path / "two", num_processes=2)
    with pytest.raises(ConfigError, match="num_processes: the config says 2 but this launch runs 1"):
        training.run(two, log=_quiet)
    assert not (tmp_path / "two").exists()


# ---------------------------------------------------------------- bf16 mixed precision on the CPU


@pytest.mark.skipif(bool(cpu_bf16_missing()), reason=f"no native bf16 on this CPU: {cpu_bf16_missing()}")
def test_bf16_mixed_precision_on_cpu(full_run, tmp_path):
    """`bf16: true` on a CPU: TRL's own switch, run as accelerate's bf16 autocast (the linear layers compute
    in bf16) with float32 weights and optimizer state; the same padding-free batches and target-position LM
    head; its own recipe hash; the manifest says so.  Its first loss is the float32 run's up to bf16 rounding."""
    from safetensors.torch import load_file

    cfg, man = full_run
    bf_cfg = FinetuneConfig(**{**training.config_dict(cfg), "output_dir": str(tmp_path / "bf16"), "bf16": True})
    assert training.config_hash(bf_cfg, man.data.files) != man.config_hash
    seen: set = set()

    def linear_out(module, args, output):
        if isinstance(module, torch.nn.Linear) and module.training:
            seen.add(output.dtype)

    hook = torch.nn.modules.module.register_module_forward_hook(linear_out)
    try:
        bf = training.run(bf_cfg, log=_quiet)
    finally:
        hook.remove()
    assert seen == {torch.bfloat16}, seen  # every training forward of a linear layer ran in bf16
    assert bf.device.bf16 is True and bf.device.precision.startswith("bf16 mixed precision")
    assert man.device.bf16 is False and man.device.precision == "float32 throughout"
    t = bf.training
    assert t.mixed_precision == "bf16" and man.training.mixed_precision == "no"
    assert t.batching.padding_free is True and t.lm_head == "target positions"
    assert t.trained_tokens == man.training.trained_tokens
    # step 1: the same weights and batch, forward in bf16: the float32 loss within bf16 rounding (2**-7 per
    # product; measured 8e-6 relative on the tiny model's near-uniform logits), but not bit-equal
    a1, b1 = man.training.loss_curve[0][1], t.loss_curve[0][1]
    assert b1 == pytest.approx(a1, rel=1e-2) and b1 != a1
    w = load_file(Path(bf_cfg.output_dir) / "model.safetensors")
    assert {v.dtype for v in w.values()} == {torch.float32}  # master weights stay float32
    assert json.loads((Path(bf_cfg.output_dir) / "config.json").read_text()).get("dtype", "float32") == "float32"


def test_bf16_refused_on_a_cpu_without_it(tiny_model, data_root, tmp_path, monkeypatch, capsys):
    without_cpu_bf16(monkeypatch)
    assert "neither AVX512-BF16 nor AMX" in cpu_bf16_missing()
    out = tmp_path / "out"
    rc = sft.main(["--task", "sentiment", "--dataset", "amazon", "--train_size", "16", "--model_name_or_path",
                   tiny_model, "--data_dir", str(data_root), "--output_dir", str(out), "--bf16", "true"])
    err = capsys.readouterr().err
    assert rc == 2 and "bf16: bf16 on this CPU is refused" in err and "AVX512-BF16" in err, err
    assert not out.exists()
    # float32 (the default) still trains there: the check is only for bf16
    assert training.device_settings(_cfg(tiny_model, data_root, out))["bf16"] is False
