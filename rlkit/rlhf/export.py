"""``rlkit rlhf-export RUN OUT [--merge]``: an RLHF run's policy as a plain transformers folder with a model card.

The folder holds what ``AutoModelForCausalLM.from_pretrained(OUT)`` needs (the full weights, or with LoRA
and no ``--merge`` the adapter, which transformers loads onto its base when peft is installed), the
tokenizer (with its chat template), a generation_config.json with the run's own sampling settings
(rlkit.rlhf.rollout.sampling_config: what the policy was trained to sample with), the value head, the
run's rlhf_config.json, and README.md: base model, data, rewards, KL, initial and final metrics, samples.
"""

from __future__ import annotations

import json
import os

import torch

from rlkit.rlhf.policy import CONFIG_FILE, VALUE_HEAD_FILE


def _read_json(path: str) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError):
        return {}


def _find_source(run: str) -> tuple[str, str, str]:
    """(run folder, source folder, kind): the final save_pretrained folder 'final', else the newest
    resumable checkpoint 'resumable'."""
    from rlkit.checkpoint import resolve_checkpoint

    if not os.path.exists(run):
        from rlkit.errors import CheckpointError

        raise CheckpointError(f"run folder {run!r} does not exist")
    if os.path.isfile(os.path.join(run, CONFIG_FILE)):  # the checkpoint folder itself
        return os.path.dirname(os.path.abspath(run)), run, "final"
    final = os.path.join(run, "checkpoint")
    if os.path.isfile(os.path.join(final, CONFIG_FILE)):
        return os.path.abspath(run), final, "final"
    folder = resolve_checkpoint(run)  # a CheckpointError names what is missing
    return os.path.dirname(os.path.dirname(os.path.abspath(folder))), folder, "resumable"


def _load(source: str, kind: str):
    """(lm, tokenizer, value-head tensors, run config dict) from either kind of folder."""
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if kind == "final":
        config = _read_json(os.path.join(source, CONFIG_FILE))
        tokenizer = AutoTokenizer.from_pretrained(source)
        from rlkit.rlhf.policy import checked_model_source, loading_model, torch_dtype

        dtype = torch_dtype(config.get("dtype", "auto"))  # the weights the run trained and evaluated, not float32
        if config.get("lora"):
            from peft import PeftModel

            base_path = checked_model_source(config["policy_resolved"], "the run's base policy (policy_resolved)")
            with loading_model("the run's base policy (policy_resolved)", base_path):
                base = AutoModelForCausalLM.from_pretrained(base_path, dtype=dtype)
            lm = PeftModel.from_pretrained(base, source)
        else:
            lm = AutoModelForCausalLM.from_pretrained(source, dtype=dtype)
        head_file = os.path.join(source, VALUE_HEAD_FILE)  # absent for the critic-free estimators
        head = load_file(head_file) if os.path.isfile(head_file) else {}
        return lm, tokenizer, head, config
    from rlkit.checkpoint import load_checkpoint
    from rlkit.rlhf.config import RLHFConfig
    from rlkit.rlhf.policy import load_policy

    tensors, state = load_checkpoint(source)
    if state.get("variant") != "ppo_lm":
        raise ValueError(f"{source} is not an RLHF checkpoint (variant {state.get('variant', 'ppo')!r})")
    known = set(RLHFConfig.__dataclass_fields__)
    cfg = RLHFConfig(**{k: v for k, v in state["config"].items() if k in known})
    policy, tokenizer = load_policy(state["policy_path"], cfg.lora, cfg.lora_r, cfg.lora_alpha, cfg.lora_target_modules,
                                    dtype=cfg.dtype, value_head=cfg.uses_value_head)
    params = {name: p for name, p in policy.named_parameters() if p.requires_grad}
    with torch.no_grad():
        for name, value in tensors["model"].items():
            params[name].copy_(value)
    head = {k.removeprefix("value_head."): v for k, v in tensors["model"].items() if k.startswith("value_head.")}
    return policy.lm, tokenizer, head, {**cfg.to_dict(), "policy_resolved": state["policy_path"]}


def export_run(run: str, out: str, merge: bool = False) -> dict:
    """Write OUT (see the module docstring); returns {'out', 'source', 'kind'}."""
    from safetensors.torch import save_file

    from rlkit.rlhf.rollout import sampling_config

    run_dir, source, source_kind = _find_source(run)
    if os.path.isdir(out) and os.listdir(out):
        from rlkit.errors import ExportError  # exit code 6, like `rlkit export` over a folder it did not write

        raise ExportError(f"output folder {out!r} exists and is not empty; nothing was written: give a new or empty folder")
    lm, tokenizer, head, config = _load(source, source_kind)
    is_lora = hasattr(lm, "merge_and_unload")
    if is_lora and merge:
        lm = lm.merge_and_unload()
    os.makedirs(out, exist_ok=True)
    lm.save_pretrained(out)
    tokenizer.save_pretrained(out)
    generation = sampling_config(tokenizer, config.get("temperature", 1.0), config.get("max_new_tokens", 16))
    generation.save_pretrained(out)
    if head:  # the critic-free estimators have none
        save_file({k: v.detach().cpu().contiguous() for k, v in head.items()}, os.path.join(out, VALUE_HEAD_FILE))
    with open(os.path.join(out, CONFIG_FILE), "w") as f:
        json.dump(config, f, indent=2)
    kind = ("the policy with its LoRA adapter merged" if is_lora and merge else
            "the LoRA adapter (loads onto its base with peft installed; --merge for full weights)" if is_lora else
            "the fine-tuned policy")
    with open(os.path.join(out, "README.md"), "w") as f:
        f.write(model_card(run_dir, config, kind, source))
    return {"out": os.path.abspath(out), "source": source, "kind": kind}


