"""PPO (gae) against the critic-free estimators (rloo, grpo, dr_grpo) on the synthetic RLHF task.

    python benchmarks/rlhf_estimators.py [--estimators gae rloo grpo dr_grpo] [--seeds 1 2 3]
                                         [--samples-per-prompt 4] [--out benchmarks/results/rlhf_estimators]

Every run is the ``rlhf-synthetic`` recipe as shipped (60 updates x 64 responses = 3,840 episodes,
beta 0.05 fixed, k1 in the reward, lr 1e-4 constant, 4 epochs x 4 minibatches) with only
``--advantage_estimator`` changed (and ``--samples_per_prompt`` for the group estimators: 64
responses = 16 prompts x k).  All runs share one base policy and one proxy reward model
(task_seed 0, built first), and each is its own ``rlkit rlhf`` process, one at a time, so that its
wall time and peak RSS are its own.  Writes results.csv (one row per run), results.md (the command,
the table, mean +- std over seeds) into --out; ``--report-only`` rebuilds them from the run folders.

    python benchmarks/rlhf_estimators.py --value-head-cost [--repeats 6]

times rlkit.rlhf.ppo_lm.ppo_update on one rloo rollout of the recipe's sizes with and without
the value head (interleaved, median), into value_head_cost.md.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import time

RECIPE = "rlhf-synthetic"


def run_and_measure(command: list[str], log_path: str) -> tuple[int, float, float]:
    """(exit code, wall seconds, peak RSS MiB of the child) of one command."""
    start = time.time()
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        _, status, rusage = os.wait4(process.pid, 0)
    return os.waitstatus_to_exitcode(status), time.time() - start, rusage.ru_maxrss / 1024  # Linux: KiB


def run_name(estimator: str, seed: int) -> str:
    return f"{estimator}__{seed}"


def command_for(estimator: str, seed: int, k: int, work_dir: str) -> list[str]:
    command = [sys.executable, "-m", "rlkit.cli", "rlhf", RECIPE, "--advantage_estimator", estimator, "--seed", str(seed),
               "--artifacts_dir", os.path.join(work_dir, "artifacts"), "--run_dir", os.path.join(work_dir, "runs"),
               "--run-name", run_name(estimator, seed), "--checkpoint_interval", "0", "--no-progress"]
    if estimator != "gae":
        command += ["--samples_per_prompt", str(k)]
    return command


def build_artifacts(work_dir: str) -> None:
    """The shared base policy and proxy reward model, once (not part of any run's time or memory)."""
    artifacts = os.path.join(work_dir, "artifacts")
    if os.path.isdir(os.path.join(artifacts, "synthetic_rm__seed0")):
        return
    subprocess.run([sys.executable, "-m", "rlkit.cli", "reward-model", RECIPE, "--artifacts_dir", artifacts, "--no-progress"],
                   check=True)


def read_run(work_dir: str, estimator: str, seed: int) -> dict | None:
    folder = os.path.join(work_dir, "runs", run_name(estimator, seed))
    try:
        with open(os.path.join(folder, "summary.json")) as f:
            summary = json.load(f)
        with open(os.path.join(folder, "measured.json")) as f:
            measured = json.load(f)
        with open(os.path.join(folder, "metrics.jsonl")) as f:
            updates = [r for r in map(json.loads, f) if r["kind"] == "update"]
        with open(os.path.join(folder, "config.json")) as f:
            config = json.load(f)
    except OSError:
        return None
    initial, final = summary["initial"], summary["final"]
    seconds_per_update = [config["batch_size"] / u["episodes_per_s"] for u in updates]
    return {"estimator": estimator, "seed": seed, "k": config["samples_per_prompt"] or 1,
            "gold_before": initial["gold"], "gold_after": final["gold"], "gold_change": final["gold"] - initial["gold"],
            "proxy_after": final["score"], "kl_k1": final["kl_k1"], "sqrt_kl": max(final["kl_k1"], 0.0) ** 0.5,
            "gold_per_sqrt_kl": (final["gold"] - initial["gold"]) / max(final["kl_k1"], 1e-9) ** 0.5,
            "eos_frac": final["eos_frac"], "response_length": final["response_length"],
            "s_per_update": statistics.mean(seconds_per_update),
            "train_tokens_per_s": statistics.mean(u["train_tokens_per_s"] for u in updates),
            "wall_s": measured["wall_s"], "peak_rss_mb": measured["peak_rss_mb"]}


def mean_std(xs: list[float], fmt: str = "+.2f") -> str:
    sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return f"{statistics.mean(xs):{fmt}} ± {sd:{fmt.lstrip('+')}}"


def write_report(rows: list[dict], out: str, command: str) -> None:
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "results.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    lines = [
        "# Advantage estimators on the synthetic RLHF task: PPO (gae) vs RLOO, GRPO, Dr. GRPO",
        "",
        "Reproduce (2 CPU cores shared with other work; about 15 minutes for 4 estimators x 3 seeds):",
        "",
        "```",
        command,
        "```",
        "",
        f"Each run: the `{RECIPE}` recipe as shipped (60 updates x 64 responses = 3,840 episodes, beta 0.05 fixed, k1 in the "
        "reward, lr 1e-4 constant, 4 epochs x 4 minibatches, temperature 0.7, 10 new tokens), only `--advantage_estimator` "
        "changed and, for the group estimators, `--samples_per_prompt` (64 responses = 64 / k prompts per update). gae is "
        "PPO with the value head and GAE; rloo / grpo / dr_grpo build no value head. Gold and proxy are measured on 256 "
        "held-out samples (fixed seed) before and after training; KL is the k1 estimate of KL(pi || ref) in nats per "
        "sequence on the same samples. Wall time and peak RSS are of the whole `rlkit rlhf` process (the shared base "
        "policy and reward model were built before, by another process); s / update is the mean over updates of the "
        "rollout + optimisation time.",
        "",
        "| estimator | k | seed | gold before | gold after | proxy after | KL | sqrt KL | gold gain / sqrt KL | EOS | s / update | train tok/s | wall (s) | peak RSS (MiB) |",
        "|-|-|-|-|-|-|-|-|-|-|-|-|-|-|",
    ]
    for r in rows:
        lines.append(f"| {r['estimator']} | {r['k']} | {r['seed']} | {r['gold_before']:+.2f} | {r['gold_after']:+.2f} | "
                     f"{r['proxy_after']:+.2f} | {r['kl_k1']:.2f} | {r['sqrt_kl']:.2f} | {r['gold_per_sqrt_kl']:.2f} | "
                     f"{r['eos_frac']:.0%} | {r['s_per_update']:.2f} | {r['train_tokens_per_s']:.0f} | {r['wall_s']:.0f} | "
                     f"{r['peak_rss_mb']:.0f} |")
    lines += ["", "Mean ± std over seeds:", "",
              "| estimator | gold gain | KL | gold gain / sqrt KL | s / update | peak RSS (MiB) |", "|-|-|-|-|-|-|"]
    for estimator in dict.fromkeys(r["estimator"] for r in rows):
        rs = [r for r in rows if r["estimator"] == estimator]
        lines.append(f"| {estimator} | {mean_std([r['gold_change'] for r in rs])} | {mean_std([r['kl_k1'] for r in rs], '.2f')} | "
                     f"{mean_std([r['gold_per_sqrt_kl'] for r in rs], '.2f')} | {mean_std([r['s_per_update'] for r in rs], '.2f')} | "
                     f"{mean_std([r['peak_rss_mb'] for r in rs], '.0f')} |")
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"\nwrote {out}/results.md and results.csv")


