"""Gold reward against sqrt(KL): rlkit's four advantage estimators and TRL's RLOO / GRPO trainers on one RLHF recipe.

    python benchmarks/rlhf_frontier.py --recipe rlhf-synthetic [--seeds 1 2 3] [--samples-per-prompt 4]
        [--methods rlkit:gae rlkit:rloo rlkit:grpo rlkit:dr_grpo trl:rloo trl:grpo] [--parallel 2] [--threads 1]
    python benchmarks/rlhf_frontier.py --recipe rlhf-sentiment --samples-per-prompt 2 ...
    python benchmarks/rlhf_frontier.py ... --report-only        # rebuild the tables and the plot from the run folders

Every run is the recipe as shipped, its own process (wall time and peak RSS are its own), seed-major so that a slow
stretch of the shared machine hits every method of a seed alike:

- ``rlkit:E``: ``rlkit rlhf RECIPE --advantage_estimator E`` (and ``--samples_per_prompt k`` for the group estimators;
  gae samples each prompt once, so every method sees batch_size completions per update); ``rlkit:E+K`` also sets
  ``--kl_mode K`` (``rlkit:grpo+k3_loss``: GRPO with the KL as a k3 loss, as TRL's GRPO without its bias
  correction);
- ``trl:rloo`` / ``trl:grpo`` (``trl:grpo+k3_loss``: with ``use_bias_correction_kl = False``): ``benchmarks/rlhf_trl.py``: TRL 1.16's RLOOTrainer / GRPOTrainer on the same model,
  prompts, reward (proxy reward model + EOS trick), sampling, learning rate, beta, k, epochs and minibatches and
  episode budget; its trained weights are copied into an rlkit policy for the same final evaluation.

Before and after training every run is scored by rlkit.rlhf.ppo_lm.evaluate (the recipe's eval_samples held-out
prompts, one fixed sampling seed): gold (the task's gold judge, never trained on), proxy, and the k1 estimate of
KL(pi || ref) in nats per sequence. The frontier is gold gain against sqrt(KL) of that evaluation.

Writes results.csv (one row per run), results.md (command, settings, per-run table, mean +- std per method) and
frontier.png into --out.

    python benchmarks/rlhf_frontier.py --value-head-cost [--repeats 6]

times rlkit.rlhf.ppo_lm.ppo_update on one rloo rollout of the synthetic recipe's sizes with and without the value
head (interleaved, median), into value_head_cost.md.
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

DEFAULT_METHODS = ["rlkit:gae", "rlkit:rloo", "rlkit:grpo", "rlkit:dr_grpo", "trl:rloo", "trl:grpo"]
LABELS = {"rlkit:gae": "rlkit PPO (GAE, value head)", "rlkit:rloo": "rlkit RLOO", "rlkit:grpo": "rlkit GRPO",
          "rlkit:dr_grpo": "rlkit Dr. GRPO", "rlkit:grpo+k3_loss": "rlkit GRPO, KL as a k3 loss",
          "trl:rloo": "TRL RLOOTrainer", "trl:grpo": "TRL GRPOTrainer",
          "trl:grpo+k3_loss": "TRL GRPOTrainer, plain k3 (no bias correction)"}
COLORS = {"rlkit:gae": "tab:blue", "rlkit:rloo": "tab:orange", "rlkit:grpo": "tab:green", "rlkit:dr_grpo": "tab:red",
          "rlkit:grpo+k3_loss": "tab:olive", "trl:rloo": "tab:purple", "trl:grpo": "tab:brown",
          "trl:grpo+k3_loss": "tab:pink"}


def run_name(method: str, seed: int) -> str:
    return f"{method.replace(':', '_')}__seed{seed}"


def command_for(method: str, seed: int, args: argparse.Namespace) -> list[str]:
    kind, algo = method.split(":")
    algo, _, kl_mode = algo.partition("+")  # rlkit:E+K: estimator E with kl_mode K
    folder = os.path.join(args.work_dir, "runs", run_name(method, seed))
    artifacts = os.path.join(args.work_dir, "artifacts")
    if kind == "rlkit":
        command = [sys.executable, "-m", "rlkit.cli", "rlhf", args.recipe, "--advantage_estimator", algo, "--seed",
                   str(seed), "--torch_threads", str(args.threads), "--artifacts_dir", artifacts, "--run_dir",
                   os.path.dirname(folder), "--run-name", os.path.basename(folder), "--checkpoint_interval", "0",
                   "--no-progress"]
        if algo != "gae":
            command += ["--samples_per_prompt", str(args.samples_per_prompt)]
        if kl_mode:
            command += ["--kl_mode", kl_mode]
        if args.num_updates:
            command += ["--num_updates", str(args.num_updates)]
        return command
    command = [sys.executable, os.path.join(os.path.dirname(os.path.abspath(__file__)), "rlhf_trl.py"), "--recipe",
               args.recipe, "--trainer", algo, "--samples-per-prompt", str(args.samples_per_prompt), "--seed", str(seed),
               "--threads", str(args.threads), "--artifacts-dir", artifacts, "--out", folder]
    if kl_mode == "k3_loss":  # TRL's GRPO KL without its bias correction: plain k3, as rlkit's k3_loss
        command += ["--no-bias-correction-kl"]
    if args.num_updates:
        command += ["--num-updates", str(args.num_updates)]
    return command


def build_artifacts(args: argparse.Namespace) -> None:
    """The base policy and the proxy reward model, once for all runs (not part of any run's time or memory)."""
    marker = os.path.join(args.work_dir, "artifacts", "built.json")
    if os.path.isfile(marker):
        return
    artifacts = os.path.join(args.work_dir, "artifacts")
    print(f"building the base policy / proxy reward model into {artifacts} ...", flush=True)
    subprocess.run([sys.executable, "-m", "rlkit.cli", "reward-model", args.recipe, "--artifacts_dir", artifacts,
                    "--no-progress"], check=True, stdout=subprocess.DEVNULL)
    with open(marker, "w") as f:
        json.dump({"recipe": args.recipe}, f)


def run_all(args: argparse.Namespace) -> None:
    os.makedirs(os.path.join(args.work_dir, "runs"), exist_ok=True)
    build_artifacts(args)
    pending = [(m, s) for s in args.seeds for m in args.methods if read_run(args.work_dir, m, s) is None]
    running: dict[int, tuple] = {}
    while pending or running:
        while pending and len(running) < args.parallel:
            method, seed = pending.pop(0)
            folder = os.path.join(args.work_dir, "runs", run_name(method, seed))
            shutil.rmtree(folder, ignore_errors=True)  # an unfinished earlier attempt
            log = open(folder + ".log", "w")  # noqa: SIM115 - closed when the process ends
            process = subprocess.Popen(command_for(method, seed, args), stdout=log, stderr=subprocess.STDOUT)
            running[process.pid] = (method, seed, time.time(), log, [f"{m} seed {s}" for m, s, *_ in running.values()])
            print(f"started {method} seed {seed}", flush=True)
        pid, status, rusage = os.wait4(-1, 0)
        method, seed, started, log, beside = running.pop(pid)
        log.close()
        code = os.waitstatus_to_exitcode(status)
        folder = os.path.join(args.work_dir, "runs", run_name(method, seed))
        measured = {"exit_code": code, "wall_s": time.time() - started, "peak_rss_mb": rusage.ru_maxrss / 1024,
                    "threads": args.threads, "running_beside": beside + [f"{m} seed {s}" for m, s, *_ in running.values()]}
        if code != 0:
            print(f"FAILED {method} seed {seed} (exit {code}); see {folder}.log", flush=True)
            continue
        with open(os.path.join(folder, "measured.json"), "w") as f:
            json.dump(measured, f, indent=2)
        row = read_run(args.work_dir, method, seed)
        print(f"finished {method} seed {seed}: gold {row['gold_before']:+.3f} -> {row['gold_after']:+.3f}  "
              f"KL {row['kl']:.2f}  {measured['wall_s']:.0f} s  {measured['peak_rss_mb']:.0f} MiB", flush=True)


def read_run(work_dir: str, method: str, seed: int) -> dict | None:
    folder = os.path.join(work_dir, "runs", run_name(method, seed))
    try:
        with open(os.path.join(folder, "summary.json")) as f:
            summary = json.load(f)
        with open(os.path.join(folder, "measured.json")) as f:
            measured = json.load(f)
        with open(os.path.join(folder, "metrics.jsonl")) as f:
            updates = [r for r in map(json.loads, f) if r.get("kind", "update") == "update" and "score" in r]
        with open(os.path.join(folder, "config.json")) as f:
            config = json.load(f)
    except OSError:
        return None
    config = config.get("rlhf_config", config)  # the TRL script nests rlkit's config
    initial, final = summary["initial"], summary["final"]
    if method.startswith("rlkit"):
        seconds = [config["batch_size"] / u["episodes_per_s"] for u in updates]
    else:
        seconds = [u["seconds"] for u in updates[1:]] or [u["seconds"] for u in updates]  # the first holds TRL's setup
    sampled_tokens_per_s = [config["batch_size"] * u["response_length"] / s for u, s in zip(updates[-len(seconds):], seconds)]
    kl = final["kl_k1"]
    return {"method": method, "seed": seed, "k": 1 if method == "rlkit:gae" else None,
            "gold_before": initial["gold"], "gold_after": final["gold"], "gold_gain": final["gold"] - initial["gold"],
            "proxy_before": initial["score"], "proxy_after": final["score"], "kl": kl, "sqrt_kl": max(kl, 0.0) ** 0.5,
            "gold_gain_per_sqrt_kl": (final["gold"] - initial["gold"]) / kl ** 0.5 if kl > 0 else float("nan"),
            "eos_frac": final["eos_frac"], "length_after": final["response_length"],
            "s_per_update": statistics.median(seconds), "completion_tokens_per_s": statistics.median(sampled_tokens_per_s),
            "wall_s": measured["wall_s"], "peak_rss_mb": measured["peak_rss_mb"],
            "curve": [(max(kl_of(u), 0.0) ** 0.5, u["gold"] - initial["gold"]) for u in updates
                      if u.get("gold") is not None and kl_of(u) is not None]}


def kl_of(update: dict) -> float | None:
    """The per-sequence KL an update record logs: rlkit's k1, TRL's "kl" (none for TRL at beta 0)."""
    return update["kl_k1"] if "kl_k1" in update else update.get("kl")


def mean_std(xs: list[float], fmt: str = "+.3f") -> str:
    if not xs:
        return "-"
    sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return f"{statistics.mean(xs):{fmt}} ± {sd:{fmt.lstrip('+')}}"


def plot(rows: list[dict], methods: list[str], out: str, title: str, window: int = 5) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_final, ax_curve) = plt.subplots(1, 2, figsize=(12, 4.6))
    for method in methods:
        rs = [r for r in rows if r["method"] == method]
        if not rs:
            continue
        color = COLORS.get(method, None)
        ax_final.scatter([r["sqrt_kl"] for r in rs], [r["gold_gain"] for r in rs], color=color, alpha=0.45, s=25)
        mx, my = statistics.mean(r["sqrt_kl"] for r in rs), statistics.mean(r["gold_gain"] for r in rs)
        sx = statistics.stdev([r["sqrt_kl"] for r in rs]) if len(rs) > 1 else 0.0
        sy = statistics.stdev([r["gold_gain"] for r in rs]) if len(rs) > 1 else 0.0
        ax_final.errorbar([mx], [my], xerr=[sx], yerr=[sy], color=color, marker="o", ms=7, capsize=3,
                          label=f"{LABELS.get(method, method)} ({len(rs)} seeds)")
        for n, r in enumerate(rs):
            xs, ys = zip(*r["curve"]) if r["curve"] else ((), ())
            smooth = lambda v: [statistics.mean(v[max(0, i - window + 1): i + 1]) for i in range(len(v))]  # noqa: E731
            ax_curve.plot([0.0] + smooth(list(xs)), [0.0] + smooth(list(ys)), color=color, alpha=0.6, lw=1,
                          label=LABELS.get(method, method) if n == 0 else None)
    ax_final.set_title("after training: held-out evaluation (mean ± std over seeds)")
    ax_final.set_xlabel("sqrt(KL(pi || ref))  [k1, sqrt nats / sequence]")
    ax_final.set_ylabel("gold gain over the initial policy")
    ax_curve.set_title(f"during training (training batches, moving average of {window})")
    ax_curve.set_xlabel("sqrt(KL) as each trainer logs it")
    ax_curve.set_ylabel("gold gain (training batch)")
    for ax in (ax_final, ax_curve):
        ax.grid(alpha=0.3)
        ax.axhline(0, color="grey", lw=0.5)
        ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "frontier.png"), dpi=110)


