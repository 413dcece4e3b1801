"""The fine-tuning benchmark's main process (benchmarks/finetune_speed.py): the data and the examples every arm
trains on, each run of an arm in a fresh process, and the runs' summary with its checks.

`benchmark` finds or writes the data (`prepare_data`), builds genft's examples once (`build_shared_examples`),
measures the machine's peaks, runs every arm --reps times (each run a fresh `finetune_speed.py --worker`
process, the arms' order rotated), summarises and checks the runs (`summarize`), and profiles the pairs of
arms `profile_pairs` picks.  Training FLOPs per run: `flops_per_run`.
"""
from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from finetune_arms import GENFT_ARMS, PAIRS, PRECISION_ARMS
from roofline import machine_peaks, peak_label
from run_conditions import rotated

SCRIPT = Path(__file__).resolve().parent / "finetune_speed.py"  # its --worker runs one arm in its own process
REPO = SCRIPT.parents[1]


def prepare_data(task: str, dataset: str | None, data_dir: str | None, study_data: str, train_limit: int,
                 train_size: int | None, scratch: Path, log=print) -> dict:
    """Find the training data (or create it under `scratch`, a folder the caller deletes); returns root,
    dataset, train_size and where the data came from."""
    from genft import data as gdata

    root = gdata.data_dir(data_dir)
    name = dataset or gdata.train_dataset(task).name
    origin = str(root)
    if not gdata.dataset_dir(task, name, root).is_dir():
        info = gdata.get_dataset(task, name)
        study = info.source == "study" and Path(study_data).is_dir()
        if info.source == "study" and not study and dataset is not None:
            raise SystemExit(f"finetune_speed.py: {task}/{name} is not in {root} and the study's release is not at "
                             f"{study_data}: pass --data-dir, --study-data, or a builtin --dataset")
        tmp = scratch / "data"
        tmp.mkdir(parents=True)
        if study:
            log(f"{task}/{name} is not in {root}: importing the study's release from {study_data} into {tmp}")
            gdata.import_study(Path(study_data), tmp, log=lambda *_: None)
            origin = f"the study's release ({study_data}), imported"
        else:
            from genft.builtin import generate

            if info.source == "study":
                name = gdata.train_dataset(task, "builtin").name
            log(f"no study data: writing genft's builtin data sets into {tmp} (training on {task}/{name})")
            generate(tmp, log=lambda *_: None)
            origin = "genft's builtin generator"
        root = tmp
    sizes = gdata.train_sizes(task, name, root)
    if train_size is None:
        fit = [s for s in sizes if s >= train_limit]
        if not fit:
            raise SystemExit(f"finetune_speed.py: {task}/{name} in {root} has no training file with >= {train_limit} "
                             f"items (sizes: {sizes or 'none'})")
        train_size = fit[0]
    return {"root": str(root), "dataset": name, "train_size": train_size, "origin": origin}


def build_shared_examples(cfg, log=print) -> tuple[list[dict], dict]:
    """genft's own examples (load_training_items + build_examples), the ones every arm trains on."""
    from transformers import AutoTokenizer

    from genft import models, training

    items, pool, _files, _paths = training.load_training_items(cfg)
    tokenizer = AutoTokenizer.from_pretrained(models.resolve(cfg.model_name_or_path))
    examples, _demos, trunc = training.build_examples(cfg, tokenizer, items, pool, log)
    return examples, trunc


def _spawn(spec: dict, work: Path, threads: int, log) -> dict:
    """One run of an arm in a fresh process (`finetune_speed.py --worker`, its output in a log under `work`):
    the spec is written under `work`, the arm's record read back, with the process's wall time added."""
    spec_path = work / f"{spec['tag']}.spec.json"
    spec["result"] = str(work / f"{spec['tag']}.result.json")
    spec_path.write_text(json.dumps(spec))
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), TOKENIZERS_PARALLELISM="false",
               HF_HUB_OFFLINE=env.get("HF_HUB_OFFLINE", "1"), HF_DATASETS_OFFLINE=env.get("HF_DATASETS_OFFLINE", "1"),
               TRANSFORMERS_VERBOSITY=env.get("TRANSFORMERS_VERBOSITY", "error"))
    src = str(REPO / "src")
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    log_path = work / f"{spec['tag']}.log"
    t0 = time.perf_counter()
    with open(log_path, "w") as fh:
        rc = subprocess.call([sys.executable, str(SCRIPT), "--worker", str(spec_path)],
                             stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=str(REPO))
    if rc != 0 or not Path(spec["result"]).is_file():
        tail = log_path.read_text(errors="replace")[-4000:]
        raise RuntimeError(f"arm {spec['arm']} ({spec['tag']}) failed with exit status {rc}; its output ends:\n{tail}")
    result = json.loads(Path(spec["result"]).read_text())
    result["process_s"] = time.perf_counter() - t0
    shutil.rmtree(spec["output_dir"], ignore_errors=True)  # genft's merged model, checkpoints
    return result


