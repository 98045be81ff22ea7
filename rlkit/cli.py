"""The ``rlkit`` command: a thin face over library functions.

    rlkit train RECIPE [--key value ...]   train PPO from a recipe, any key overridable
    rlkit doctor                           run the probe suite, say which part is broken
    rlkit recipes                          list shipped recipes and their env ids
"""

from __future__ import annotations

import argparse
import json
import os
import sys

# Light imports only: torch and gymnasium load inside the commands, where an error (or a Ctrl-C
# during the import) reaches main's one error path.
from rlkit.config import (
    ConfigError,
    add_config_arguments,
    available_recipes,
    config_from_dict,
    parse_overrides,
    read_recipe,
)
from rlkit.errors import EXIT_CODES, classify


class ArgumentParser(argparse.ArgumentParser):
    """No abbreviated options (``--learning_rat`` is not ``--learning_rate``), and a usage error is a
    ConfigError: one line and exit code 2 through main's error path."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        raise ConfigError(f"{self.prog}: {message} (see {self.prog} --help)")

CONFIG_TABLES = {"ppo": ("rlkit.ppo", "PPOConfig"), "ppo_lstm": ("rlkit.ppo_lstm", "RecurrentPPOConfig")}
"""Recipe table -> (module, config class); the module's ``train(config, run_name, progress)`` runs it."""


def _config_class(table: str, source: str):
    if table == "rlhf":
        raise ConfigError(f"{source} is an RLHF recipe: run it with `rlkit rlhf`")
    if table not in CONFIG_TABLES:
        raise ConfigError(f"{source}: unknown recipe table [{table}]; known: {', '.join(f'[{t}]' for t in CONFIG_TABLES)}")
    module_name, class_name = CONFIG_TABLES[table]
    module = __import__(module_name, fromlist=[class_name])
    return getattr(module, class_name)