def write_report(args: argparse.Namespace, command: str) -> None:
    rows = [r for s in args.seeds for m in args.methods if (r := read_run(args.work_dir, m, s)) is not None]
    if not rows:
        raise SystemExit(f"no finished runs in {args.work_dir}")
    os.makedirs(args.out, exist_ok=True)
    fields = [k for k in rows[0] if k not in ("curve", "k")]
    with open(os.path.join(args.out, "results.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    from rlkit.config import read_recipe

    _, recipe, _ = read_recipe(args.recipe)
    budget = (args.num_updates or recipe["num_updates"]) * recipe["batch_size"]
    lines = [
        f"# Gold against sqrt(KL) on `{args.recipe}`: rlkit's four advantage estimators and TRL's RLOO / GRPO trainers",
        "", "Reproduce (2 CPU cores shared with other work):", "", "```", command, "```", "",
        f"Settings (the recipe as shipped): {args.num_updates or recipe['num_updates']} updates x {recipe['batch_size']} "
        f"completions = {budget:,} episodes, beta {recipe['kl_coef']} fixed, lr {recipe['learning_rate']} constant, "
        f"{recipe['ppo_epochs']} epochs x {recipe['num_minibatches']} minibatches, temperature {recipe['temperature']}, "
        f"{recipe['max_new_tokens']} new tokens, LoRA {'on' if recipe.get('lora') else 'off (full fine-tune)'}; group "
        f"methods sample k = {args.samples_per_prompt} completions per prompt ({recipe['batch_size'] // args.samples_per_prompt} "
        f"prompts per update), PPO one per prompt. KL: rlkit and TRL RLOO put beta x k1 in the reward, TRL GRPO adds "
        f"beta x k3 x the importance ratio as a loss (its default use_bias_correction_kl), rlkit:grpo+k3_loss beta x k3. {args.threads} torch thread(s) per run, {args.parallel} run(s) at a time.",
        "",
        "Gold / proxy / KL: the held-out evaluation (rlkit.rlhf.ppo_lm.evaluate, the same prompts and sampling seed for "
        "every run) before and after training; KL is the k1 estimate in nats per sequence. s / update: median over updates "
        "of rollout + optimisation; completion tok/s: sampled completion tokens per second of update; wall and peak RSS: "
        "the whole process.", "",
        "| method | seed | gold before | gold after | gold gain | proxy after | KL | gold gain / sqrt KL | EOS | length | "
        "s / update | completion tok/s | wall (s) | peak RSS (MiB) |",
        "|-|-|-|-|-|-|-|-|-|-|-|-|-|-|",
    ]
    for r in rows:
        lines.append(f"| {r['method']} | {r['seed']} | {r['gold_before']:+.3f} | {r['gold_after']:+.3f} | {r['gold_gain']:+.3f} | "
                     f"{r['proxy_after']:+.3f} | {r['kl']:.2f} | {r['gold_gain_per_sqrt_kl']:.3f} | {r['eos_frac']:.0%} | "
                     f"{r['length_after']:.1f} | {r['s_per_update']:.2f} | {r['completion_tokens_per_s']:.0f} | "
                     f"{r['wall_s']:.0f} | {r['peak_rss_mb']:.0f} |")
    lines += ["", "Mean ± std over seeds:", "",
              "| method | seeds | gold gain | KL | gold gain / sqrt KL | s / update | completion tok/s | peak RSS (MiB) |",
              "|-|-|-|-|-|-|-|-|"]
    for method in args.methods:
        rs = [r for r in rows if r["method"] == method]
        if rs:
            lines.append(f"| {LABELS.get(method, method)} | {len(rs)} | {mean_std([r['gold_gain'] for r in rs])} | "
                         f"{mean_std([r['kl'] for r in rs], '.2f')} | {mean_std([r['gold_gain_per_sqrt_kl'] for r in rs], '.3f')} | "
                         f"{mean_std([r['s_per_update'] for r in rs], '.2f')} | "
                         f"{mean_std([r['completion_tokens_per_s'] for r in rs], '.0f')} | "
                         f"{mean_std([r['peak_rss_mb'] for r in rs], '.0f')} |")
    lines += ["", "![gold gain against sqrt(KL)](frontier.png)"]
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    plot(rows, args.methods, args.out, f"{args.recipe}: gold gain against sqrt(KL)")
    print("\n".join(lines))
    print(f"\nwrote {args.out}/results.md, results.csv and frontier.png")


def value_head_cost(work_dir: str, out: str, repeats: int) -> None:
    """Median ppo_update time on the same k = 4 rollout with and without a value head (value loss included)."""
    import torch

    from rlkit.config import config_from_dict, read_recipe
    from rlkit.envs import text_task
    from rlkit.rlhf.config import RLHFConfig
    from rlkit.rlhf.policy import load_policy
    from rlkit.rlhf.ppo_lm import collect, ppo_update, trainable_tensors

    torch.set_num_threads(1)
    _, values, source = read_recipe("rlhf-synthetic")
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
             "```", f"python benchmarks/rlhf_frontier.py --value-head-cost --repeats {repeats}", "```", "",
             "| value head | trainable parameters | ppo_update (s, median) |", "|-|-|-|"]
    lines += [f"| {'yes' if head else 'no'} | {params[head]:,} | {statistics.median(times[head]):.3f} |" for head in (True, False)]
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "value_head_cost.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", default="rlhf-synthetic")
    parser.add_argument("--methods", nargs="+", default=DEFAULT_METHODS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--samples-per-prompt", type=int, default=4, help="k of the group methods (rlkit and TRL)")
    parser.add_argument("--num-updates", type=int, default=None, help="override the recipe's num_updates (all methods)")
    parser.add_argument("--parallel", type=int, default=2, help="runs at a time")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--work-dir", default=None, help="default bench_runs/rlhf_frontier_{recipe}")
    parser.add_argument("--out", default=None, help="default benchmarks/results/rlhf_frontier_{recipe}")
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument("--value-head-cost", action="store_true",
                        help="only time ppo_update with / without a value head (synthetic task)")
    parser.add_argument("--repeats", type=int, default=6, help="--value-head-cost repeats")
    args = parser.parse_args()
    unknown = [m for m in args.methods if m not in LABELS]
    if unknown:
        raise SystemExit(f"unknown method(s) {', '.join(unknown)}; valid: {', '.join(LABELS)}")
    tag = os.path.splitext(os.path.basename(args.recipe))[0].replace("rlhf-", "")
    args.work_dir = args.work_dir or f"bench_runs/rlhf_frontier_{tag}"
    args.out = args.out or f"benchmarks/results/rlhf_frontier_{tag}"
    if args.value_head_cost:
        if args.recipe != "rlhf-synthetic":
            raise SystemExit("--value-head-cost measures the rlhf-synthetic recipe")
        build_artifacts(args)
        return value_head_cost(args.work_dir, args.out, args.repeats)
    command = "python benchmarks/rlhf_frontier.py " + " ".join(shlex.quote(a) for a in sys.argv[1:] if a != "--report-only")
    if not args.report_only:
        run_all(args)
    write_report(args, command)


if __name__ == "__main__":
    main()
