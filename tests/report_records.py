"""Cell records for the report tests, built the way the suite builds them (per-item predictions and golds ->
items pred_/predfirst_/gold_, outputs), written with the real store and read back strictly."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from genft.files import sha256_json
from genft.metrics import GOLD, PRED, PREDFIRST, label_metric
from genft.prompts import TASKS
from genft.suite import store
from genft.suite.store import CellRecord, CheckpointInfo, FinetuneInfo, Provenance
from genft.training import write_manifest

BASE = "tiny-base"


def ft(task, dataset, size=2000, icl=0, seed=42, method="full", wd=1e-4, demos="fixed", lr=2e-5, name=None):
    """A fine-tuned checkpoint; `lr` stands for any hyper-parameter: it changes the recipe, not the replicate."""
    recipe = {"task": task, "dataset": dataset, "size": size, "icl": icl, "method": method, "demos": demos, "lr": lr}
    name = name or f"{task}-{dataset}-{size}" + (f"-icl{icl}" if icl else "") + ("" if lr == 2e-5 else f"-lr{lr}")
    return FinetuneInfo(run=f"{name}-s{seed}", name=name, task=task, dataset=dataset, train_size=size, train_limit=None,
                        method=method, icl_shots=icl, icl_demos=demos if icl else None, seed=seed, num_processes=1,
                        recipe_hash=sha256_json({**recipe, "seed": seed}), replicate_hash=sha256_json(recipe),
                        weights_sha256=sha256_json([name, seed]), weight_deviation=wd)


def record(task, dataset, domain, finetune=None, prompt=1, shots=0, demo_seed=None, correct=None, preds=None,
           gold=None, full_preds=None, rouge=None, outputs=None, suite="synth", doc_ids=None,
           demo_targets=None) -> CellRecord:
    """One cell.  Classification: `correct` (0/1 per item) or explicit gold/preds (first-token rule) and
    full_preds (full-label rule); generation: `rouge` per item and optionally the outputs."""
    spec = TASKS[task]
    model = finetune.run if finetune else BASE
    if spec.is_classification:
        labels = spec.labels
        if gold is None:
            gold = [labels[i % len(labels)] for i in range(len(correct))]
            preds = [g if c else labels[(labels.index(g) + 1) % len(labels)] for g, c in zip(gold, correct)]
        full_preds = full_preds or preds
        items = {"acc_first": [float(p == g) for p, g in zip(preds, gold)],
                 "acc": [float(p == g) for p, g in zip(full_preds, gold)]}
        items["acc_norm"] = list(items["acc"])
        for lab in labels:
            items[label_metric(PRED, lab)] = [float(p == lab) for p in full_preds]
            items[label_metric(PREDFIRST, lab)] = [float(p == lab) for p in preds]
            items[label_metric(GOLD, lab)] = [float(g == lab) for g in gold]
        majority = max(gold.count(lab) for lab in labels) / len(gold)
        outputs = list(preds)
    else:
        rouge = [float(x) for x in rouge]
        items = {"rouge1": list(rouge), "rouge2": list(rouge), "rougeL": list(rouge)}
        majority = None
        outputs = outputs or [f"output {i} scoring {v:.6f}" for i, v in enumerate(rouge)]
    n = len(outputs)
    material = {"suite": suite, "protocol": "clean", "model": model, "task": task, "dataset": dataset, "prompt": prompt, "shots": shots,
                "demo_seed": demo_seed, "n": n}
    identity = {"weights": finetune.weights_sha256 if finetune else "base-weights"}
    return CellRecord(
        key=store.key_of(material), suite=suite, protocol="clean",
        checkpoint=CheckpointInfo(id=model, kind="finetuned" if finetune else "base", base=BASE,
                                  path=f"/ckpt/{model}", identity=identity),
        finetune=finetune, task=task, dataset=dataset, domain=domain, prompt=prompt, shots=shots, limit=None,
        demo_seed=demo_seed, n=n, doc_ids=list(doc_ids or range(n)),
        metrics={k: float(np.mean(v)) for k, v in items.items()}, items=items, outputs=outputs,
        demo_targets=demo_targets if demo_targets is not None else ([] if shots == 0 else None),
        majority_rate=majority, wall_s=2.0,
        provenance=Provenance(genft="0.1.0", lm_eval="0.4.13", torch="2.13.0", transformers="5.24.0",
                              backend="genft-hf", batch_size=8, device="cpu", dtype="float32", hostname="box",
                              time="2025-01-01T00:00:00+00:00", wall_s_shared_by=1, data_sha256=f"sha-{dataset}",
                              demos_sha256=None, harness_hash="h1", target_delimiter=""),
        material=material)


def stored(output: Path, records: list[CellRecord], manifests: dict | None = None) -> Path:
    """Write the records (and manifests) into a suite output folder with the real store; return the folder."""
    for r in records:
        store.write_cell(output, r, b"{}\n")
    store.write_index(output, {"suite": records[0].suite if records else "t",
                               "cells": [{"key": r.key, "done": True} for r in records]})
    for run, man in (manifests or {}).items():
        write_manifest(output / "checkpoints" / run, man)
    return output


def roundtrip(tmp_path: Path, records: list[CellRecord]) -> list[CellRecord]:
    """The records as the report reads them: written by the store, read back by `load_finished`."""
    out = tmp_path / f"out-{len(list(tmp_path.glob('out-*')))}"
    return store.load_finished(stored(out, records))[0]


def ok(n, k):
    """n items, the first k correct."""
    return [1] * k + [0] * (n - k)
