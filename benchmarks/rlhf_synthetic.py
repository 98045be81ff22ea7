"""Synthetic RLHF benchmark: gold and proxy reward against sqrt(KL), with and without the KL penalty.

    python benchmarks/rlhf_synthetic.py [--seeds 1 2 3] [--out benchmarks/results/rlhf_synthetic]

Runs the ``rlhf-synthetic`` recipe (beta 0.05) and ``rlhf-synthetic-beta0`` (beta 0)
for each seed, all sharing one base policy and one proxy reward model (task_seed 0),
then writes results.csv (one row per run and update), results.md (the command,
initial -> final gold / proxy / KL per run, mean +- std over seeds) and
gold_proxy_vs_sqrtkl.png (Gao et al. 2022, Fig. 1 style).
"""

from __future__ import annotations

import argparse
import csv
import os
import shlex
import statistics
import sys
import time

RECIPES = {"beta=0.05": "rlhf-synthetic", "beta=0": "rlhf-synthetic-beta0"}


def run_all(seeds: list[int], work_dir: str) -> list[dict]:
    import transformers

    from rlkit.config import config_from_dict, read_recipe
    from rlkit.rlhf.config import RLHFConfig
    from rlkit.rlhf.ppo_lm import train

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    runs = []
    for label, recipe in RECIPES.items():
        _, values, source = read_recipe(recipe)
        for seed in seeds:
            cfg = config_from_dict(RLHFConfig, {**values, "seed": seed, "artifacts_dir": os.path.join(work_dir, "artifacts"),
                                                "run_dir": os.path.join(work_dir, "runs"), "save_checkpoint": False}, source)
            result = train(cfg, run_name=f"{recipe}__{seed}", progress=False)
            print(f"{label:9s} seed {seed}: gold {result.initial['gold']:+.2f} -> {result.final['gold']:+.2f}  proxy "
                  f"{result.initial['score']:+.2f} -> {result.final['score']:+.2f}  KL {result.final['kl_k1']:.2f}  "
                  f"({result.wall_time:.0f} s)", flush=True)
            runs.append({"label": label, "recipe": recipe, "seed": seed, "result": result, "cfg": cfg})
    return runs


def mean_std(xs: list[float]) -> str:
    return f"{statistics.mean(xs):+.2f} ± {statistics.stdev(xs) if len(xs) > 1 else 0.0:.2f}"


