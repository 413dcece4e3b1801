"""The planner's edge: everything a plan depends on, read once per run step -- the device, the data sets'
hashes and sizes, the harness files' hashes, each run's training data hashes and output folder, the models'
identities and dtypes (`observe`), and the store (`snapshot.read`).  Reads files; with provision=True it may
prepare or download a base model (`identity.base_identity`).  `read_plan` is the three in one call.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

from .. import data as gdata
from ..files import read_json_or_none, sha256_cached
from ..harness_names import task_name, tasks_dir
from ..prompts import get_task
from ..training import (RUN_FILE, ConfigError, ManifestError, config_hash, foreign_files, load_training_items,
                        read_manifest)
from ..training.steps import step_dir
from . import estimate, planning, snapshot
from .identity import base_identity, device_identity, effective_dtype, resolve_device
from .planning import ModelFacts, PlanInputs, RunFacts, TestSetFacts
from .schema import SuiteError
from .spec import Suite


def read_plan(suite: Suite, provision: bool = False, fingerprints: dict | None = None) -> planning.Plan:
    """The plan of the suite as things are now: `observe`, `snapshot.read`, `planning.plan`."""
    return planning.plan(suite, observe(suite, provision, fingerprints), snapshot.read(suite.output))


def observe(suite: Suite, provision: bool = False, fingerprints: dict | None = None) -> PlanInputs:
    """What the planner needs to know of the world.  Reads data and model files (for their hashes); loads no
    model; writes nothing (`fingerprints`, a cache the caller may save, is filled); prepares or downloads a
    base model only with provision=True."""
    missing = missing_datasets(suite)
    check_protocol(suite)
    cache = fingerprints if fingerprints is not None else {}
    device = resolve_device(suite.eval.device)
    bases = {}
    for mid, m in suite.models.items():
        path, ident = base_identity(m.model, cache, provision)
        bases[mid] = ModelFacts(path=path, identity=ident, dtype=effective_dtype(path, m.dtype))
    runs, dtypes = {}, {}
    for spec in suite.runs:
        for run, seed in spec.run_names():
            runs[run] = _run_facts(suite, spec, run, seed, missing)
            folders = [suite.checkpoints_dir / run] + [
                step_dir(suite.checkpoints_dir / run, s) for s in runs[run].config.step_models or []]
            dtypes.update({str(f): effective_dtype(str(f), suite.models[spec.base].dtype) for f in folders})
    test_sets, harness = {}, {}
    for task, ds in suite.eval.test_sets:
        folder = gdata.dataset_dir(task, ds, suite.data_dir)
        ok = f"{task}/{ds}" not in missing and (folder / "demos.jsonl").is_file()
        shas = (sha256_cached(folder / "test.jsonl"), sha256_cached(folder / "demos.jsonl")) if ok else None
        test_sets[(task, ds)] = TestSetFacts(shas=shas, count=test_count(task, ds, suite.data_dir))
        if ok:
            for prompt in sorted({p for which in suite.eval.prompts.values() for p in which[task]}):
                harness[(task, ds, prompt)] = harness_hash(task, ds, prompt)
    return PlanInputs(device=device, device_id=device_identity(device), missing=tuple(missing),
                      test_sets=test_sets, harness=harness,
                      study_tokens=study_tokens_hash() if suite.protocol == "study" else None,
                      bases=bases, runs=runs, dtypes=dtypes)


def _run_facts(suite: Suite, spec, run: str, seed: int, missing: list[str]) -> RunFacts:
    out_dir = suite.checkpoints_dir / run
    cfg = planning.finetune_config(suite, spec, seed, out_dir)
    chash = rhash = None
    if f"{cfg.task}/{cfg.dataset}" not in missing:
        try:
            _, _, files, _ = load_training_items(cfg)
        except (ConfigError, gdata.DataError) as e:
            raise SuiteError(f"{suite.path}: finetune[{spec.index}] ({spec.name}): {e}") from None
        chash, rhash = config_hash(cfg, files), config_hash(cfg, files, seed=False)
    try:
        man = read_manifest(out_dir)
    except ManifestError as e:
        raise SuiteError(f"{suite.path}: finetune[{spec.index}] ({spec.name}): {e}") from None
    run_file = None if man else read_json_or_none(out_dir / RUN_FILE)
    started = man.config_hash if man else (run_file.get("config_hash") or "unknown") \
        if isinstance(run_file, dict) else None
    occupied = out_dir.is_dir() and any(out_dir.iterdir())
    return RunFacts(config=cfg, recipe_hash=chash, replicate_hash=rhash, manifest=man, started=started,
                    occupied=occupied, foreign=tuple(p.name for p in foreign_files(out_dir)),
                    tokens_est=estimate.training_tokens(cfg, suite.data_dir))


# ---------------------------------------------------------------- data and harness files


def harness_hash(task: str, dataset: str, prompt: int) -> str:
    """The hash of the files that determine a cell's prompts and scores: its task YAML, the templates it
    includes, the loader/scorer (harness_tasks/utils.py) and the genft modules they render and score with."""
    root = tasks_dir()
    kind = get_task(task).kind
    here = Path(__file__).resolve().parents[1]
    files = [root / f"_genft_{kind}.yaml", root / task / f"_{task}.yaml",
             root / task / f"{task_name(task, dataset, prompt)}.yaml", root / "utils.py",
             here / "metrics.py", here / "prompts.py"]
    h = hashlib.sha256()
    for p in files:
        h.update(p.name.encode())
        h.update((sha256_cached(p) if p.is_file() else "missing").encode())
    return h.hexdigest()


def study_tokens_hash() -> str:
    """The hash of the modules that build a study-protocol cell's token ids (genft.study_tokens, protocol_lm and
    data/protocol.py): part of study-protocol cells' keys only, so that a change to the study's tokens re-runs them."""
    here = Path(__file__).resolve().parents[1]
    h = hashlib.sha256()
    for p in (here / "study_tokens.py", here / "protocol_lm.py", here / "data" / "protocol.py"):
        h.update(p.name.encode())
        h.update(sha256_cached(p).encode())
    return h.hexdigest()


def test_count(task: str, dataset: str, root: Path) -> int | None:
    folder = gdata.dataset_dir(task, dataset, root)
    if (folder / "meta.json").is_file():
        try:
            return int(gdata.read_meta(task, dataset, root)["files"]["test"]["count"])
        except (KeyError, ValueError, TypeError, gdata.DataError):
            pass
    path = folder / "test.jsonl"
    if path.is_file():
        return sum(1 for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
    return None


def missing_datasets(suite: Suite) -> list[str]:
    return [f"{t}/{d}" for t, d in planning.needed_datasets(suite)
            if not (gdata.dataset_dir(t, d, suite.data_dir) / "test.jsonl").is_file()]


def check_protocol(suite: Suite) -> None:
    """Every data set the suite reads was written under the suite's protocol (data.protocol)."""
    for t, d in planning.needed_datasets(suite):
        if (gdata.dataset_dir(t, d, suite.data_dir) / "test.jsonl").is_file():
            have = gdata.read_protocol(t, d, suite.data_dir)
            if have != suite.protocol:
                raise SuiteError(f"{suite.path}: data.protocol is {suite.protocol} but {t}/{d} in {suite.data_dir} "
                                 f"was written under the {have} protocol; import the study's data with "
                                 f"`genft data import-study --protocol {suite.protocol} --data-dir DIR` into another "
                                 "folder and point data.data_dir at it")