def flops_per_run(sizes: dict, input_tokens: int, target_tokens: int, lora: bool) -> float:
    """Training FLOPs of a run (see finetune_speed.py's docstring)."""
    c = 4 if lora else 6
    return c * sizes["body"] * input_tokens + c * sizes["head"] * target_tokens + 6 * sizes["lora"] * input_tokens


def benchmark(opts: dict, log=print) -> dict:
    """Run every arm opts['reps'] times (fresh processes, order rotated) and return the raw results + checks.

    opts: model, threads, task, dataset, data_dir, study_data, train_limit, train_size, steps, batch_size,
    max_length, lora, lora_r, lora_alpha, lora_dropout, learning_rate, seed, reps, arms, tol, profile
    ('auto' | 'always' | 'never')."""
    from genft import models, training

    arms = list(opts["arms"])
    work = Path(tempfile.mkdtemp(prefix="genft-ftbench-"))
    try:
        data = prepare_data(opts["task"], opts["dataset"], opts["data_dir"], opts["study_data"], opts["train_limit"],
                            opts["train_size"], work, log)
        model_path = models.resolve(opts["model"])
        config = genft_config(opts, data, model_path, work)
        cfg = training.validate(training.FinetuneConfig(**config))
        examples, trunc = build_shared_examples(cfg, log)
        (work / "examples.json").write_text(json.dumps(examples))
        log(f"{len(examples)} examples ({trunc['tokens']} tokens, longest {trunc['longest']}); arms: {', '.join(arms)}")

        peaks = machine_peaks(opts["threads"], dtype=opts.get("dtype", "float32"))
        log(f"machine: {peaks['flops'] / 1e9:.0f} GFLOP/s {peak_label(peaks)} matmul, {peaks['bandwidth'] / 1e9:.1f} GB/s "
            f"read ({opts['threads']} threads)")
        load_before = os.getloadavg()
        started = time.time()

        def spec_for(arm: str, tag: str, profile: bool = False) -> dict:
            return arm_spec(opts, config, model_path, work, arm, tag, profile)

        runs = _timed_runs(arms, opts, spec_for, work, log)
        load_after = os.getloadavg()
        total = time.time() - started

        summary, failures = summarize(runs, peaks, opts, trunc)
        ratio = None
        if "genft" in summary and "trainer" in summary:
            ratio = summary["genft"]["tokens_per_s"] / summary["trainer"]["tokens_per_s"]
        met = ratio is not None and ratio >= 1.0
        profiles = {}
        for arm in dict.fromkeys(a for pair in profile_pairs(summary, opts["profile"]) for a in pair):
            log(f"profiling {arm} (one more run under torch.profiler)")
            profiles[arm] = _spawn(spec_for(arm, f"{arm}-profile", profile=True), work, opts["threads"], log)
        return {"opts": opts, "data": data, "model_path": model_path, "examples": len(examples), "truncation": trunc,
                "peaks": peaks, "load_before": load_before, "load_after": load_after, "wall_s": total,
                "runs": runs, "summary": summary, "failures": failures, "ratio": ratio, "met": met,
                "profiles": {a: {"profile": p.get("profile"), "train_s": p["train_s"]} for a, p in profiles.items()}}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def genft_config(opts: dict, data: dict, model_path: str, work: Path) -> dict:
    """genft.training.FinetuneConfig's fields for the benchmark's recipe: what the genft arms train with and
    what the shared examples are built from (data: prepare_data's; the output under `work`)."""
    return dict(
        task=opts["task"], dataset=data["dataset"], train_size=data["train_size"], train_limit=opts["train_limit"],
        data_dir=data["root"], model_name_or_path=model_path, output_dir=str(work / "check"),
        use_peft=opts["lora"], lora_r=opts["lora_r"], lora_alpha=opts["lora_alpha"],
        lora_dropout=opts["lora_dropout"], lora_target_modules=["all-linear"] if opts["lora"] else None,
        learning_rate=opts["learning_rate"], max_steps=opts["steps"],
        per_device_train_batch_size=opts["batch_size"], gradient_accumulation_steps=1,
        lr_scheduler_type="linear", warmup_steps=0, weight_decay=0.0, max_length=opts["max_length"],
        seed=opts["seed"], logging_steps=1, save_steps=opts["steps"], torch_threads=opts["threads"],
        bf16=True if opts.get("dtype") == "bfloat16" else None,
    )


