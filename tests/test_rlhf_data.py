"""RLHF on your own data: prompt / preference files in TRL's conventions, reward functions in both forms
and combined, precision, the rollout's explicit GenerationConfig, models without a pad token, and
`rlkit rlhf-export`.  Every model is a tiny Llama with a byte-level BPE tokenizer, a chat template and
no pad token (rlkit.rlhf.example), built in seconds; nothing comes from a hub."""

from __future__ import annotations

import json
import os
import shutil
import sys
import textwrap

import pytest
import torch

from rlkit.cli import main
from rlkit.config import ConfigError, config_from_dict
from rlkit.rlhf import example
from rlkit.rlhf.config import RLHFConfig
from rlkit.rlhf.data import DataError, PromptSet, load_preferences, load_prompt_sets, preference_triples
from rlkit.rlhf.policy import forward_responses, load_policy
from rlkit.rlhf.ppo_lm import train
from rlkit.rlhf.reward import CombinedReward, RewardComponent, RewardModel, is_batched, load_reward_model
from rlkit.rlhf.rollout import generate_samples, truncate_responses

TEMPLATE_END = "<|im_start|>assistant\n"


@pytest.fixture(scope="module")
def chat_model(tmp_path_factory) -> str:
    """The example's tiny chat model (no pad token), pretrained 60 steps (~4 s)."""
    return example.build_tiny_chat_model(str(tmp_path_factory.mktemp("models") / "tiny-chat"), steps=60, log=None)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("data")
    return {"prompts": example.write_prompts(str(folder / "prompts.jsonl"), n=60),
            "preferences": example.write_preferences(str(folder / "preferences.jsonl"), n=80)}


@pytest.fixture(scope="module")
def tokenizer(chat_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(chat_model)


def _rows(path: str) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f]


def _cfg(tmp_path, policy: str, **overrides) -> RLHFConfig:
    values = dict(task="custom", policy=policy, batch_size=8, num_minibatches=2, ppo_epochs=1, num_updates=2,
                  max_new_tokens=8, eval_samples=8, learning_rate=1e-3, device="cpu", run_dir=str(tmp_path / "runs"),
                  artifacts_dir=str(tmp_path / "artifacts"), rm_pairs=64, rm_epochs=1, rm_norm_samples=16,
                  checkpoint_interval=0)
    return RLHFConfig(**{**values, **overrides}).validate()


def _write_module(tmp_path, monkeypatch, name: str, source: str) -> None:
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, name, raising=False)  # a module of that name imported by an earlier test


# ---------------------------------------------------------------------------------
# 1. Prompt files
# ---------------------------------------------------------------------------------


def test_prompt_files_jsonl_csv_parquet_and_datasets_folder_read_alike(files, tokenizer, tmp_path):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = _rows(files["prompts"])
    csv_path = tmp_path / "prompts.csv"
    with open(csv_path, "w", newline="") as f:
        import csv

        writer = csv.DictWriter(f, ["prompt", "noun"])
        writer.writeheader()
        writer.writerows({"prompt": json.dumps(r["prompt"]), "noun": r["noun"]} for r in rows)
    import pandas as pd

    pd.DataFrame(rows).to_csv(tmp_path / "pandas.csv", index=False)  # cells as Python reprs: [{'role': ...}] (once strings)
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "prompts.parquet")
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "prompts_ds"))
    loaded = []
    for path in (files["prompts"], str(csv_path), str(tmp_path / "pandas.csv"), str(tmp_path / "prompts.parquet"),
                 str(tmp_path / "prompts_ds")):
        train_set, held = load_prompt_sets(RLHFConfig(prompts=path, eval_fraction=0.1), tokenizer, log=None)
        loaded.append((train_set.texts, held.texts, train_set.columns["noun"]))
        assert train_set.conversational and train_set.raw[0] == rows[[r["prompt"] for r in rows].index(train_set.raw[0])]["prompt"]
    assert all(x == loaded[0] for x in loaded)  # the same prompts, split and columns, whatever the file type
    texts, held_texts, nouns = loaded[0]
    assert len(texts) == 54 and len(held_texts) == 6  # eval_fraction 0.1 of 60
    assert all(t.startswith("<|im_start|>user\n") and t.endswith(TEMPLATE_END) for t in texts)  # add_generation_prompt
    assert all(n in t for n, t in zip(nouns, texts))  # the extra column stays aligned with its prompt


def test_string_prompts_messages_column_and_held_out_sources(tokenizer, tmp_path):
    import datasets

    strings = tmp_path / "strings.jsonl"
    strings.write_text("".join(json.dumps({"prompt": f"Once upon a time {i}", "id": i}) + "\n" for i in range(10)))
    train_set, held = load_prompt_sets(RLHFConfig(prompts=str(strings), eval_fraction=0.2), tokenizer, log=None)
    assert not train_set.conversational and sorted(train_set.texts + held.texts) == sorted(f"Once upon a time {i}" for i in range(10))
    assert len(held) == 2 and not set(train_set.texts) & set(held.texts)  # disjoint
    # a 'messages' column: the trailing assistant turn is dropped, the rest is the prompt
    messages = tmp_path / "messages.jsonl"
    messages.write_text(json.dumps({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]}) + "\n")
    train_set, held = load_prompt_sets(RLHFConfig(prompts=str(messages), eval_fraction=0.0), tokenizer, log=None)
    assert train_set.texts == ["<|im_start|>user\nHi<|im_end|>\n" + TEMPLATE_END] and held.texts == train_set.texts
    # an eval_prompts file, and a datasets folder's test split
    train_set, held = load_prompt_sets(RLHFConfig(prompts=str(strings), eval_prompts=str(messages)), tokenizer, log=None)
    assert len(train_set) == 10 and held.conversational
    datasets.DatasetDict({"train": datasets.Dataset.from_list([{"prompt": "a"}, {"prompt": "b"}]),
                          "test": datasets.Dataset.from_list([{"prompt": "c"}])}).save_to_disk(str(tmp_path / "dd"))
    train_set, held = load_prompt_sets(RLHFConfig(prompts=str(tmp_path / "dd")), tokenizer, log=None)
    assert train_set.texts == ["a", "b"] and held.texts == ["c"] and "'test' split" in held.source


def test_max_prompt_tokens_drops_long_prompts_and_says_how_many(tokenizer, tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps({"prompt": "word " * n}) + "\n" for n in (1, 2, 3, 30, 40, 1, 2, 50, 2, 1)))
    limit = len(tokenizer("word " * 3)["input_ids"])  # the 3-word prompt is the longest kept
    lines = []
    train_set, held = load_prompt_sets(RLHFConfig(prompts=str(path), eval_fraction=0.0, max_prompt_tokens=limit), tokenizer,
                                       log=lines.append)
    assert len(train_set) == 7 and train_set.dropped == 3
    assert all(len(tokenizer(t)["input_ids"]) <= limit for t in train_set.texts)
    assert any("dropped 3 training" in line and f"max_prompt_tokens = {limit}" in line for line in lines)