def value_head_cost(work_dir: str, out: str, repeats: int) -> None:
    """Median ppo_update time on the same k = 4 rollout with and without a value head (value loss included)."""
    import torch

    from rlkit.config import config_from_dict, read_recipe
    from rlkit.envs import text_task
    from rlkit.rlhf.config import RLHFConfig
    from rlkit.rlhf.policy import load_policy
    from rlkit.rlhf.ppo_lm import collect, ppo_update, trainable_tensors

    build_artifacts(work_dir)
    torch.set_num_threads(1)
    _, values, source = read_recipe(RECIPE)
    cfg = config_from_dict(RLHFConfig, {**values, "advantage_estimator": "rloo", "samples_per_prompt": 4}, source)
    base = os.path.join(work_dir, "artifacts", "synthetic_base__seed0")
    prompts = [p for p in text_task.sample_prompts(cfg.batch_size // 4, 0) for _ in range(4)]

    def gold(prompts, responses):
        return torch.tensor([text_task.gold_reward(p, r) for p, r in zip(prompts, responses)])

    times, params = {True: [], False: []}, {}
    for _ in range(repeats):
        for head in (True, False):  # interleaved: a slow stretch of the machine hits both alike
            torch.manual_seed(0)
            policy, tokenizer = load_policy(base, value_head=head)
            params[head] = sum(p.numel() for p in trainable_tensors(policy).values())
            optimizer = torch.optim.Adam(trainable_tensors(policy).values(), lr=cfg.learning_rate, eps=1e-5)
            batch = collect(policy, tokenizer, prompts, gold, cfg, cfg.kl_coef)
            start = time.perf_counter()
            ppo_update(policy, optimizer, batch, cfg, cfg.kl_coef, torch.Generator().manual_seed(0))
            times[head].append(time.perf_counter() - start)
    lines = ["# ppo_update with and without the value head (synthetic task, one rloo rollout of 16 prompts x 4)", "",
             "```", f"python benchmarks/rlhf_estimators.py --value-head-cost --repeats {repeats}", "```", "",
             "| value head | trainable parameters | ppo_update (s, median) |", "|-|-|-|"]
    lines += [f"| {'yes' if head else 'no'} | {params[head]:,} | {statistics.median(times[head]):.3f} |" for head in (True, False)]
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "value_head_cost.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--estimators", nargs="+", default=["gae", "rloo", "grpo", "dr_grpo"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--samples-per-prompt", type=int, default=4, help="k of the group estimators")
    parser.add_argument("--work-dir", default="runs/rlhf_estimators")
    parser.add_argument("--out", default="benchmarks/results/rlhf_estimators")
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument("--value-head-cost", action="store_true", help="only time ppo_update with / without a value head")
    parser.add_argument("--repeats", type=int, default=6)
    args = parser.parse_args()
    if args.value_head_cost:
        return value_head_cost(args.work_dir, args.out, args.repeats)
    command = "python benchmarks/rlhf_estimators.py " + " ".join(
        shlex.quote(a) for a in sys.argv[1:] if a != "--report-only")
    if not args.report_only:
        build_artifacts(args.work_dir)
        for seed in args.seeds:  # seed-major: a slow stretch of the machine hits every estimator alike
            for estimator in args.estimators:
                if read_run(args.work_dir, estimator, seed) is not None:
                    continue
                folder = os.path.join(args.work_dir, "runs", run_name(estimator, seed))
                shutil.rmtree(folder, ignore_errors=True)  # an unfinished earlier attempt
                code, wall, rss = run_and_measure(command_for(estimator, seed, args.samples_per_prompt, args.work_dir),
                                                  os.path.join(args.work_dir, f"{run_name(estimator, seed)}.log"))
                if code != 0:
                    raise SystemExit(f"{estimator} seed {seed} failed (exit {code}); see {args.work_dir}/{run_name(estimator, seed)}.log")
                with open(os.path.join(folder, "measured.json"), "w") as f:
                    json.dump({"wall_s": wall, "peak_rss_mb": rss}, f)
                row = read_run(args.work_dir, estimator, seed)
                print(f"{estimator:8s} seed {seed}: gold {row['gold_before']:+.2f} -> {row['gold_after']:+.2f}  "
                      f"KL {row['kl_k1']:.2f}  {wall:.0f} s  {rss:.0f} MiB", flush=True)
    rows = [r for seed in args.seeds for e in args.estimators if (r := read_run(args.work_dir, e, seed)) is not None]
    if not rows:
        raise SystemExit(f"no finished runs in {args.work_dir}")
    write_report(rows, args.out, command)


if __name__ == "__main__":
    main()