def arm_spec(opts: dict, config: dict, model_path: str, work: Path, arm: str, tag: str,
             profile: bool = False) -> dict:
    """The spec of one run of `arm` (what its process reads: finetune_arms.worker), its output in work/`tag`;
    config: genft_config's fields, which the genft arms train with (genft-padded with padding_free false)."""
    out = work / tag
    return {"arm": arm, "tag": tag, "threads": opts["threads"], "model_path": model_path,
            "examples": str(work / "examples.json"), "output_dir": str(out), "lora": opts["lora"],
            "lora_r": opts["lora_r"], "lora_alpha": opts["lora_alpha"], "lora_dropout": opts["lora_dropout"],
            "learning_rate": opts["learning_rate"], "steps": opts["steps"], "batch_size": opts["batch_size"],
            "seed": opts["seed"], "save_steps": opts["steps"], "profile": profile,
            "bf16": opts.get("dtype") == "bfloat16",
            "genft_config": dict(config, output_dir=str(out), padding_free=arm != "genft-padded",
                                 **PRECISION_ARMS.get(arm, {}))}


def _timed_runs(arms: list[str], opts: dict, spec_for, work: Path, log) -> dict[str, list[dict]]:
    """Every arm's opts['reps'] runs, each in a fresh process, the arms' order rotated each round: {arm: its
    records}.  spec_for(arm, tag): a run's spec."""
    runs: dict[str, list[dict]] = {a: [] for a in arms}
    for rep in range(opts["reps"]):
        for arm in rotated(arms, rep):
            r = _spawn(spec_for(arm, f"{arm}-{rep}"), work, opts["threads"], log)
            runs[arm].append(r)
            tok = sum(b["input"] for b in r["batches"])
            log(f"run {rep + 1} {arm}: train() {r['train_s']:.1f}s, {tok / r['train_s']:.0f} tok/s, "
                f"first loss {r['losses'][0]:.4f}, peak RSS {r['rss_train_mib']:.0f} MiB")
    return runs


def summarize(runs: dict, peaks: dict, opts: dict, trunc: dict) -> tuple[dict, list[str]]:
    """({arm: its medians and counts (`_arm_summary`)}, the checks' failures): every arm processed the same
    input and target tokens in the same batches and optimizer steps, in every run; the genft arms' manifests
    agree with what was counted (`_manifest_checks`); the arms ran with the same settings and trainable
    parameters; each arm's first-step loss is within opts['tol'] of trainer's (set as `first_loss_diff`)."""
    failures: list[str] = []
    summary = {}
    ref_counts = None
    for arm, rs in runs.items():
        counts = [(sum(b["input"] for b in r["batches"]), sum(b["target"] for b in r["batches"]),
                   len(r["batches"])) for r in rs]
        if len(set(counts)) != 1:
            failures.append(f"{arm}: its runs processed different token counts {sorted(set(counts))}")
        n_in, n_tgt, n_batches = counts[0]
        if ref_counts is None:
            ref_counts = (arm, counts[0])
        elif counts[0] != ref_counts[1]:
            failures.append(f"{arm} processed {n_in} input / {n_tgt} target tokens in {n_batches} batches, "
                            f"{ref_counts[0]} {ref_counts[1][0]} / {ref_counts[1][1]} in {ref_counts[1][2]}")
        if any(r["global_steps"] != opts["steps"] for r in rs):
            failures.append(f"{arm}: ran {[r['global_steps'] for r in rs]} optimizer steps, not {opts['steps']}")
        summary[arm] = _arm_summary(rs, counts[0], peaks, opts)
        if arm in GENFT_ARMS:
            _manifest_checks(arm, rs, summary[arm], trunc, failures)
    precision = [a for a in summary if a in PRECISION_ARMS]
    for key in ("activation_checkpointing", "torch_threads", "optim") + (() if precision else ("bf16",)):
        if len({s[key] for s in summary.values()}) > 1:
            failures.append(f"the arms ran with different {key}: " + ", ".join(f"{a} {s[key]}" for a, s in summary.items()))
    if len({s["sizes"]["trainable"] for s in summary.values()}) > 1:
        failures.append("the arms train different numbers of parameters: "
                        + ", ".join(f"{a} {s['sizes']['trainable']}" for a, s in summary.items()))
    if "trainer" in summary:
        ref = summary["trainer"]["first_loss"]
        for arm in [a for a in summary if a != "trainer"]:
            d = abs(summary[arm]["first_loss"] - ref)
            summary[arm]["first_loss_diff"] = d
            if d > opts["tol"]:
                failures.append(f"first-step loss of {arm} {summary[arm]['first_loss']:.6f} differs from trainer's "
                                f"{ref:.6f} by {d:.2e} > --tol {opts['tol']:g}")
    if "genft-fp32" in summary:  # the same first step (LoRA's B at zero) in another precision: within --tol relative
        ref = summary["genft-fp32"]["first_loss"]
        for arm in [a for a in precision if a != "genft-fp32"]:
            d = abs(summary[arm]["first_loss"] - ref)
            summary[arm]["first_loss_diff"] = d
            if d > opts["tol"] * max(1.0, abs(ref)):
                failures.append(f"first-step loss of {arm} {summary[arm]['first_loss']:.6f} differs from genft-fp32's "
                                f"{ref:.6f} by {d:.2e}, more than --tol {opts['tol']:g} relative")
    return summary, failures


