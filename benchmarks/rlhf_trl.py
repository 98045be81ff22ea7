"""An rlkit RLHF recipe trained with TRL 1.16's RLOOTrainer or GRPOTrainer instead of rlkit, for a side-by-side comparison.

    python benchmarks/rlhf_trl.py --recipe rlhf-sentiment --trainer rloo --seed 1 [--samples-per-prompt 2]
                                  [--num-updates 40] [--threads 1] [--artifacts-dir DIR] [--out DIR]

Everything but the algorithm is rlkit's: the RLHFConfig of the recipe, the policy (the same folder, tokenizer and pad
token, dropout off; with ``lora = true`` the recipe's LoRA r / alpha / target modules, dropout 0, else a full
fine-tune), the proxy reward with the EOS trick (no stop string nor EOS within max_new_tokens scores no_eos_score),
plain-text prompts (no chat template), sampling (temperature, top_k 0, top_p 1, max_new_tokens), the episode budget
(num_updates x batch_size completions), Adam (lr, eps 1e-5, no weight decay, constant lr), max_grad_norm, beta =
kl_coef, and the initial / final evaluation (rlkit.rlhf.ppo_lm.evaluate on an rlkit policy into which TRL's trained
weights are copied; reference = the adapter disabled, or the frozen base of a full fine-tune).

Mapping of one rlkit update onto TRL: a generation round of batch_size completions (batch_size / k prompts x
num_generations k), used for num_iterations = ppo_epochs passes of steps_per_generation = num_minibatches optimizer
steps on per_device_train_batch_size = batch_size / num_minibatches completions (TRL shuffles a round once, rlkit
reshuffles every epoch). epsilon = cliprange.

- ``--trainer rloo``: TRL's RLOO: the KL as beta x the summed k1 (logp - ref_logp) subtracted from the sequence reward
  (as rlkit's per-token k1 in the reward), the leave-one-out baseline, the sequence-level ratio. TRL defaults kept: no
  advantage normalisation, truncated completions not masked (they score no_eos_score, the EOS trick).
- ``--trainer grpo``: TRL's GRPO with loss_type "grpo" (each completion's token mean, then the mean over completions:
  rlkit's grpo) and scale_rewards "group"; its KL is a loss, beta x k3 x the importance ratio (TRL's default
  use_bias_correction_kl = True: the gradient of KL(pi || ref); ``--no-bias-correction-kl``: plain k3, rlkit's
  ``kl_mode = "k3_loss"``), where rlkit's recipe puts k1 in the reward. ``--loss-type dr_grpo`` with
  ``--scale-rewards none`` is TRL's Dr. GRPO.

Stop string: rlkit samples max_new_tokens and truncates after the first token whose text contains it; here every such
token is an extra EOS id of the generation config, so TRL stops there and its loss, KL and lengths cover exactly
rlkit's tokens. The reward function still runs rlkit's truncate_responses / truncate_at_stop_string on TRL's
completion ids and counts any disagreement (``stop_mismatch``, expected 0).

metrics.jsonl: one line per update (generation round). ``score`` is the mean proxy score with the EOS trick (before
any KL penalty), ``gold`` the task's gold reward on the same completions (logged only), ``kl`` TRL's logged KL times
the mean completion length (per sequence; RLOO: k1 of the policy before the round's updates, GRPO: its KL loss term
during the round's updates; none at beta 0, where TRL logs none), ``sqrt_kl`` its square root; ``kl_per_token`` is
TRL's raw value.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time

import torch


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", default="rlhf-sentiment", help="an [rlhf] recipe name or .toml path")
    p.add_argument("--trainer", choices=["rloo", "grpo"], default="rloo")
    p.add_argument("--samples-per-prompt", type=int, default=None,
                   help="num_generations k (default: the recipe's samples_per_prompt, else rlkit's default group size)")
    p.add_argument("--loss-type", default="grpo", help="GRPOConfig.loss_type (grpo only)")
    p.add_argument("--scale-rewards", default="group", help="GRPOConfig.scale_rewards (grpo only)")
    p.add_argument("--no-bias-correction-kl", action="store_true",
                   help="GRPOConfig.use_bias_correction_kl = False: plain k3 (grpo only)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--num-updates", type=int, default=None, help="generation rounds of batch_size completions")
    p.add_argument("--threads", type=int, default=1, help="torch threads (the rlkit benchmark run used 1)")
    p.add_argument("--artifacts-dir", default=None, help="the recipe's artifacts_dir (base policy, proxy RM) unless given")
    p.add_argument("--eval-samples", type=int, default=None, help="override eval_samples, for smoke runs")
    p.add_argument("--out", default=None, help="default bench_runs/trl_{trainer}__seed{seed}")
    return p.parse_args()


def main() -> None:
    start = time.time()
    args = parse_args()
    torch.set_num_threads(args.threads)
    from rlkit.rlhf.ppo_lm import return_freed_memory_to_os

    return_freed_memory_to_os()  # the same allocator setting as the rlkit run, so peak RSS compares like for like
    import transformers
    import trl
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        PrinterCallback,
        TrainerCallback,
    )
    from trl import GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer

    from rlkit.config import config_from_dict, read_recipe
    from rlkit.ppo import seed_everything
    from rlkit.rlhf.config import DEFAULT_GROUP_SIZE, RLHFConfig
    from rlkit.rlhf.policy import disable_dropout, ensure_pad_token, load_policy
    from rlkit.rlhf.ppo_lm import (
        evaluate,
        make_reward,
        resolve_policy_path,
        sample_prompts,
        task_module,
    )
    from rlkit.rlhf.rollout import (
        apply_eos_trick,
        truncate_at_stop_string,
        truncate_responses,
    )

    transformers.utils.logging.set_verbosity_error()
    overrides = {"seed": args.seed, "torch_threads": args.threads}
    if args.artifacts_dir is not None:
        overrides["artifacts_dir"] = args.artifacts_dir
    if args.num_updates is not None:
        overrides["num_updates"] = args.num_updates
    if args.eval_samples is not None:
        overrides["eval_samples"] = args.eval_samples
    _, values, src = read_recipe(args.recipe)
    cfg = config_from_dict(RLHFConfig, {**values, **overrides}, src)
    out = args.out or f"bench_runs/trl_{args.trainer}__seed{cfg.seed}"
    k = args.samples_per_prompt or (cfg.group_size if cfg.advantage_estimator != "gae" else DEFAULT_GROUP_SIZE)
    os.makedirs(out, exist_ok=True)

    policy_path = resolve_policy_path(cfg)
    reward_fn, gold, reward_desc = make_reward(cfg, policy_path, torch.device("cpu"), progress=False)
    gold_no_eos = task_module(cfg).GOLD_NO_EOS

    # rlkit's policy (as rlkit starts it): initial evaluation now, final evaluation with TRL's weights copied in
    seed_everything(cfg.seed)
    policy, tokenizer = load_policy(policy_path, lora=cfg.lora, lora_r=cfg.lora_r, lora_alpha=cfg.lora_alpha,
                                    lora_target_modules=cfg.lora_target_modules, value_head=False)
    initial_samples: list[dict] = []
    initial = evaluate(policy, tokenizer, cfg, reward_fn, gold, samples_out=initial_samples)
    print(f"initial: score {initial['score']:+.3f}  gold {initial['gold']:+.3f}  KL {initial['kl_k1']:.3f}", flush=True)

    # TRL's model: the same base, tokenizer and pad token as load_policy; every token containing the stop string is an EOS
    tok = AutoTokenizer.from_pretrained(policy_path)
    lm = AutoModelForCausalLM.from_pretrained(policy_path)
    ensure_pad_token(tok, lm)
    disable_dropout(lm)
    stop_ids = [i for i in range(len(tok)) if cfg.stop_string and cfg.stop_string in tok.decode([i], skip_special_tokens=True)
                and i != tok.eos_token_id]
    lm.generation_config.eos_token_id = [tok.eos_token_id, *stop_ids]
    targets = cfg.lora_target_modules if cfg.lora_target_modules == "all-linear" else [m.strip() for m in cfg.lora_target_modules.split(",")]
    peft_config = (LoraConfig(task_type="CAUSAL_LM", r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=0.0,
                              target_modules=targets) if cfg.lora else None)

    def proxy_reward(prompts, completions, completion_ids, log_metric=None, **_):
        """rlkit's truncation + EOS trick on TRL's completion ids; the proxy score is the reward, VADER is logged."""
        lengths = torch.tensor([len(ids) for ids in completion_ids])
        ids = torch.full((len(completion_ids), max(cfg.max_new_tokens, int(lengths.max()))), tok.pad_token_id)
        for b, row in enumerate(completion_ids):
            ids[b, : len(row)] = torch.tensor(row, dtype=torch.long)
        responses, mask, ended = truncate_responses(ids, tok.eos_token_id, tok.pad_token_id)
        mask = mask * (torch.arange(ids.shape[1])[None, :] < lengths[:, None])
        if cfg.stop_string:
            responses, mask, ended = truncate_at_stop_string(responses, mask, ended, tok, cfg.stop_string, tok.pad_token_id)
        texts = tok.batch_decode(responses, skip_special_tokens=True)
        scores = apply_eos_trick(reward_fn(list(prompts), texts).float().cpu(), ended, cfg.no_eos_score)
        if log_metric is not None:
            log_metric("score", float(scores.mean()))
            log_metric("gold", float(apply_eos_trick(gold(list(prompts), texts), ended, gold_no_eos).mean()))
            log_metric("eos_frac", float(ended.float().mean()))
            log_metric("response_length", float(mask.sum(-1).float().mean()))
            log_metric("stop_mismatch", float((mask.sum(-1) != lengths).sum() + sum(t != c for t, c in zip(texts, completions))))
        return scores.tolist()

    if cfg.batch_size % cfg.num_minibatches or cfg.batch_size % k:
        raise SystemExit(f"batch_size {cfg.batch_size} must divide into num_minibatches {cfg.num_minibatches} and k {k}")
    steps_per_update = cfg.num_minibatches * cfg.ppo_epochs  # steps_per_generation x num_iterations
    rounds_prompts = cfg.batch_size // k
    common = dict(
        output_dir=os.path.join(out, "trl_trainer"), seed=cfg.seed, use_cpu=True, bf16=False, fp16=False,
        report_to="none", save_strategy="no", disable_tqdm=True, logging_steps=steps_per_update,
        gradient_checkpointing=cfg.gradient_checkpointing, disable_dropout=True, dataloader_num_workers=0,
        max_steps=cfg.num_updates * steps_per_update, learning_rate=cfg.learning_rate, lr_scheduler_type="constant",
        warmup_steps=0, optim="adamw_torch", weight_decay=0.0, adam_epsilon=1e-5, max_grad_norm=cfg.max_grad_norm,
        per_device_train_batch_size=cfg.batch_size // cfg.num_minibatches, gradient_accumulation_steps=1,
        steps_per_generation=cfg.num_minibatches, num_iterations=cfg.ppo_epochs, num_generations=k,
        shuffle_dataset=False, beta=cfg.kl_coef, epsilon=cfg.cliprange,
        temperature=cfg.temperature, top_k=0, top_p=1.0, max_completion_length=cfg.max_new_tokens,
    )
    if args.trainer == "rloo":
        trainer_args, trainer_class = RLOOConfig(**common), RLOOTrainer
    else:
        trainer_args = GRPOConfig(**common, loss_type=args.loss_type, scale_rewards=args.scale_rewards,
                                  use_bias_correction_kl=not args.no_bias_correction_kl)
        trainer_class = GRPOTrainer
    dataset = Dataset.from_dict({"prompt": sample_prompts(cfg, cfg.num_updates * rounds_prompts, cfg.seed)})
    metrics_path = os.path.join(out, "metrics.jsonl")
    open(metrics_path, "w").close()

    class MetricsWriter(TrainerCallback):
        def __init__(self):
            self.last = time.perf_counter()

        def on_log(self, _args, state, control, logs=None, **kwargs):
            if not logs or "reward" not in logs:
                return
            now, update = time.perf_counter(), state.global_step // steps_per_update
            kl_tok, length = logs.get("kl"), logs["completions/mean_length"]  # no "kl" at beta 0: TRL skips it
            kl = None if kl_tok is None else kl_tok * length
            row = {**logs, "update": update, "episodes": update * cfg.batch_size, "score": logs["score"], "gold": logs["gold"],
                   "kl": kl, "sqrt_kl": None if kl is None else max(kl, 0.0) ** 0.5, "kl_per_token": kl_tok,
                   "response_length": logs["response_length"], "eos_frac": logs["eos_frac"],
                   "stop_mismatch": logs["stop_mismatch"], "seconds": now - self.last}
            self.last = now
            with open(metrics_path, "a") as f:
                f.write(json.dumps(row) + "\n")
            print(f"update {update:3d}  score {row['score']:+.3f}  gold {row['gold']:+.3f}  KL {row['kl'] if row['kl'] is None else round(row['kl'], 3)}  "
                  f"len {row['response_length']:.1f}  {row['seconds']:.1f} s", flush=True)

    trainer = trainer_class(model=lm, reward_funcs=proxy_reward, args=trainer_args, train_dataset=dataset,
                          processing_class=tok, peft_config=peft_config, callbacks=[MetricsWriter()])
    trainer.remove_callback(PrinterCallback)  # MetricsWriter prints one line per update instead of TRL's log dicts
    assert trainer.eos_token_ids == [tok.eos_token_id, *stop_ids]
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump({"args": vars(args), "rlhf_config": cfg.to_dict(), "policy_resolved": policy_path,
                   "reward_resolved": reward_desc, "stop_token_ids": len(stop_ids), "trl_version": trl.__version__,
                   "trainer": args.trainer, "samples_per_prompt": k,
                   "trainer_config": trainer_args.to_dict()}, f, indent=2, default=str)
    train_start = time.time()
    trainer.train()
    train_time = time.time() - train_start
    if not os.listdir(trainer_args.output_dir):  # save_strategy "no": TRL's output_dir stays empty
        os.rmdir(trainer_args.output_dir)

    # TRL's trained weights -> rlkit's policy (names match: the same base, both through get_peft_model under LoRA)
    trained = {n: p for n, p in trainer.model.named_parameters() if "lora_" in n or not cfg.lora}
    target = {n: p for n, p in policy.lm.named_parameters() if "lora_" in n or not cfg.lora}
    assert trained and trained.keys() == target.keys(), "parameter names differ between TRL and rlkit"
    with torch.no_grad():
        for name, param in target.items():
            param.copy_(trained[name].detach().to(param.device, param.dtype))
    probe = tokenizer(sample_prompts(cfg, 4, 0, split="test"), return_tensors="pt", padding=True, padding_side="left")
    with torch.no_grad():
        trainer.model.eval()
        trl_logits, rlkit_logits = trainer.model(**probe).logits, policy.lm(**probe).logits
        ref_logits = policy.reference_logits(probe.input_ids, probe.attention_mask)
    assert torch.allclose(trl_logits, rlkit_logits, atol=1e-4), "the copied weights do not reproduce TRL's logits"
    print(f"copied {len(target)} tensors: max |logits TRL - rlkit| {(trl_logits - rlkit_logits).abs().max():.1e}, "
          f"max |logits policy - reference| {(rlkit_logits - ref_logits).abs().max():.3f}", flush=True)
    policy.lm.save_pretrained(os.path.join(out, "checkpoint"))  # the trained adapter, for later re-evaluation
    final_samples: list[dict] = []
    final = evaluate(policy, tokenizer, cfg, reward_fn, gold, samples_out=final_samples)

    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    summary = {"initial": initial, "final": final, "wall_time_s": time.time() - start, "train_time_s": train_time,
               "peak_rss_mb": peak_rss_mb, "initial_samples": initial_samples, "final_samples": final_samples,
               "trl_version": trl.__version__}
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    for label, m in (("initial", initial), ("final", final)):
        print(f"{label:8s} score {m['score']:+.3f}  gold {m['gold']:+.3f}  KL(k1) {m['kl_k1']:.3f}  "
              f"len {m['response_length']:.1f}  eos {m['eos_frac']:.2f}")
    print(f"wall {summary['wall_time_s']:.0f} s  train {train_time:.0f} s ({train_time / cfg.num_updates:.1f} s/update)  "
          f"peak RSS {peak_rss_mb:.0f} MiB  -> {out}")


if __name__ == "__main__":
    main()
