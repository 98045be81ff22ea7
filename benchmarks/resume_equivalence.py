"""Resume equivalence and kill -9 safety, end to end through the CLI.

1. `rlkit train pendulum` for 10 updates with a checkpoint after every update.
   A copy of the run is cut back to its checkpoint at update 4 (later checkpoints
   and summary removed; metrics.jsonl keeps the abandoned lines, as after a crash)
   and continued with `rlkit train --resume`.  The final weights, optimizer state
   and every metrics line (SPS aside) must equal the uninterrupted run's.
2. `rlkit train pendulum` is killed with SIGKILL at several random moments while it
   writes checkpoints after every update; each time the newest complete checkpoint
   must load and `rlkit train --resume` must finish the run.

    python benchmarks/resume_equivalence.py

Writes benchmarks/results/resume/results.md and results.json.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from safetensors.torch import load_file

from rlkit.checkpoint import list_checkpoints, load_checkpoint

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "results", "resume")
STEPS = 10 * 16 * 200  # 10 updates of the pendulum recipe


def rlkit(*args: str) -> list[str]:
    return [sys.executable, "-m", "rlkit.cli", *args]


def metrics(run: str) -> list[dict]:
    lines = [json.loads(line) for line in open(os.path.join(run, "metrics.jsonl"))]
    return [{k: v for k, v in r.items() if k != "SPS"} for r in lines if r["kind"] != "note"]


def final_tensors(run: str) -> dict:
    newest = list_checkpoints(run)[-1]
    return {name: load_file(os.path.join(newest, f"{name}.safetensors")) for name in ("model", "optimizer")}


def main() -> None:
    import argparse

    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    root = tempfile.mkdtemp(prefix="rlkit-resume-")
    common = ["--total_timesteps", str(STEPS), "--run_dir", root, "--checkpoint_interval", "1", "--keep_checkpoints",
              "100", "--no-progress"]
    commands = []

    # 1. resume equivalence
    full_cmd = rlkit("train", "pendulum", *common, "--run-name", "full")
    subprocess.run(full_cmd, check=True, capture_output=True)
    full, part = os.path.join(root, "full"), os.path.join(root, "part")
    shutil.copytree(full, part)
    for folder in list_checkpoints(part)[4:]:
        shutil.rmtree(folder)
    os.remove(os.path.join(part, "summary.json"))
    resume_cmd = rlkit("train", "--resume", part, "--no-progress")
    subprocess.run(resume_cmd, check=True, capture_output=True)
    a, b = final_tensors(full), final_tensors(part)
    same_tensors = all(a[f].keys() == b[f].keys() and all((a[f][k] == b[f][k]).all() for k in a[f]) for f in a)
    same_metrics = metrics(full) == metrics(part)
    commands += [" ".join(["python", *full_cmd[1:]]), f"cp -r {full} {part}; rm -r {part}/checkpoints/update_000000[5-9] "
                 f"{part}/checkpoints/update_0000010 {part}/summary.json", " ".join(["python", *resume_cmd[1:]])]

    # 2. kill -9 while checkpoints are being written
    kills = []
    rng = random.Random(0)
    for attempt in range(5):
        run = os.path.join(root, f"kill{attempt}")
        process = subprocess.Popen(rlkit("train", "pendulum", *common, "--run-name", f"kill{attempt}"),
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 120
        while len(list_checkpoints(run)) < 2 and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 1.0))
        process.send_signal(signal.SIGKILL)
        process.wait()
        checkpoints = list_checkpoints(run)
        leftovers = [n for n in os.listdir(os.path.join(run, "checkpoints")) if n.startswith(".tmp-")]
        _, state = load_checkpoint(run)
        resumed = subprocess.run(rlkit("train", "--resume", run, "--no-progress"), capture_output=True, text=True)
        summary = json.load(open(os.path.join(run, "summary.json"))) if resumed.returncode == 0 else {}
        kills.append({"attempt": attempt, "complete_checkpoints": len(checkpoints), "partial_write_left": bool(leftovers),
                      "loaded_update": state["iteration"], "resume_exit_code": resumed.returncode,
                      "final_step": summary.get("global_step")})

    os.makedirs(OUT, exist_ok=True)
    result = {"same_weights_and_optimizer": bool(same_tensors), "same_metrics_lines": same_metrics,
              "metrics_lines": len(metrics(full)), "kill9": kills, "commands": commands}
    with open(os.path.join(OUT, "results.json"), "w") as f:
        json.dump(result, f, indent=2)
    rows = "\n".join(f"| {k['attempt']} | {k['complete_checkpoints']} | {'yes' if k['partial_write_left'] else 'no'} | "
                     f"{k['loaded_update']} | {k['resume_exit_code']} | {k['final_step']} |" for k in kills)
    md = f"""# Resume equivalence and kill -9 safety

Command: `python benchmarks/resume_equivalence.py` (CPU). Temporary runs under `{root}`.

## 1. Resume at update 4 of 10 vs the uninterrupted run (Pendulum-v1, pendulum recipe, {STEPS:,} steps)

```
{chr(10).join(commands)}
```

| check | result |
|---|---|
| final weights and Adam state bit-for-bit equal | {'yes' if same_tensors else 'NO'} |
| all {len(metrics(full))} metrics.jsonl lines (episodes and updates, SPS aside) equal | {'yes' if same_metrics else 'NO'} |

## 2. SIGKILL while checkpoints are written after every update

| attempt | complete checkpoints | partial write left behind | newest checkpoint loads (update) | resume exit code | final step |
|---|---|---|---|---|---|
{rows}

Each kill lands at a random moment of training (after at least two checkpoints). A
partial write is a `.tmp-*` folder that a kill cut short; it is never read, and the
previous checkpoint stays intact. Kills that land inside a checkpoint write are
forced in `tests/test_checkpoint.py::test_kill_9_during_a_checkpoint_write_never_corrupts_the_previous_one`
(5 kills of a writer busy writing 16 MB checkpoints; at least one must leave a partial write).
"""
    with open(os.path.join(OUT, "results.md"), "w") as f:
        f.write(md)
    print(md)
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