def _arm_summary(rs: list[dict], counts: tuple[int, int, int], peaks: dict, opts: dict) -> dict:
    """One arm's figures from its runs' records: medians of the times and RSS, the first run's counts (counts:
    its input tokens, target tokens, batches), losses and settings, its FLOPs and their share of the peak."""
    n_in, n_tgt, n_batches = counts
    sizes = rs[0]["sizes"]
    train_s = statistics.median(r["train_s"] for r in rs)
    step_s = statistics.median(sum(r["step_s"]) for r in rs)
    flops = flops_per_run(sizes, n_in, n_tgt, opts["lora"])
    positions = rs[0]["batches"]
    return {
        "tokens_per_s": n_in / train_s, "tokens_per_s_steps": n_in / step_s, "train_s": [r["train_s"] for r in rs],
        "train_s_median": train_s, "step_s_median": step_s, "input_tokens": n_in, "target_tokens": n_tgt,
        "positions": sum(b["positions"] for b in positions), "batches": n_batches,
        "rss_train_mib": statistics.median(r["rss_train_mib"] for r in rs),
        "rss_end_mib": statistics.median(r["rss_end_mib"] for r in rs),
        "first_loss": rs[0]["losses"][0], "first_losses": [r["losses"][0] for r in rs],
        "final_loss": rs[0]["losses"][-1], "final_losses": [r["losses"][-1] for r in rs],
        "flops": flops, "matmul_share": flops / train_s / peaks["flops"],
        "matmul_share_steps": flops / step_s / peaks["flops"], "sizes": sizes,
        "attn_implementation": rs[0]["attn_implementation"], "optim": rs[0]["optim"],
        "activation_checkpointing": rs[0]["activation_checkpointing"], "torch_threads": rs[0]["torch_threads"],
        "bf16": rs[0]["bf16"],
    }


def _manifest_checks(arm: str, rs: list[dict], s: dict, trunc: dict, failures: list[str]) -> None:
    """A genft arm's own manifest: its batching, lm_head and tokens/s added to its summary `s`; a failure where
    it batched otherwise than the arm asks, counted other trained tokens than its batches held, or built other
    examples than the shared ones (trunc: build_shared_examples's counts)."""
    m = [r["manifest"] for r in rs]
    n_in = s["input_tokens"]
    s["batching"] = m[0]["batching"]
    s["lm_head"] = m[0]["lm_head"]
    s["precision"], s["lora_dropout"], s["loss_curve"] = m[0]["precision"], m[0]["lora_dropout"], m[0]["loss_curve"]
    if m[0]["batching"]["padding_free"] != (arm != "genft-padded"):
        failures.append(f"{arm}: trained with {'padding-free' if m[0]['batching']['padding_free'] else 'padded'} "
                        f"batches ({m[0]['batching']['reason']})")
    s["manifest_tokens_per_s"] = statistics.median(x["tokens_per_s"] for x in m)
    s["manifest_trained_tokens"] = m[0]["trained_tokens"]
    if any(x["trained_tokens"] != n_in for x in m):
        failures.append(f"{arm}: the manifest's trained_tokens {[x['trained_tokens'] for x in m]} differ from "
                        f"the {n_in} input tokens counted in its batches")
    if m[0]["truncation_tokens"] != trunc["tokens"] or m[0]["examples"] != trunc["examples"]:
        failures.append(f"{arm} built other examples than the shared ones ({m[0]['examples']} examples, "
                        f"{m[0]['truncation_tokens']} tokens vs {trunc['examples']} / {trunc['tokens']})")


def profile_pairs(summary: dict, mode: str) -> list[tuple[str, str]]:
    """The (genft arm, trainer arm) pairs to profile: "always" every pair that ran, "auto" those where the
    genft arm is the slower one, "never" none."""
    ran = [(a, b) for a, b in PAIRS if a in summary and b in summary]
    if mode == "always":
        return ran
    if mode == "auto":
        return [(a, b) for a, b in ran if summary[a]["tokens_per_s"] < summary[b]["tokens_per_s"]]
    return []