def _method(config: dict) -> str:
    """'PPO' (gae), or the critic-free estimator and its group size, e.g. 'RLOO (4 responses per prompt)'."""
    estimator = config.get("advantage_estimator", "gae")  # configs before the estimators: PPO
    if estimator == "gae":
        return "PPO"
    names = {"rloo": "RLOO", "grpo": "GRPO", "dr_grpo": "Dr. GRPO"}
    from rlkit.rlhf.config import DEFAULT_GROUP_SIZE

    k = config.get("samples_per_prompt") or DEFAULT_GROUP_SIZE  # 0: the default group size
    return f"{names.get(estimator, estimator)} ({k} responses per prompt)"


def model_card(run_dir: str, config: dict, kind: str, source: str) -> str:
    """README.md of an export: base model, data, rewards, KL, final metrics, a few samples."""
    run_config = _read_json(os.path.join(run_dir, "config.json"))
    summary = _read_json(os.path.join(run_dir, "summary.json"))
    initial, final = summary.get("initial", {}), summary.get("final", {})
    task = config.get("task", "?")
    data = run_config.get("prompt_data", {})
    lines = [
        f"# RLHF policy ({task}), trained with rlkit {_method(config)}",
        "",
        f"This folder is {kind}, exported from `{source}`.",
        "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "model = AutoModelForCausalLM.from_pretrained(PATH)  # PATH: this folder",
        "tokenizer = AutoTokenizer.from_pretrained(PATH)",
        "out = model.generate(**tokenizer([\"...\"], return_tensors=\"pt\"))  # generation_config.json: the run's sampling",
        "```",
        "",
        "| | |",
        "|-|-|",
        f"| base model | `{config.get('policy_resolved') or config.get('policy') or '?'}` |",
        f"| LoRA | {'r ' + str(config.get('lora_r')) + ', alpha ' + str(config.get('lora_alpha')) if config.get('lora') else 'no (full fine-tune)'} |",
        f"| prompts | {('`' + config['prompts'] + '`') if config.get('prompts') else 'the built-in ' + task + ' task'}"
        + (f" ({data.get('train')} for training, {data.get('held_out')} held out from {data.get('held_out_from')}; "
           f"{data.get('dropped_train', 0)} + {data.get('dropped_held_out', 0)} dropped by max_prompt_tokens)" if data else "") + " |",
        f"| preferences | {('`' + config['preferences'] + '`') if config.get('preferences') else '-'} |",
        f"| reward | {run_config.get('reward_resolved', config.get('reward', '?'))} |",
        f"| KL | {config.get('kl_mode')}, beta {config.get('kl_coef')}{' (adaptive, target ' + str(config.get('kl_target')) + ')' if config.get('adaptive_kl') else ''} |",
        f"| sampling | temperature {config.get('temperature')}, top_k 0, top_p 1.0, max_new_tokens {config.get('max_new_tokens')} |",
        f"| updates | {config.get('num_updates')} x {config.get('batch_size')} responses, {config.get('ppo_epochs')} PPO epochs, lr {config.get('learning_rate')} ({config.get('lr_schedule', 'constant')}) |",
        f"| dtype | {config.get('dtype', 'auto')} |",
        "",
    ]
    if final:
        lines += ["## Evaluation (held-out prompts, fixed seed)", "", "| metric | initial | final |", "|-|-|-|"]
        for key in final:
            a, b = initial.get(key), final[key]
            if isinstance(b, (int, float)):
                lines.append(f"| {key} | {a:.4g} | {b:.4g} |" if isinstance(a, (int, float)) else f"| {key} | | {b:.4g} |")
        lines.append("")
    else:
        lines += ["The run did not finish (no summary.json): exported from its latest resumable checkpoint.", ""]
    samples = summary.get("final_samples", [])[:5]
    if samples:
        lines += ["## Samples (final evaluation)", "", "| prompt | response | score |", "|-|-|-|"]
        for row in samples:
            prompt = str(row["prompt"]).replace("\n", " ").replace("|", "\\|")
            response = str(row["response"]).replace("\n", " ").replace("|", "\\|")
            lines.append(f"| {prompt} | {response} | {row['score']:.3f} |")
        lines.append("")
    lines += [f"Run folder: `{run_dir}` (config.json, metrics.jsonl, summary.json, TensorBoard events).", ""]
    from rlkit.modelcard import rlhf_front_matter  # the YAML metadata a model hub reads

    head = rlhf_front_matter(task, final, summary.get("final_samples", []), config.get("policy_resolved") or config.get("policy"))
    return head + "\n".join(lines)