def test_data_errors_are_one_line_and_name_what_is_wrong(tokenizer, tmp_path, capsys, chat_model):
    def error(**values) -> str:
        with pytest.raises(DataError) as info:
            load_prompt_sets(RLHFConfig(**values), tokenizer, log=None)
        assert "\n" not in str(info.value)
        return str(info.value)

    assert "does not exist" in error(prompts=str(tmp_path / "missing.jsonl"))
    (tmp_path / "cols.jsonl").write_text(json.dumps({"question": "q", "answer": "a"}) + "\n")
    message = error(prompts=str(tmp_path / "cols.jsonl"), eval_fraction=0.0)
    assert "no 'prompt'" in message and "answer, question" in message and "row 1" in message
    (tmp_path / "bad.jsonl").write_text('{"prompt": "a"}\n{"prompt": \n')
    assert "line 2" in error(prompts=str(tmp_path / "bad.jsonl"))
    (tmp_path / "p.txt").write_text("x")
    assert "unknown file type '.txt'" in error(prompts=str(tmp_path / "p.txt"))
    (tmp_path / "folder").mkdir()
    assert "save_to_disk" in error(prompts=str(tmp_path / "folder"))
    (tmp_path / "long.jsonl").write_text(json.dumps({"prompt": "word " * 50}) + "\n")
    assert "all 1 prompts are longer" in error(prompts=str(tmp_path / "long.jsonl"), eval_fraction=0.0, max_prompt_tokens=4)
    no_template = type(tokenizer).from_pretrained(chat_model)
    no_template.chat_template = None
    (tmp_path / "conv.jsonl").write_text(json.dumps({"prompt": [{"role": "user", "content": "hi"}]}) + "\n")
    with pytest.raises(DataError, match="needs a chat template"):
        load_prompt_sets(RLHFConfig(prompts=str(tmp_path / "conv.jsonl"), eval_fraction=0.0), no_template, log=None)
    # through the CLI: exit code 2 and one line
    assert main(["rlhf", "rlhf-synthetic", "--task", "custom", "--policy", chat_model, "--reward", "rlkit.rlhf.example:mentions_noun",
                 "--prompts", str(tmp_path / "cols.jsonl"), "--run_dir", str(tmp_path / "runs"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no 'prompt'" in err
    with pytest.raises(ConfigError, match="task 'custom' has no gold"):
        config_from_dict(RLHFConfig, {"task": "custom", "reward": "gold"}, "test")


def test_custom_task_needs_a_prompt_file(chat_model, tmp_path):
    with pytest.raises(ValueError, match="task 'custom' needs prompts"):
        train(_cfg(tmp_path, chat_model, reward="rlkit.rlhf.example:mentions_noun"), progress=False)


def test_a_run_on_a_prompt_file_resumes_bit_for_bit(chat_model, files, tmp_path):
    """The batch prompts are a function of (seed, update): a resumed run draws what the uninterrupted one did."""
    import signal

    from safetensors.torch import load_file

    from rlkit.checkpoint import list_checkpoints
    from rlkit.runtime import Callback

    class SigtermAt(Callback):
        def on_update(self, run, iteration, stats):
            if iteration == 2:
                os.kill(os.getpid(), signal.SIGTERM)
            return True

    cfg = dict(prompts=files["prompts"], reward="rlkit.rlhf.example:mentions_noun", num_updates=3)
    full = train(_cfg(tmp_path, chat_model, **cfg), run_name="full", progress=False)
    cut = train(_cfg(tmp_path, chat_model, **cfg), run_name="cut", progress=False, callbacks=[SigtermAt()])
    assert cut.interrupted == signal.SIGTERM
    resumed = train(resume=str(tmp_path / "runs" / "cut"), progress=False)
    assert resumed.final == full.final
    weights = [load_file(os.path.join(list_checkpoints(str(tmp_path / "runs" / name))[-1], "model.safetensors"))
               for name in ("full", "cut")]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_resume_pins_the_runs_inputs_works_from_any_folder_and_a_finished_run_is_left_alone(chat_model, files,
                                                                                              tmp_path, monkeypatch):
    """Bugs: a resume trained on an edited prompt file without a word; relative paths in config.json made a
    resume from another folder fail; resuming a finished run evaluated again and rewrote summary.json."""
    import shutil
    import signal

    from rlkit.checkpoint import CheckpointError
    from rlkit.runtime import Callback

    class SigtermAt(Callback):
        def on_update(self, run, iteration, stats):
            if iteration == 1:
                os.kill(os.getpid(), signal.SIGTERM)
            return True

    data = tmp_path / "data"
    data.mkdir()
    shutil.copy2(files["prompts"], data / "prompts.jsonl")
    monkeypatch.chdir(tmp_path)  # relative paths, as a user types them
    cfg = _cfg(tmp_path, chat_model, prompts="data/prompts.jsonl", reward="rlkit.rlhf.example:mentions_noun",
               run_dir="runs", num_updates=2)
    assert train(cfg, run_name="cut", progress=False, callbacks=[SigtermAt()]).interrupted == signal.SIGTERM
    saved = json.load(open(tmp_path / "runs" / "cut" / "config.json"))
    assert saved["prompts"] == str(data / "prompts.jsonl")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    lines = (data / "prompts.jsonl").read_text().splitlines()
    (data / "prompts.jsonl").write_text("\n".join(lines[:20]) + "\n")  # the file changed underneath the run
    with pytest.raises(CheckpointError, match="prompts .* changed since the run started"):
        train(resume=str(tmp_path / "runs" / "cut"), progress=False)
    shutil.copy(files["prompts"], data / "prompts.jsonl")  # put back: the same bytes, a new mtime (once refused)
    done = train(resume=str(tmp_path / "runs" / "cut"), progress=False)  # from another folder: absolute paths
    assert done.updates == 2 and done.trained is None
    summary = (tmp_path / "runs" / "cut" / "summary.json").read_text()
    metrics = (tmp_path / "runs" / "cut" / "metrics.jsonl").read_text()
    again = train(resume=str(tmp_path / "runs" / "cut"), progress=False)
    assert again.trained == 0 and again.final == done.final
    assert (tmp_path / "runs" / "cut" / "summary.json").read_text() == summary
    assert (tmp_path / "runs" / "cut" / "metrics.jsonl").read_text() == metrics


def test_a_cached_reward_model_is_reused_only_for_its_own_settings(chat_model, files, tmp_path):
    """Bug: the proxy reward model trained for one policy / rm_* settings was reused silently for others.  Now a
    cached folder is reused only for the settings it records; others train their own sibling folder (so a run
    pinned to the first keeps it)."""
    from rlkit.errors import ConfigError
    from rlkit.rlhf.ppo_lm import check_cached_reward_model, default_reward_model_path, resolve_reward_model_path

    quiet = dict(progress=False, log=lambda *a: None)
    cfg = _cfg(tmp_path, chat_model, preferences=files["preferences"])
    path, report = resolve_reward_model_path(cfg, chat_model, **quiet)
    assert report is not None and os.path.isfile(os.path.join(path, "rlkit_reward_model_settings.json"))
    again, report = resolve_reward_model_path(cfg, chat_model, **quiet)
    assert again == path and report is None  # the same settings: reused
    other = _cfg(tmp_path, chat_model, preferences=files["preferences"], rm_epochs=3)
    sibling, report = resolve_reward_model_path(other, chat_model, **quiet)
    assert sibling != path and report is not None and "_rm_" in os.path.basename(sibling)
    assert resolve_reward_model_path(cfg, chat_model, **quiet) == (path, None)  # the first is still the first's
    with pytest.raises(ConfigError, match="rm_epochs 3 -> 1"):  # a folder that says other settings is refused
        check_cached_reward_model(cfg, sibling)
    assert default_reward_model_path(other) == sibling


# ---------------------------------------------------------------------------------
# 2. Preference files and reward models
# ---------------------------------------------------------------------------------


def test_preference_formats_explicit_implicit_conversational(tmp_path):
    user = [{"role": "user", "content": "Describe the cat."}]
    good, bad = [{"role": "assistant", "content": "great"}], [{"role": "assistant", "content": "dull"}]
    rows = [{"prompt": "Q: cat? A:", "chosen": " great", "rejected": " dull"},  # explicit, strings
            {"chosen": "Q: cat? A: great", "rejected": "Q: cat? A: dull"},  # implicit, strings
            {"prompt": user, "chosen": good, "rejected": bad},  # explicit, conversational
            {"chosen": user + good, "rejected": user + bad}]  # implicit, conversational
    triples = preference_triples(rows[:2], "prefs") + preference_triples(rows[2:], "prefs")  # one kind per file
    with pytest.raises(DataError, match="row 3: mixes string and conversational preferences"):
        preference_triples(rows, "prefs")
    assert triples[0] == ("Q: cat? A:", " great", " dull")
    assert triples[1] == ("Q: cat? A: ", "great", "dull")  # the shared beginning, up to a word boundary
    assert triples[2] == (user, good, bad) and triples[3] == (user, good, bad)
    with pytest.raises(DataError, match="need 'chosen' and 'rejected'.*columns found: chosen, prompt"):
        preference_triples([{"prompt": "p", "chosen": "c"}], "prefs")
    path = tmp_path / "prefs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows[:2] * 5))
    train_pairs, held, source = load_preferences(RLHFConfig(preferences=str(path), eval_fraction=0.2), log=None)
    assert len(train_pairs) == 8 and len(held) == 2 and "eval_fraction" in source


def test_reward_text_eos_convention_is_recorded_and_used_when_scoring(chat_model, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(chat_model, num_labels=1)
    rm = RewardModel(model, AutoTokenizer.from_pretrained(chat_model), append_eos=True)
    assert rm.text("Q: cat?", "great") == "Q: cat? great<|im_end|>"  # TRL: EOS appended to non-conversational text
    user = [{"role": "user", "content": "hi"}]
    assert rm.text(user, "great") == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\ngreat<|im_end|>\n"
    assert rm.text(user, [{"role": "assistant", "content": "great"}]) == rm.text(user, "great")  # training == scoring
    rm.save_pretrained(str(tmp_path / "rm"))
    loaded = load_reward_model(str(tmp_path / "rm"), append_eos=False)  # the recorded convention wins
    assert loaded.append_eos and loaded.text("Q", "a").endswith("<|im_end|>")
    assert torch.allclose(loaded(["Q: cat?"], ["great"]), rm(["Q: cat?"], ["great"]))
    # an rlkit reward model from before the setting (gain/bias, no flag) was trained without EOS
    config = json.load(open(tmp_path / "rm" / "config.json"))
    del config["rlkit_append_eos"]
    config["rlkit_reward_gain"] = 1.0
    json.dump(config, open(tmp_path / "rm" / "config.json", "w"))
    assert not load_reward_model(str(tmp_path / "rm")).append_eos
    with pytest.raises(ValueError, match="not a sequence classifier"):
        load_reward_model(chat_model)


def test_an_existing_two_label_classifier_scores_the_named_label(chat_model, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(chat_model, num_labels=2,
                                                               id2label={0: "NEGATIVE", 1: "POSITIVE"},
                                                               label2id={"NEGATIVE": 0, "POSITIVE": 1})
    torch.nn.init.normal_(model.score.weight)
    model.save_pretrained(str(tmp_path / "clf"))
    AutoTokenizer.from_pretrained(chat_model).save_pretrained(str(tmp_path / "clf"))
    rm = load_reward_model(str(tmp_path / "clf"), label="POSITIVE")
    texts = ["The cat is great.", "The dog is sad and dull."]
    scores = rm(["", ""], texts)
    tok = rm.tokenizer
    for text, score in zip(texts, scores):  # the POSITIVE logit at the last real token, one text at a time
        ids = tok([text + tok.eos_token], return_tensors="pt")
        with torch.no_grad():
            hidden = rm.model.base_model(**ids).last_hidden_state[:, -1]
        assert torch.allclose(score, rm.model.score(hidden)[0, 1], atol=1e-5)
    half = load_reward_model(str(tmp_path / "clf"), label="POSITIVE", dtype="bfloat16")  # dtype: the reward model too
    assert half.model.dtype == torch.bfloat16 and half(["", ""], texts).dtype == torch.float32
    assert torch.allclose(half(["", ""], texts), scores, atol=0.1 * scores.abs().max().item() + 0.05)
    with pytest.raises(ValueError, match=r"2 labels \(NEGATIVE, POSITIVE\): set reward_label"):
        load_reward_model(str(tmp_path / "clf"))
    with pytest.raises(ValueError, match="'happy' is not one of its labels"):
        load_reward_model(str(tmp_path / "clf"), label="happy")


def test_reward_model_cli_on_a_preference_file_beats_chance(chat_model, files, tmp_path, capsys):
    """Conversational preferences where the chosen answer says 'great': learnable, so held-out accuracy >> 0.5."""
    out = tmp_path / "rm"
    assert main(["reward-model", "rlhf-synthetic", "--task", "custom", "--policy", chat_model, "--preferences",
                 files["preferences"], "--prompts", files["prompts"], "--rm_epochs", "2", "--rm_batch_size", "16",
                 "--rm_learning_rate", "3e-3", "--rm_norm_samples", "16", "--eval_fraction", "0.25",
                 "--artifacts_dir", str(tmp_path / "art"), "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    report = json.load(open(out / "reward_model_report.json"))
    assert f"held-out pairwise accuracy: {report['heldout_accuracy']:.3f} on 20 pairs" in printed
    assert report["heldout_accuracy"] >= 0.85 and report["pairs_train"] == 60
    rm = load_reward_model(str(out))
    user = [{"role": "user", "content": "Describe the cat."}]
    assert float(rm([user], ["The cat is great."])[0]) > float(rm([user], ["The cat is dull."])[0])


# ---------------------------------------------------------------------------------
# 3. Reward functions: batched and per sample, combined with weights
# ---------------------------------------------------------------------------------


def test_batched_or_per_sample_is_told_by_the_signature():
    def trl_style(prompts, completions, **kwargs):
        return [0.0] * len(completions)

    def named(prompts, completions):
        return [0.0] * len(completions)

    def per_sample(prompt, response):
        return 0.0

    assert is_batched(trl_style) and is_batched(named) and is_batched(example.mentions_noun)
    assert not is_batched(per_sample) and not is_batched(lambda p, r: 0.0) and not is_batched(len)


def test_combined_rewards_weights_columns_and_none(tokenizer):
    seen = {}

    def batched(prompts, completions, noun, **kwargs):
        seen.update(prompts=prompts, completions=completions, noun=noun, kwargs=kwargs)
        return [1.0, None]

    prompts = PromptSet(["rendered a", "rendered b"], [[{"role": "user", "content": "a"}], [{"role": "user", "content": "b"}]],
                        {"noun": ["cat", "dog"], "id": [1, 2]})
    reward = CombinedReward([RewardComponent("batched", batched, 2.0, "batched"),
                             RewardComponent("length", lambda p, r: float(len(r)), 0.5, "per_sample")])
    total, parts = reward.score(prompts.texts, prompts.raw, prompts.columns, ["xx", "yyyy"])
    assert seen["prompts"] == prompts.raw and seen["noun"] == ["cat", "dog"] and seen["kwargs"] == {"id": [1, 2]}
    assert seen["completions"] == [[{"role": "assistant", "content": "xx"}], [{"role": "assistant", "content": "yyyy"}]]
    assert torch.equal(parts["length"], torch.tensor([2.0, 4.0]))
    assert torch.isnan(parts["batched"][1])  # None: 'does not apply', left out of that sample's sum (TRL)
    assert torch.equal(total, torch.tensor([2.0 * 1.0 + 0.5 * 2.0, 0.5 * 4.0]))


def test_prompt_file_edge_cases_and_model_paths_that_are_not_models(tokenizer, chat_model, tmp_path):
    """Bugs: empty prompts crashed generation (exit 70); a column missing from the first row was dropped for
    every row; eval_prompts naming a folder of splits used its first (train) split; a missing policy folder
    said 'OSError: check the path' (exit 8), a folder that is no model a tokenizer error naming nothing."""
    import datasets

    from rlkit.errors import ConfigError
    from rlkit.rlhf.policy import load_policy
    from rlkit.rlhf.reward import load_reward_model

    empty = tmp_path / "empty.jsonl"
    empty.write_text('{"prompt": "hello"}\n{"prompt": "  "}\n')
    with pytest.raises(DataError, match="row 2: the prompt is empty"):
        load_prompt_sets(RLHFConfig(prompts=str(empty), eval_fraction=0.0), tokenizer, log=None)
    ragged = tmp_path / "ragged.jsonl"
    ragged.write_text('{"prompt": "a"}\n{"prompt": "b", "noun": "cat"}\n{"prompt": "c", "noun": "dog"}\n')
    train_set, _ = load_prompt_sets(RLHFConfig(prompts=str(ragged), eval_fraction=0.0), tokenizer, log=None)
    assert train_set.columns == {"noun": [None, "cat", "dog"]}
    splits = datasets.DatasetDict({"train": datasets.Dataset.from_list([{"prompt": "train one"}] * 3),
                                   "test": datasets.Dataset.from_list([{"prompt": "held out"}] * 2)})
    splits.save_to_disk(str(tmp_path / "splits"))
    _, held = load_prompt_sets(RLHFConfig(prompts=str(ragged), eval_prompts=str(tmp_path / "splits")), tokenizer, log=None)
    assert held.texts == ["held out", "held out"] and "'test' split" in held.source
    with pytest.raises(ConfigError, match="policy '/no/such/model/folder': no such folder"):
        load_policy("/no/such/model/folder")
    with pytest.raises(ConfigError, match="is a folder but not a model folder"):
        load_policy(str(tmp_path))
    with pytest.raises(ConfigError, match="reward model .*: no such folder"):
        load_reward_model(str(tmp_path / "gone" / "rm"))
    assert main(["rlhf-export", str(tmp_path / "runs" / "nope"), str(tmp_path / "out")]) == 5


def test_a_tokenizer_reaching_past_the_models_embedding_is_refused(chat_model, tmp_path):
    """Bug: a tokenizer with more tokens than the model's embedding rows (Qwen2's tokenizer class adds
    <|endoftext|> to a byte-level vocabulary, say) crashed generation with torch's 'index out of range', exit 70."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlkit.errors import ConfigError
    from rlkit.rlhf.policy import load_policy

    tokenizer = AutoTokenizer.from_pretrained(chat_model)
    tokenizer.add_special_tokens({"pad_token": "<|pad|>"})
    AutoModelForCausalLM.from_pretrained(chat_model).save_pretrained(str(tmp_path / "mismatch"))
    tokenizer.save_pretrained(str(tmp_path / "mismatch"))
    with pytest.raises(ConfigError, match="tokenizer has .* tokens but the model's embedding has .* rows"):
        load_policy(str(tmp_path / "mismatch"))


def test_reward_label_picks_the_logit_of_several_label_models_beside_one_label_ones(chat_model, tmp_path):
    """Bug: reward_label applied to every reward model, so a 2-label classifier and a 1-label reward model could
    not be summed ('rmfixed has one label ('LABEL_0'), not reward_label 'POS'')."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from rlkit.rlhf.ppo_lm import make_reward

    tokenizer = AutoTokenizer.from_pretrained(chat_model)
    for name, labels in (("one", {0: "LABEL_0"}), ("two", {0: "NEG", 1: "POS"})):
        model = AutoModelForSequenceClassification.from_pretrained(chat_model, num_labels=len(labels), id2label=labels,
                                                                   label2id={v: k for k, v in labels.items()})
        model.save_pretrained(str(tmp_path / name))
        tokenizer.save_pretrained(str(tmp_path / name))
    cfg = _cfg(tmp_path, chat_model, reward_funcs=[str(tmp_path / "one"), str(tmp_path / "two")], reward_label="POS")
    reward, _, _ = make_reward(cfg, chat_model, "cpu", progress=False, log=lambda *a: None)
    assert [c.fn.label_index for c in reward.components] == [0, 1]
    alone = _cfg(tmp_path, chat_model, reward_funcs=[str(tmp_path / "one")], reward_label="POS")
    with pytest.raises(ValueError, match="has one label"):  # alone, a label the model lacks is still an error
        make_reward(alone, chat_model, "cpu", progress=False, log=lambda *a: None)


def test_csv_number_columns_reach_reward_functions_as_numbers(tmp_path):
    """Bug: a CSV's extra columns reached reward functions as strings ('6'), JSONL's and Parquet's as numbers."""
    from rlkit.rlhf.data import read_splits

    path = tmp_path / "p.csv"
    path.write_text("prompt,n,weight,name\n42,6,1.5,a\nhi,,2,b\n")
    rows = read_splits(str(path))["train"]
    assert rows == [{"prompt": "42", "n": 6, "weight": 1.5, "name": "a"}, {"prompt": "hi", "n": None, "weight": 2.0, "name": "b"}]


def test_a_functions_nan_or_text_is_an_error_and_all_none_scores_zero():
    """Bugs: a function returning NaN was silently dropped from the sum (the README: NaN stops the run), '7e3'
    scored 7000, and a completion every function returned None for stopped the run as 'non-finite rewards'."""
    from rlkit.errors import RewardFunctionError

    def score(fn):
        return CombinedReward([RewardComponent("f", fn, 1.0, "batched")]).score(["a", "b"], ["a", "b"], {}, ["x", "y"])[0]

    with pytest.raises(RewardFunctionError, match="returned nan for completion 1 .*return None to leave"):
        score(lambda prompts, completions, **kw: [1.0, float("nan")])
    with pytest.raises(RewardFunctionError, match="one float"):
        score(lambda prompts, completions, **kw: ["7e3", 1.0])
    assert score(lambda prompts, completions, **kw: (float(len(c)) for c in completions)).tolist() == [1.0, 1.0]
    with pytest.warns(UserWarning, match="returned None for some completions; they score 0"):
        assert score(lambda prompts, completions, **kw: [None, 2.0]).tolist() == [0.0, 2.0]


def test_batched_reward_functions_are_called_by_keyword_as_trl_calls_them():
    """Bug: batched functions were called by position, fn(prompts, completions, **columns): TRL's
    reward_len(completions, **kwargs) and trl.rewards.think_format_reward raised 'takes 1 positional argument',
    a (completions, prompts, **kwargs) function got the two swapped, and completion_ids was never passed."""
    prompts = [[{"role": "user", "content": "a"}], [{"role": "user", "content": "b"}]]
    completions = ["<think>x</think>yes", "no"]
    ids = [[5, 6, 2], [7, 2]]
    seen = {}

    def reward_len(completions, **kwargs):
        return [-abs(20 - len(c[0]["content"])) for c in completions]

    def swapped(completions, prompts, **kwargs):
        seen.update(completions=completions, prompts=prompts)
        return [0.0, 0.0]

    def keyword_only(*, prompts, completions, completion_ids):
        return [float(len(i)) for i in completion_ids]

    def rlkits_own(prompts, responses, noun):  # positional names other than completions: by position
        return [float(len(r)) for r in responses]

    from trl.rewards import think_format_reward

    reward = CombinedReward([RewardComponent(name, fn, 1.0, "batched") for name, fn in [
        ("reward_len", reward_len), ("swapped", swapped), ("keyword_only", keyword_only), ("own", rlkits_own),
        ("think", think_format_reward)]])
    assert all(is_batched(c.fn) for c in reward.components)
    _, parts = reward.score(["a", "b"], prompts, {"noun": ["cat", "dog"]}, completions, ids)
    assert parts["reward_len"].tolist() == [-1.0, -18.0] and parts["keyword_only"].tolist() == [3.0, 2.0]
    assert seen["prompts"] == prompts and seen["completions"][1] == [{"role": "assistant", "content": "no"}]
    assert parts["own"].tolist() == [1.0, 1.0]  # one-message conversations: a list of one dict each
    assert parts["think"].tolist() == [1.0, 0.0]


def test_reward_funcs_in_a_run_are_summed_and_logged_per_component(chat_model, files, tmp_path, monkeypatch):
    _write_module(tmp_path, monkeypatch, "my_rewards", """
        def short(prompt, response):          # per sample, on the rendered prompt and the decoded response
            assert prompt.endswith("<|im_start|>assistant\\n")
            return -len(response) / 10.0
    """)
    cfg = _cfg(tmp_path, chat_model, prompts=files["prompts"],
               reward_funcs=["rlkit.rlhf.example:mentions_noun", "my_rewards:short"], reward_weights=[1.0, 0.5])
    result = train(cfg, run_name="combo", progress=False)
    assert result.reward.startswith("1 * mentions_noun + 0.5 * short")
    for row in result.history:
        assert {"reward/mentions_noun", "reward/short"} <= set(row)
    with open(os.path.join(result.run_dir, "metrics.jsonl")) as f:
        updates = [r for r in map(json.loads, f) if r["kind"] == "update"]
    assert len(updates) == 2 and "reward/short" in updates[0]
    assert "reward/mentions_noun" in result.final
    config = json.load(open(os.path.join(result.run_dir, "config.json")))
    assert config["prompt_data"]["train"] == 54 and config["prompt_data"]["columns"] == ["noun"]
    with pytest.raises(ConfigError, match="reward_weights has 1 values for 2 reward_funcs"):
        config_from_dict(RLHFConfig, {"reward_funcs": ["model", "gold"], "reward_weights": [1.0]}, "test")
    assert config_from_dict(RLHFConfig, {"reward_funcs": "model,gold", "reward_weights": "1,0.5"}, "cli").reward_weights == [1.0, 0.5]


# ---------------------------------------------------------------------------------
# 4. Precision
# ---------------------------------------------------------------------------------


def test_a_bfloat16_checkpoint_trains_on_cpu_with_a_float32_value_head(chat_model, files, tmp_path):
    from transformers import AutoModelForCausalLM

    bf16 = str(tmp_path / "bf16")
    from transformers import AutoTokenizer

    AutoModelForCausalLM.from_pretrained(chat_model).to(torch.bfloat16).save_pretrained(bf16)
    AutoTokenizer.from_pretrained(chat_model).save_pretrained(bf16)
    policy, _ = load_policy(bf16, dtype="auto")
    assert next(policy.lm.parameters()).dtype == torch.bfloat16 and policy.value_head.weight.dtype == torch.float32
    assert next(load_policy(bf16, dtype="float32")[0].lm.parameters()).dtype == torch.float32
    before = {n: p.detach().clone() for n, p in policy.lm.named_parameters()}
    result = train(_cfg(tmp_path, bf16, prompts=files["prompts"], reward="rlkit.rlhf.example:mentions_noun",
                        dtype="auto", num_updates=2), run_name="bf16", progress=False)
    assert result.interrupted is None and all(all(map(torch.isfinite, map(torch.tensor, [h["policy_loss"], h["value_loss"]])))
                                              for h in result.history)
    trained = AutoModelForCausalLM.from_pretrained(result.checkpoint_dir)
    assert trained.dtype == torch.bfloat16
    changed = [n for n, p in trained.named_parameters() if not torch.equal(p, before[n])]
    assert changed  # the bf16 weights did move


# ---------------------------------------------------------------------------------
# 5. Rollouts: an explicit GenerationConfig, nothing inherited from the model folder
# ---------------------------------------------------------------------------------


def test_generation_config_json_of_the_model_folder_is_not_inherited(chat_model, tmp_path):
    """A folder whose generation_config.json has repetition_penalty 1.3 and no_repeat_ngram_size 1: the sampled
    tokens' log-probs under what the sampler drew from equal PPO's softmax(logits / T) ones (ratio error ~ 0)."""
    folder = str(tmp_path / "with_generation_config")
    shutil.copytree(chat_model, folder)
    with open(os.path.join(folder, "generation_config.json"), "w") as f:
        json.dump({"repetition_penalty": 1.3, "no_repeat_ngram_size": 1, "do_sample": False, "top_k": 5, "top_p": 0.5,
                   "temperature": 0.2}, f)
    policy, tokenizer = load_policy(folder)
    prompts = [json.loads(line) for line in open(example.write_prompts(str(tmp_path / "p.jsonl"), n=8))]
    texts = [tokenizer.apply_chat_template(r["prompt"], tokenize=False, add_generation_prompt=True) for r in prompts]
    torch.manual_seed(0)
    s = generate_samples(policy, tokenizer, texts, temperature=0.7, max_new_tokens=12, with_sampler_logprobs=True)
    logp, _, _ = forward_responses(policy, s.queries, s.query_mask, s.responses, s.response_mask, 0.7)
    mask = s.response_mask.bool()
    ratio_error = (s.sampler_logp[mask] - logp[mask]).exp().sub(1).abs().max()
    assert ratio_error < 1e-4, f"the sampler drew from another distribution: max |ratio - 1| = {ratio_error:.3f}"
    assert policy.lm.generation_config.repetition_penalty == 1.3  # the folder's file is left as it was


# ---------------------------------------------------------------------------------
# 6. Models without a pad token
# ---------------------------------------------------------------------------------


def test_a_model_without_pad_gets_an_existing_token_and_no_resize(chat_model):
    from transformers import AutoTokenizer

    raw = AutoTokenizer.from_pretrained(chat_model)
    assert raw.pad_token is None and raw.unk_token is None
    policy, tokenizer = load_policy(chat_model, lora=True, lora_r=2, lora_alpha=4)
    assert len(tokenizer) == len(raw) == policy.lm.get_input_embeddings().weight.shape[0]  # nothing added
    assert tokenizer.pad_token_id == tokenizer.eos_token_id  # no unk: EOS pads, the masks do the work
    # with PAD == EOS the end is the first EOS by position; the padding after it is masked, not the EOS
    eos = tokenizer.eos_token_id
    responses = torch.tensor([[5, eos, eos, eos], [5, 6, 7, 8], [eos, eos, eos, eos]])
    out, mask, ended = truncate_responses(responses, eos, eos)
    assert mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]] and ended.tolist() == [True, False, True]


def test_lora_run_of_a_no_pad_model_loads_with_the_printed_line_and_exports(chat_model, files, tmp_path, capsys):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run = tmp_path / "runs" / "lora"
    assert main(["rlhf", "rlhf-synthetic", "--task", "custom", "--policy", chat_model, "--prompts", files["prompts"],
                 "--reward", "rlkit.rlhf.example:mentions_noun", "--lora", "true", "--lora_r", "4", "--lora_alpha", "8",
                 "--num_updates", "2", "--batch_size", "8", "--num_minibatches", "2", "--ppo_epochs", "1",
                 "--max_new_tokens", "8", "--eval_samples", "8", "--learning_rate", "1e-2", "--device", "cpu",
                 "--run_dir", str(tmp_path / "runs"), "--run-name", "lora", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert f"checkpoint: {run / 'checkpoint'}  (PeftModel.from_pretrained(base, path)" in printed
    assert "prompts: 54 for training" in printed and "dropped" not in printed.split("prompts:")[1].split("\n")[0]
    # the printed load line, as a user would type it
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(chat_model), str(run / "checkpoint")).eval()
    adapter = set(json.load(open(run / "checkpoint" / "adapter_config.json")).get("modules_to_save") or [])
    assert not adapter  # no embedding carried in the adapter
    tokenizer = AutoTokenizer.from_pretrained(str(run / "checkpoint"))
    ids = tokenizer(["<|im_start|>user\nDescribe the cat.<|im_end|>\n<|im_start|>assistant\n"], return_tensors="pt")
    with torch.no_grad():
        expected = model(**ids).logits

    # 7. rlkit rlhf-export RUN OUT --merge: a plain folder transformers loads and generates with
    out = tmp_path / "export"
    assert main(["rlhf-export", str(run), str(out), "--merge"]) == 0
    assert "merged" in capsys.readouterr().out
    exported = AutoModelForCausalLM.from_pretrained(str(out)).eval()
    assert not (out / "adapter_config.json").exists()
    with torch.no_grad():
        assert torch.allclose(exported(**ids).logits, expected, atol=1e-5)
        generated = exported.generate(**ids, max_new_tokens=6)
    assert generated.shape[1] > ids["input_ids"].shape[1]
    card = (out / "README.md").read_text()
    assert chat_model in card and files["prompts"] in card and "mentions_noun" in card and "k1_in_reward, beta 0.05" in card
    assert "| score |" in card and "| kl_k1 |" in card
    generation = json.load(open(out / "generation_config.json"))
    assert generation["temperature"] == 0.7 and generation["top_k"] == 0 and generation["do_sample"] is True
    from rlkit.errors import EXIT_CODES

    assert main(["rlhf-export", str(run), str(out)]) == EXIT_CODES["export"]  # not over a non-empty folder
    assert "exists and is not empty" in capsys.readouterr().err
    # without --merge, from the resumable checkpoint: the adapter folder, which transformers loads onto its base
    adapter_out = tmp_path / "export_adapter"
    assert main(["rlhf-export", str(run / "checkpoints" / "update_0000002"), str(adapter_out)]) == 0
    assert (adapter_out / "adapter_config.json").exists() and (adapter_out / "README.md").exists()
    with torch.no_grad():
        assert torch.allclose(AutoModelForCausalLM.from_pretrained(str(adapter_out)).eval()(**ids).logits, expected, atol=1e-5)


def test_reward_model_synthetic_with_a_no_pad_policy_does_not_crash(chat_model, tmp_path, capsys):
    """Was IndexError: the policy's tokenizer got a new <|pad|> the reward model's embeddings did not have."""
    assert main(["reward-model", "rlhf-synthetic", "--policy", chat_model, "--rm_pairs", "32", "--rm_norm_samples", "16",
                 "--rm_epochs", "1", "--max_new_tokens", "6", "--artifacts_dir", str(tmp_path / "art"), "--no-progress"]) == 0
    assert "held-out pairwise accuracy" in capsys.readouterr().out


# ---------------------------------------------------------------------------------
# The whole example through the CLI (learning: slow)
# ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_example_end_to_end_reward_model_then_ppo_raises_the_proxy_reward(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    paths = example.write_example("demo", log=None)
    assert main(["reward-model", paths["recipe"], "--no-progress"]) == 0
    printed = capsys.readouterr().out
    accuracy = float(printed.split("held-out pairwise accuracy: ")[1].split()[0])
    assert accuracy >= 0.9
    assert main(["rlhf", paths["recipe"], "--run-name", "e2e", "--no-progress"]) == 0
    summary = json.load(open(tmp_path / "demo" / "runs" / "e2e" / "summary.json"))
    assert summary["final"]["reward/model"] > summary["initial"]["reward/model"] + 1.0
    assert main(["rlhf-export", "demo/runs/e2e", "demo/export", "--merge"]) == 0
    from transformers import AutoModelForCausalLM, AutoTokenizer

    exported = AutoModelForCausalLM.from_pretrained("demo/export")
    tokenizer = AutoTokenizer.from_pretrained("demo/export")
    ids = tokenizer("The cat", return_tensors="pt").input_ids
    assert exported.generate(ids, max_new_tokens=4, do_sample=False).shape[1] > ids.shape[1]


@pytest.mark.slow
def test_the_same_through_the_python_api(tmp_path, monkeypatch):
    """rlkit.rlhf.load_config / train_reward_model / train / export_policy: what the three CLI commands run, from Python."""
    import rlkit.rlhf as rlhf

    monkeypatch.chdir(tmp_path)
    paths = example.write_example("demo", log=None)
    cfg = rlhf.load_config(paths["recipe"])
    report = rlhf.train_reward_model(cfg, progress=False)
    assert report["heldout_accuracy"] >= 0.9
    assert report["heldout_accuracy"] > report["heldout_accuracy_before_training"] + 0.2
    result = rlhf.train(cfg, run_name="py", progress=False)
    assert result.final["reward/model"] > result.initial["reward/model"] + 1.0
    rlhf.export_policy(result.run_dir, "demo/export-py", merge=True)
    assert os.path.isfile(os.path.join("demo", "export-py", "config.json"))


def test_float16_training_is_refused_and_a_nan_reward_model_is_never_saved(chat_model, files, tmp_path, monkeypatch):
    """Bugs: dtype = 'float16' trained with Adam in float16 (its epsilon underflows): the reward model came out all
    NaN, was saved and cached, and `rlkit reward-model` exited 0; a full fine-tune took steps ~100x too large."""
    from rlkit.rlhf import reward
    from rlkit.rlhf.ppo_lm import default_reward_model_path, resolve_reward_model_path
    from rlkit.runtime import NonFiniteError

    quiet = dict(progress=False, log=lambda *a: None)
    with pytest.raises(ConfigError, match="dtype = 'float16' cannot train the policy.*or lora = true"):
        train(_cfg(tmp_path, chat_model, prompts=files["prompts"], reward="rlkit.rlhf.example:mentions_noun",
                   dtype="float16", lora=False), progress=False)
    half = _cfg(tmp_path, chat_model, preferences=files["preferences"], dtype="float16")
    with pytest.raises(ConfigError, match="dtype = 'float16' cannot train the reward model"):
        resolve_reward_model_path(half, chat_model, **quiet)
    monkeypatch.setattr(reward, "bradley_terry_loss", lambda chosen, rejected: (chosen - rejected).sum() * float("nan"))
    cfg = _cfg(tmp_path, chat_model, preferences=files["preferences"])
    with pytest.raises(NonFiniteError, match="the reward model's loss is nan at step 1; nothing was saved"):
        resolve_reward_model_path(cfg, chat_model, **quiet)
    assert not os.path.exists(default_reward_model_path(cfg))


def test_reward_model_training_never_overwrites_a_folder_of_someone_elses(chat_model, files, tmp_path):
    """Bug: `rlkit reward-model` with reward_model (or --out) naming an existing model trained into it, silently."""
    victim = tmp_path / "my-model"
    shutil.copytree(chat_model, victim)
    before = sorted(os.listdir(victim))
    code = main(["reward-model", "rlhf-synthetic", "--task", "custom", "--policy", chat_model, "--preferences",
                 files["preferences"], "--rm_epochs", "1", "--rm_norm_samples", "8", "--device", "cpu",
                 "--out", str(victim), "--no-progress"])
    assert code == 6 and sorted(os.listdir(victim)) == before


def test_a_cached_reward_model_is_keyed_by_what_its_normalisation_sampled(chat_model, files, tmp_path):
    """Bug: the gain / bias are fitted on policy samples of the prompts with the sampling settings, and a cached
    model was reused for other prompts, temperature or max_new_tokens."""
    from rlkit.rlhf.ppo_lm import default_reward_model_path, reward_model_settings

    cfg = _cfg(tmp_path, chat_model, preferences=files["preferences"], prompts=files["prompts"])
    paths = {default_reward_model_path(_cfg(tmp_path, chat_model, preferences=files["preferences"], **change))
             for change in ({}, {"temperature": 1.5}, {"max_new_tokens": 4}, {"prompts": files["prompts"]})}
    assert len(paths) == 1  # nothing trained yet: the plain folder for all
    settings = reward_model_settings(cfg)
    assert settings["prompts"] == os.path.abspath(files["prompts"]) and settings["policy"] == os.path.abspath(chat_model)
    assert reward_model_settings(_cfg(tmp_path, chat_model, preferences=files["preferences"], temperature=1.5)) != \
        reward_model_settings(_cfg(tmp_path, chat_model, preferences=files["preferences"]))


def test_rlhf_export_keeps_the_runs_dtype_and_names_a_missing_base(chat_model, files, tmp_path, capsys):
    """Bugs: a bfloat16 LoRA run merged into float32 weights (not the model that was trained and evaluated, twice
    the size); with its base folder gone the export said only "OSError: check the path"."""
    base = tmp_path / "base"
    shutil.copytree(chat_model, base)
    result = train(_cfg(tmp_path, str(base), prompts=files["prompts"], reward="rlkit.rlhf.example:mentions_noun",
                        lora=True, lora_r=4, lora_alpha=8, dtype="bfloat16", num_updates=1), run_name="bf16",
                   progress=False)
    assert main(["rlhf-export", result.run_dir, str(tmp_path / "merged"), "--merge"]) == 0
    assert json.load(open(tmp_path / "merged" / "config.json"))["dtype"] == "bfloat16"
    shutil.rmtree(base)
    capsys.readouterr()
    assert main(["rlhf-export", result.run_dir, str(tmp_path / "again"), "--merge"]) == 2
    err = capsys.readouterr().err.strip()
    assert "the run's base policy (policy_resolved)" in err and str(base) in err and len(err.splitlines()) == 1


def test_a_trl_style_reward_fn_argument_is_called_as_reward_funcs_are(chat_model, files, tmp_path):
    """Bug: train(cfg, reward_fn=f) called every f as f(rendered_prompts, completions), positionally: rlkit's own
    example (prompts, completions, noun, **kwargs) raised, and so did TRL's f(completions, **kwargs)."""
    from rlkit.rlhf.example import mentions_noun

    seen = {}

    def by_length(completions, **kwargs):
        seen.update(kwargs)
        return [float(len(c[0]["content"])) for c in completions]

    for fn in (mentions_noun, by_length, lambda prompts, responses: [0.5] * len(responses)):
        result = train(_cfg(tmp_path, chat_model, prompts=files["prompts"], num_updates=1), run_name=None,
                       progress=False, reward_fn=fn)
        assert result.updates == 1
    assert {"prompts", "completion_ids", "noun"} <= set(seen)


def test_a_string_prompt_beside_conversational_pairs_is_taken_as_implicit_as_trl_does():
    """Bug: {"prompt": "The sky is", "chosen": [user, assistant], "rejected": [user, assistant]}, a row TRL's
    maybe_extract_prompt reads (the prompt extracted from the pair), was refused."""
    user = {"role": "user", "content": "The sky is"}
    row = {"prompt": "The sky is", "chosen": [user, {"role": "assistant", "content": "blue."}],
           "rejected": [user, {"role": "assistant", "content": "green."}]}
    ((prompt, chosen, rejected),) = preference_triples([row], "prefs.jsonl")
    assert prompt == [user] and chosen == [{"role": "assistant", "content": "blue."}]
    assert rejected == [{"role": "assistant", "content": "green."}]
    with pytest.raises(DataError, match="'prompt' must be a string or a list"):
        preference_triples([{**row, "prompt": 3}], "prefs.jsonl")


def test_text_longer_than_the_models_context_is_one_line_not_a_bug_in_rlkit(chat_model, tmp_path, capsys):
    """Bug: a prompt (or preference text) past a GPT-2's n_positions ended in 'unexpected IndexError ... a bug in
    rlkit', exit 70."""
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    tokenizer = AutoTokenizer.from_pretrained(chat_model)
    short = tmp_path / "short-gpt2"
    GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_positions=24, n_embd=16, n_layer=1, n_head=2)).save_pretrained(short)
    tokenizer.save_pretrained(short)
    prompts = tmp_path / "long.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": "the cat sat on the mat " * (8 + i % 3), "noun": "cat"}) + "\n"
                               for i in range(20)))
    capsys.readouterr()
    code = main(["rlhf", "rlhf-synthetic", "--task", "custom", "--policy", str(short), "--prompts", str(prompts),
                 "--reward", "rlkit.rlhf.example:mentions_noun", "--batch_size", "4", "--num_minibatches", "1",
                 "--num_updates", "1", "--max_new_tokens", "4", "--eval_samples", "4", "--device", "cpu",
                 "--run_dir", str(tmp_path / "runs"), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "more than the model's context of 24 positions: set max_prompt_tokens" in err, err
    assert len(err.splitlines()) == 1


def test_a_prefilled_assistant_turn_is_continued_and_rewarded_as_trl_does(chat_model, tokenizer):
    """Bug: a conversational prompt ending with an assistant message (the start of the answer) was closed and a new
    assistant turn opened; reward functions got the continuation alone and the prefill still in the prompt."""
    from rlkit.rlhf.data import render_chat

    prompt = [{"role": "user", "content": "Describe the cat."}, {"role": "assistant", "content": "The cat is"}]
    text = render_chat(tokenizer, prompt, add_generation_prompt=True)
    assert text.endswith("<|im_start|>assistant\nThe cat is") and text.count("<|im_start|>assistant") == 1
    seen = {}

    def judge(prompts, completions, **kwargs):
        seen.update(prompts=prompts, completions=completions)
        return [1.0] * len(completions)

    RewardComponent("judge", judge, 1.0, "batched")([text], [prompt], {}, [" sleepy."])
    assert seen["prompts"] == [prompt[:1]] and seen["completions"] == [[{"role": "assistant", "content": "The cat is sleepy."}]]
    from transformers import AutoModelForSequenceClassification

    scorer = RewardModel(AutoModelForSequenceClassification.from_pretrained(chat_model, num_labels=1), tokenizer)
    model_text = scorer.text(prompt, " sleepy.")
    assert model_text.count("<|im_start|>assistant") == 1 and "The cat is sleepy." in model_text


def test_a_misspelled_lora_target_module_is_refused_and_a_reward_module_beside_the_recipe_imports(chat_model, tmp_path,
                                                                                                     monkeypatch):
    """Bugs: peft took 'q_proj,vproj' and adapted q_proj alone, unsaid; `reward = "myrewards:great"` for a file in
    the current folder failed under the `rlkit` console script (its sys.path lacks the current folder)."""
    import subprocess

    from transformers import AutoModelForCausalLM

    linear = sorted({n.rsplit(".", 1)[-1] for n, m in AutoModelForCausalLM.from_pretrained(chat_model).named_modules()
                     if isinstance(m, torch.nn.Linear) and n})
    with pytest.raises(ConfigError, match="lora_target_modules names 'vproj', which no module"):
        load_policy(chat_model, lora=True, lora_target_modules=f"{linear[0]},vproj")
    (tmp_path / "myrewards.py").write_text("def great(prompt, response):\n    return 1.0\n")
    probe = ("import sys; sys.path = [p for p in sys.path if p not in ('', '.')]; "
             "from rlkit.rlhf.reward import load_callable; print(load_callable('myrewards:great')('p', 'r'))")
    out = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "1.0", out.stderr[-500:]
