"""Model and device identities for cell keys: the device kind, the effective dtype, the fingerprint of a base
model's weights (or a hub id's cached revision), and where bf16 may run.  `observe` reads these for the planner."""
from __future__ import annotations

from pathlib import Path

from ..files import read_json_or_none, sha256_json
from ..models import (MARKER, download_hub_model, genft_home, hub_cache, hub_snapshot, parse_ref, prepare,
                      weights_fingerprint)
from ..precision import PrecisionError, check_cpu_bf16, check_eval_dtype
from .schema import SuiteError
from .spec import Suite


def resolve_device(setting: str) -> str:
    if setting != "auto":
        return setting
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def device_identity(device: str) -> str:
    """The device part of a cell key: its kind, and for a GPU its model (kernels differ between GPUs)."""
    if not device.startswith("cuda"):
        return device
    import torch

    index = int(device.split(":")[1]) if ":" in device else 0
    return f"cuda:{torch.cuda.get_device_name(index)}" if torch.cuda.is_available() else device


def check_precision(suite: Suite, device: str) -> None:
    """bf16 where this machine would run it: a model's `dtype: bfloat16` evaluated on a CPU, or a run's
    `trainer: {bf16: true}` trained on a CPU (no GPU here), without native bf16 is a SuiteError naming the key
    (genft.precision), raised before anything is written."""
    import torch

    try:
        for mid, m in suite.models.items():
            check_eval_dtype(device, m.dtype, f"models.{mid}.dtype")
        for spec in suite.runs:
            if spec.values.get("bf16") and not torch.cuda.is_available():
                check_cpu_bf16(f"finetune[{spec.index}] ({spec.name}): bf16 (its trainer's or recipe's)")
    except PrecisionError as e:
        raise SuiteError(f"{suite.path}: {e}") from None


def effective_dtype(path: str, dtype: str | None) -> str | None:
    """The dtype the weights are evaluated in: the suite's, else (None or auto) the checkpoint's own from its
    config.json (a folder's, or a hub id's cached snapshot's: what transformers' dtype='auto' loads), else
    float32; None while the config is not local."""
    if dtype not in (None, "auto"):
        return dtype
    cfg = Path(path) / "config.json"
    if not cfg.is_file():
        snapshot = hub_snapshot(path)
        cfg = snapshot / "config.json" if snapshot is not None else cfg
    if not cfg.is_file():
        return None
    conf = read_json_or_none(cfg) or {}
    return str(conf.get("dtype") or conf.get("torch_dtype") or "float32")


def _fingerprint(folder: Path, cache: dict) -> str:
    """weights_fingerprint, remembered in the suite's cache by the folder's file names, sizes and mtimes."""
    stat = sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in folder.iterdir()
                  if p.is_file() and p.name != MARKER)
    sig = sha256_json([str(folder.resolve()), stat])
    if sig not in cache:
        cache[sig] = weights_fingerprint(folder)
    return cache[sig]


def base_identity(ref: str, cache: dict, provision: bool) -> tuple[str, dict | None]:
    """(what the backend loads, identity) of a model the suite did not train.  A genft name is provisioned
    only with provision=True; a hub id is identified by its id and cached revision (never downloaded here)."""
    kind = parse_ref(ref).kind  # the suite's references passed this rule when it was loaded
    if kind == "name":
        folder = genft_home() / "models" / ref
        if not (folder / MARKER).is_file():
            if not provision:
                return str(folder), None
            folder = prepare(ref)
        return str(folder), {"weights": _fingerprint(folder, cache)}
    if kind == "folder":
        return ref, {"weights": _fingerprint(Path(ref), cache)}
    ident: dict = {"hub": ref}
    if provision and hub_snapshot(ref) is None:
        download_hub_model(ref)
    refs = hub_cache() / ("models--" + ref.replace("/", "--")) / "refs" / "main"
    if refs.is_file():
        ident["revision"] = refs.read_text().strip()
    return ref, ident