def _override_parser(prog: str, cls, defaults: dict, description: str) -> argparse.ArgumentParser:
    parser = ArgumentParser(prog=prog, description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(parser, cls, defaults)
    parser.add_argument("--run-name", default=None, help="name of the run folder (default: env__exp__seed__time)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (for logs)")
    return parser


def cmd_train(argv: list[str]) -> int:
    if argv and argv[0] == "--resume":
        parser = ArgumentParser(prog="rlkit train --resume", description="Continue a run from its latest "
                                         "checkpoint (or the checkpoint folder given); with --total_timesteps, extend it.")
        parser.add_argument("--resume", required=True, metavar="RUN_DIR", help="run folder (or a checkpoint folder in it)")
        parser.add_argument("--total_timesteps", "--total-timesteps", type=int, default=None,
                            help="train the run up to this many env steps in all (default: the run's own total)")
        parser.add_argument("--device", default=None, help="continue on this device (default: the run's own)")
        parser.add_argument("--no-progress", action="store_true", help="no progress bar")
        if any(a in ("-h", "--help") for a in argv):  # `--resume --help`: argparse would take --help as RUN_DIR
            parser.print_help()
            return 0
        args = parser.parse_args(argv)
        return _run_ppo(None, None, progress=not args.no_progress, resume=args.resume, total_timesteps=args.total_timesteps,
                        device=args.device)
    if not argv or argv[0].startswith("-"):
        if argv and argv[0] in ("-h", "--help"):
            from rlkit.ppo import PPOConfig

            parser = _override_parser("rlkit train RECIPE", PPOConfig, {}, "Train PPO. RECIPE is a shipped recipe "
                                      f"({', '.join(available_recipes())}) or a path to a .toml file.")
            parser.print_help()
            return 0
        print("usage: rlkit train RECIPE [--key value ...]; rlkit train --help lists the keys", file=sys.stderr)
        return 2
    recipe, rest = argv[0], argv[1:]
    table, values, source = read_saved_config(recipe) if recipe.endswith(".json") else read_recipe(recipe)
    cls = _config_class(table, source)
    parser = _override_parser(f"rlkit train {recipe}", cls, values, f"Train with recipe {recipe}; every key can be overridden.")
    args, overrides = parse_overrides(parser, cls, rest)
    config = config_from_dict(cls, {**values, **overrides}, source=f"{source} + command line")
    return _run_ppo(config, args.run_name, progress=not args.no_progress, module=CONFIG_TABLES[table][0])


def read_saved_config(path: str) -> tuple[str, dict, str]:
    """A run's own config.json as a recipe: (table, values, source); keys a config derives are dropped."""
    from rlkit.config import settable_fields
    from rlkit.ppo import PPOConfig
    from rlkit.ppo_lstm import RecurrentPPOConfig

    try:
        with open(path) as f:
            values = json.load(f)
    except (OSError, json.JSONDecodeError) as error:
        raise ConfigError(f"cannot read the saved config {path!r}: {error}") from None
    if not isinstance(values, dict) or "env_id" not in values:
        raise ConfigError(f"{path} is not a run's config.json (no env_id)")
    table = "ppo_lstm" if "lstm_hidden_size" in values else "ppo"
    cls = RecurrentPPOConfig if table == "ppo_lstm" else PPOConfig
    settable = settable_fields(cls)
    return table, {k: v for k, v in values.items() if k in settable}, path


def _run_ppo(config, run_name: str | None, progress: bool, resume: str | None = None, module: str = "rlkit.ppo",
             total_timesteps: int | None = None, device: str | None = None) -> int:
    import importlib
    import signal

    import numpy as np

    train = importlib.import_module(module).train
    if resume is not None:
        result = train(config, run_name=run_name, progress=progress, resume=resume, total_timesteps=total_timesteps,
                       device=device)
        if result.updates_run == 0:
            print(f"\n{result.run_dir} is already complete ({result.global_step:,} steps); nothing trained. "
                  "Extend it with: rlkit train --resume RUN --total_timesteps N")
            return 0
    else:
        result = train(config, run_name=run_name, progress=progress)
    last = result.last_returns(100)
    print()
    if getattr(result, "interrupted", None) is not None:
        name = signal.Signals(result.interrupted).name
        print(f"stopped by {name} after {result.global_step:,} steps; checkpoint: {result.checkpoint}")
        print(f"resume with: rlkit train --resume {result.run_dir}")
        return 128 + result.interrupted
    env_id = config.env_id if config is not None else json.load(open(os.path.join(result.run_dir, "config.json")))["env_id"]
    print(f"trained {env_id} for {result.global_step:,} steps in {result.wall_time:.1f} s ({result.sps:,.0f} SPS)")
    if last.size:
        print(f"return over the last {last.size} episodes: mean {last.mean():.2f}  std {last.std():.2f}  "
              f"min {last.min():.2f}  max {last.max():.2f}")
    else:
        print("no episode finished during training")
    written = sorted(name for name in os.listdir(result.run_dir) if not name.startswith("."))
    events = any(name.startswith("events.out.tfevents") for name in written)
    shown = [n for n in ("config.json", "metrics.jsonl", "summary.json", "checkpoints", "best", "trackers.json")
             if n in written] + (["TensorBoard events"] if events else [])
    print(f"outputs: {result.run_dir}  ({', '.join(shown)})")
    print(f"  rlkit eval {result.run_dir} --episodes 10")
    if events:
        print(f"  tensorboard --logdir {result.run_dir}")
    return 0 if np.all(np.isfinite(last)) else 1


def cmd_doctor(argv: list[str]) -> int:
    parser = ArgumentParser(prog="rlkit doctor", description="Train PPO on the probe environments (five probes x "
                                     "discrete/continuous actions, and the MultiDiscrete, masked-action and memory "
                                     "probes) and check the learned value and policy against the known answers. The "
                                     "first failing probe points at the bug.")
    parser.add_argument("--seed", type=int, default=1, help="seed of every probe run")
    parser.add_argument("--only", default=None, help="comma-separated probe names to run (default: all)")
    parser.add_argument("--shared-network", action="store_true", help="check the shared-torso agent instead")
    args = parser.parse_args(argv)
    from rlkit.doctor import print_report, run_probe_suite

    only = [name.strip() for name in args.only.split(",") if name.strip()] if args.only else None
    results = run_probe_suite(seed=args.seed, only=only, shared_network=args.shared_network, progress=True)
    return print_report(results)


def cmd_recipes(argv: list[str]) -> int:
    ArgumentParser(prog="rlkit recipes", description="List the shipped recipes.").parse_args(argv)
    for name in available_recipes():
        table, values, _ = read_recipe(name)
        target = values.get("env_id") or values.get("task") or ""
        steps = values.get("total_timesteps")
        print(f"{name:20s} [{table}] {target} {f'{steps:,} steps' if steps else ''}")
    return 0


def cmd_eval(argv: list[str]) -> int:
    parser = ArgumentParser(prog="rlkit eval", description="Evaluate a trained agent with its saved "
                                     "observation-normaliser statistics (frozen).")
    parser.add_argument("checkpoint", help="run folder, checkpoint folder, or export folder")
    parser.add_argument("--episodes", type=int, default=10, help="episodes to run (default 10)")
    parser.add_argument("--deterministic", action="store_true", help="mean action / argmax instead of sampling")
    parser.add_argument("--video", metavar="DIR", default=None, help="record every episode to DIR (needs moviepy)")
    parser.add_argument("--seed", type=int, default=10_000, help="seed of the evaluation episodes")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:i or auto")
    parser.add_argument("--env-id", default=None, help="evaluate on another env with the same spaces")
    parser.add_argument("--json", default=None, metavar="FILE", help="also write the results as JSON")
    args = parser.parse_args(argv)
    from rlkit.evaluate import evaluate

    result = evaluate(args.checkpoint, args.episodes, args.deterministic, args.video, args.seed, args.device, args.env_id)
    print(f"{result['env_id']}: {args.episodes} episodes ({'deterministic' if args.deterministic else 'stochastic'}): "
          f"mean {result['mean']:.2f}  std {result['std']:.2f}  min {result['min']:.2f}  max {result['max']:.2f}")
    if args.video:
        print(f"videos: {os.path.abspath(args.video)}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
        print(f"results: {os.path.abspath(args.json)}")
    return 0


def cmd_export(argv: list[str]) -> int:
    parser = ArgumentParser(prog="rlkit export", description="Write a self-contained agent folder: config.json, "
                                     "model.safetensors, normalizer.json and a README model card with evaluation numbers.")
    parser.add_argument("checkpoint", help="run folder or checkpoint folder")
    parser.add_argument("out", help="folder to write")
    parser.add_argument("--episodes", type=int, default=10, help="evaluation episodes for the model card")
    parser.add_argument("--stochastic", action="store_true", help="evaluate the sampling policy instead of the mean/argmax")
    args = parser.parse_args(argv)
    from rlkit.evaluate import export

    result = export(args.checkpoint, args.out, args.episodes, deterministic=not args.stochastic)
    files = [f for f in ("config.json", "model.safetensors", "normalizer.json", "README.md")
             if os.path.isfile(os.path.join(args.out, f))]
    print(f"exported to {os.path.abspath(args.out)} ({', '.join(files)})")
    print(f"evaluation: {result['episodes']} episodes, mean {result['mean']:.2f} +- {result['std']:.2f}")
    return 0


def cmd_bench(argv: list[str]) -> int:
    parser = ArgumentParser(
        prog="rlkit bench", description="Run RECIPE over env ids x seeds, one process per run; finished runs are "
        "skipped, so re-running the same command resumes. Recipe overrides go after --, e.g. "
        "rlkit bench mujoco --env-ids Hopper-v5 --seeds 1 2 3 -- --total_timesteps 100000. The launcher sets "
        "seed, device, run_dir and env_id per run: after -- they are refused (use --seeds, --devices, --out, "
        "--env-ids).")
    parser.add_argument("recipe", help="recipe name or .toml path")
    parser.add_argument("--env-ids", nargs="+", default=None, help="env ids to run (default: the recipe's)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3], help="seeds (default: 1 2 3)")
    parser.add_argument("--workers", type=int, default=1, help="runs at a time (local backend; with --backend ray "
                        "and no RAY_ADDRESS, the CPUs of the local Ray started here)")
    parser.add_argument("--devices", nargs="+", default=["cpu"], help="devices assigned round-robin, e.g. cuda:0 cuda:1")
    parser.add_argument("--backend", choices=["local", "ray"], default="local",
                        help="ray: submit to RAY_ADDRESS, or a local Ray started here")
    parser.add_argument("--out", default="bench_runs", help="output folder: OUT/<env>/seed_<s>/")
    parser.add_argument("--batched", action="store_true", help="all seeds of an env in one process as one batched "
                        "computation (rlkit/ppo_multiseed.py: stacked parameters, torch.func.vmap); [ppo] recipes; "
                        "a checkpoint per seed, and re-running the command resumes")
    parser.add_argument("--refuse-changed", action="store_true", help="stop, naming the differing keys, when an existing "
                        "run was made with another config (default: move it aside to seed_<s>.replaced-<time> and train again)")
    if "--" in argv:
        split = argv.index("--")
        argv, overrides = argv[:split], argv[split + 1:]
    else:
        overrides = []
    args = parser.parse_args(argv)
    if args.batched:  # one process on one device: these would be ignored
        given = [flag for flag, used in (("--workers", args.workers != 1), ("--backend ray", args.backend != "local"),
                                          ("several --devices", len(args.devices) > 1)) if used]
        if given:
            raise ConfigError(f"rlkit bench --batched trains all seeds in one process on one device, so "
                              f"{' and '.join(given)} would do nothing: drop them (one --devices entry picks the device), "
                              "or drop --batched to run a process per seed")
    from rlkit.bench import launch, plan_runs, reconcile

    runs = plan_runs(args.recipe, args.env_ids, args.seeds, args.devices, args.out, overrides)
    for spec in {spec.label: spec for spec in runs}.values():  # a bad override: one line now, not a failed run each
        spec.requested_config()
    reconcile(runs, refuse=args.refuse_changed)  # a finished run is skipped only if it has the requested config
    if args.batched:
        return _bench_batched(args.recipe, runs, overrides, args.out)
    outcome = launch(runs, workers=args.workers, backend=args.backend)
    print(f"\n{len(outcome['finished'])} runs finished, {len(outcome['skipped'])} skipped (already done), "
          f"{len(outcome['failed'])} failed; outputs under {os.path.abspath(args.out)}")
    for spec in outcome["failed"]:
        print(f"  failed: {spec.name}: see {spec.run_dir}.log")
    print(f"aggregate with: rlkit report {args.out}")
    return 1 if outcome["failed"] else 0


def _bench_batched(recipe: str, runs, overrides: list[str], out: str) -> int:
    """rlkit bench --batched: per env id, every pending seed in one train_seeds call."""
    import time

    from rlkit.ppo import PPOConfig
    from rlkit.ppo_multiseed import train_seeds

    table, values, source = read_recipe(recipe)
    if table != "ppo":
        raise ConfigError(f"{source}: --batched runs [ppo] recipes, not [{table}]")
    parser = _override_parser("rlkit bench --batched", PPOConfig, values, "")
    _, extra = parse_overrides(parser, PPOConfig, overrides)
    by_env: dict = {}
    for spec in runs:
        by_env.setdefault(spec.label, []).append(spec)
    for label, specs in by_env.items():
        pending = [s for s in specs if not s.finished]
        if not pending:
            print(f"{label}: all {len(specs)} seeds already finished")
            continue
        env = {"env_id": specs[0].env_id} if specs[0].env_id else {}
        config = config_from_dict(PPOConfig, {**values, **extra, **env, "device": pending[0].device},
                                  source=f"{source} + command line")
        start = time.time()
        results = train_seeds(config, [s.seed for s in pending], run_dirs=[s.run_dir for s in pending], resume=True)
        if results[0].interrupted is not None:
            print(f"\n{label}: stopped by signal {results[0].interrupted}; checkpoints written; re-run the same command to resume")
            return 128 + results[0].interrupted
        seconds = time.time() - start
        print(f"\n{label}: {len(pending)} seed{'s' if len(pending) != 1 else ''} x {results[0].global_step:,} steps in one process, {seconds:.1f} s "
              f"({len(pending) * 3600 / seconds:.1f} seeds per hour)")
        for spec, result in zip(pending, results):
            last = result.last_returns(100)
            score = f"{last.mean():.2f}" if last.size else "no episode finished"
            print(f"  seed {spec.seed}: last-100 return {score}  -> {spec.run_dir}")
    print(f"aggregate with: rlkit report {out}")
    return 0


def cmd_reward_model(argv: list[str]) -> int:
    from rlkit.rlhf.cli import cmd_reward

    return cmd_reward(argv)


def cmd_rlhf(argv: list[str]) -> int:
    from rlkit.rlhf.cli import cmd_rlhf as run_rlhf

    return run_rlhf(argv)


def cmd_setup_offline(argv: list[str]) -> int:
    from rlkit.rlhf.cli import cmd_setup_offline as run_setup

    return run_setup(argv)


def cmd_report(argv: list[str]) -> int:
    from rlkit.report import cmd_report as run_report

    return run_report(argv)


COMMANDS = {
    "train": (cmd_train, "train PPO from a recipe: rlkit train RECIPE [--key value ...]"),
    "doctor": (cmd_doctor, "run the probe suite and report which probe fails"),
    "recipes": (cmd_recipes, "list the shipped recipes"),
    "eval": (cmd_eval, "evaluate a run, checkpoint or export: rlkit eval PATH --episodes N [--deterministic] [--video DIR]"),
    "export": (cmd_export, "write a self-contained agent folder with a model card: rlkit export CHECKPOINT OUT"),
    "reward-model": (cmd_reward_model, "train the RLHF proxy reward model: rlkit reward-model [RECIPE] [--key value ...]"),
    "rlhf": (cmd_rlhf, "PPO on a language model: rlkit rlhf RECIPE [--key value ...]; rlkit rlhf --resume RUN_DIR"),
    "rlhf-export": (lambda argv: __import__("rlkit.rlhf.cli", fromlist=["cmd_rlhf_export"]).cmd_rlhf_export(argv),
                    "an RLHF run's policy as a plain transformers folder + model card: rlkit rlhf-export RUN OUT [--merge]"),
    "setup-offline": (cmd_setup_offline, "check the offline model/data wheels and convert SmolLM2 once"),
    "bench": (cmd_bench, "run a recipe over env ids x seeds in parallel processes (resumable)"),
    "report": (cmd_report, "aggregate a bench folder: per-seed scores, mean +- std, IQM [95% CI], curves, CSV"),
    "tune": (lambda argv: __import__("rlkit.tune", fromlist=["cmd_tune"]).cmd_tune(argv),
             "Optuna search (TPE, median pruning on the periodic evaluation; resumable): rlkit tune RECIPE --trials N"),
}


def main(argv: list[str] | None = None) -> int:
    """Exit codes (README, "Faults and what you see"): 0 done, 1 finished with non-finite returns,
    2 config / usage error, 3 a NaN / inf stopped training, 4 environment, 5 checkpoint, 6 export,
    7 run folder in use or taken, 8 file system (full disk, permissions), 9 device, 10 reward
    function, 70 a bug in rlkit, 130 interrupted, 128 + N stopped by signal N (checkpoint written), 141 stdout
    closed by its reader (as SIGPIPE's 128 + 13, silently).
    Every failure is one line on stderr; ``--debug`` or ``RLKIT_DEBUG=1`` shows the traceback."""
    argv = sys.argv[1:] if argv is None else argv
    debug = "--debug" in argv or os.environ.get("RLKIT_DEBUG", "").strip().lower() not in ("", "0", "false", "no")
    argv = [a for a in argv if a != "--debug"]
    if argv and argv[0] in ("--version", "-V"):
        from rlkit import __version__

        print(f"rlkit {__version__}")
        return 0
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        lines = "\n".join(f"  {name:10s} {doc}" for name, (_, doc) in COMMANDS.items())
        print(f"usage: rlkit COMMAND [args]   (rlkit COMMAND --help for details)\n\ncommands:\n{lines}")
        if argv and argv[0] not in ("-h", "--help"):
            print(f"\nrlkit: unknown command {argv[0]!r}", file=sys.stderr)
            return 2
        return 0
    command, _ = COMMANDS[argv[0]]
    try:
        return command(argv[1:])
    except BrokenPipeError:
        if not _stdout_closed():
            raise
        return EXIT_CODES["stdout_closed"]  # the reader (`| head`) has gone: nothing to tell it
    except (Exception, KeyboardInterrupt) as error:
        if debug:  # the traceback too, and the same exit code
            import traceback

            traceback.print_exc()
        return _report(error)


def _stdout_closed() -> bool:
    """Whether stdout is a pipe or socket whose reader has gone (poll says POLLERR / POLLHUP); if so, stdout goes
    to /dev/null so that the exit-time flush stays quiet.  A broken pipe elsewhere (an env worker) is not this."""
    import select

    try:
        fd = sys.stdout.fileno()
        poller = select.poll()
        poller.register(fd, select.POLLOUT)
        closed = any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))
    except (AttributeError, OSError, ValueError):  # no file descriptor (captured), or no poll on this platform
        return False
    if closed:
        os.dup2(os.open(os.devnull, os.O_WRONLY), fd)
    return closed


def _report(error: BaseException) -> int:
    """One line for a failure, and its exit code (rlkit.errors.EXIT_CODES; see main)."""
    kind, message = classify(error)
    if kind == "interrupted":
        print("\nrlkit: interrupted", file=sys.stderr)
    elif kind == "non_finite":
        print(f"rlkit: training stopped: {message}", file=sys.stderr)
    else:
        print(f"rlkit: {message}", file=sys.stderr)
    return EXIT_CODES[kind]


if __name__ == "__main__":
    sys.exit(main())