def write_results(runs: list[dict], out: str, command: str) -> None:
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "results.csv"), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["setting", "seed", "update", "episodes", "gold", "proxy_score", "kl_k1", "kl_k2", "kl_k3", "sqrt_kl",
                         "beta", "entropy", "response_length"])
        for run in runs:
            r = run["result"]
            writer.writerow([run["label"], run["seed"], 0, 0, r.initial["gold"], r.initial["score"], r.initial["kl_k1"],
                             r.initial["kl_k2"], r.initial["kl_k3"], 0.0, run["cfg"].kl_coef, "", r.initial["response_length"]])
            for h in r.history:
                writer.writerow([run["label"], run["seed"], h["update"], h["episodes"], h["gold"], h["score"], h["kl_k1"],
                                 h["kl_k2"], h["kl_k3"], h["sqrt_kl"], h["beta"], h["entropy"], h["response_length"]])
    lines = [
        "# RLHF on the synthetic task: gold vs proxy reward",
        "",
        "Reproduce (2 CPU cores, about 5 minutes):",
        "",
        "```",
        command,
        "```",
        "",
        "Setup (Gao et al. 2022 in miniature, `rlkit/envs/text_task.py`): a 105k-parameter GPT-2 pretrained for seconds "
        "on a generated corpus is the initial policy; a proxy reward model (same backbone, scalar head) is trained with "
        "the Bradley-Terry loss on 1.8k pairs of initial-policy samples labelled by the programmatic gold reward with "
        "Bradley-Terry noise; PPO optimises the proxy. Gold = +1 per distinct positive adjective, -1 per negative one, "
        "-1 per repeated word (-1 if no EOS); the initial policy scores about 0, the best possible response 4. "
        "Proxy scores are normalised to mean 0 / std 1 on initial-policy samples. All numbers below are measured on 256 "
        "fresh samples (fixed evaluation seed) before and after training; KL is the k1 estimate of KL(pi || ref), nats per sequence.",
        "",
    ]
    rm_report = os.path.join(runs[0]["cfg"].artifacts_dir, f"synthetic_rm__seed{runs[0]['cfg'].task_seed}", "reward_model_report.json")
    if os.path.isfile(rm_report):
        import json

        rep = json.load(open(rm_report))
        lines += [f"Proxy reward model: held-out pairwise accuracy {rep['heldout_accuracy']:.3f} on noisy labels (ceiling "
                  f"{rep['label_noise_ceiling']:.3f}: the gold reward itself), agreement with the noiseless gold order "
                  f"{rep['heldout_gold_agreement']:.3f}.", ""]
    lines += ["| setting | updates | seed | gold before | gold after | proxy before | proxy after | KL after | sqrt KL | gold peak (update) | time (s) |",
              "|-|-|-|-|-|-|-|-|-|-|-|"]
    for run in runs:
        r = run["result"]
        peak = max(r.history, key=lambda h: h["gold"])
        lines.append(f"| {run['label']} | {run['cfg'].num_updates} | {run['seed']} | {r.initial['gold']:+.2f} | "
                     f"{r.final['gold']:+.2f} | {r.initial['score']:+.2f} | {r.final['score']:+.2f} | {r.final['kl_k1']:.2f} | "
                     f"{max(r.final['kl_k1'], 0) ** 0.5:.2f} | {peak['gold']:+.2f} ({peak['update']}) | {r.wall_time:.0f} |")
    lines += ["", "Mean ± std over seeds:", "", "| setting | gold before | gold after | gold change | proxy after | KL after |",
              "|-|-|-|-|-|-|"]
    for label in RECIPES:
        rs = [run["result"] for run in runs if run["label"] == label]
        lines.append(f"| {label} | {mean_std([r.initial['gold'] for r in rs])} | {mean_std([r.final['gold'] for r in rs])} | "
                     f"{mean_std([r.final['gold'] - r.initial['gold'] for r in rs])} | {mean_std([r.final['score'] for r in rs])} | "
                     f"{mean_std([r.final['kl_k1'] for r in rs])} |")
    lines += ["", "![gold and proxy reward against sqrt(KL)](gold_proxy_vs_sqrtkl.png)", "",
              "Per-update training-batch values (gold, proxy, k1/k2/k3 KL, beta, entropy, length) are in results.csv."]
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write("\n".join(lines) + "\n")


def plot(runs: list[dict], out: str, window: int = 5) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def smooth(xs: list[float]) -> list[float]:
        return [statistics.mean(xs[max(0, i - window + 1) : i + 1]) for i in range(len(xs))]

    fig, axes = plt.subplots(1, len(RECIPES), figsize=(11, 4), sharey=True)
    for ax, label in zip(axes, RECIPES):
        for run in (r for r in runs if r["label"] == label):
            h = run["result"].history
            sqrt_kl = smooth([x["sqrt_kl"] for x in h])
            ax.plot([0] + sqrt_kl, [run["result"].initial["gold"]] + smooth([x["gold"] for x in h]), color="tab:orange",
                    alpha=0.8, label="gold" if run["seed"] == runs[0]["seed"] else None)
            ax.plot([0] + sqrt_kl, [run["result"].initial["score"]] + smooth([x["score"] for x in h]), color="tab:blue",
                    alpha=0.8, label="proxy (normalised)" if run["seed"] == runs[0]["seed"] else None)
        ax.set_title(f"{label} ({RECIPES[label]})")
        ax.set_xlabel("sqrt(KL(pi || ref))  [sqrt nats]")
        ax.axhline(0, color="grey", lw=0.5)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("reward (training batch, moving average of 5 updates)")
    axes[0].legend()
    fig.suptitle("Synthetic RLHF: proxy up, gold down without a KL penalty (3 seeds each)")
    fig.tight_layout()
    fig.savefig(os.path.join(out, "gold_proxy_vs_sqrtkl.png"), dpi=120)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--out", default="benchmarks/results/rlhf_synthetic")
    parser.add_argument("--work-dir", default="bench_runs/rlhf_synthetic", help="base policy, reward model and run folders")
    args = parser.parse_args(argv)
    command = "python benchmarks/rlhf_synthetic.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    start = time.time()
    runs = run_all(args.seeds, args.work_dir)
    write_results(runs, args.out, command.strip())
    plot(runs, args.out)
    print(f"wrote {args.out}/results.csv, results.md, gold_proxy_vs_sqrtkl.png in {time.time() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
