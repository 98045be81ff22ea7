"""Prompt and preference data in TRL's conventions, from JSONL, CSV, Parquet or a local `datasets` folder.

Prompts (``prompts = "path"``):

* a ``prompt`` column of strings, given to the policy as they are; or
* a ``prompt`` column of conversations (lists of ``{"role", "content"}``), or a ``messages``
  column (trailing assistant turns dropped), rendered with the policy tokenizer's chat template
  with ``add_generation_prompt=True``.

Every other column travels with its prompt and reaches batched reward functions as a keyword
list (TRL's ``fn(prompts, completions, **columns)``).  Reward functions and reward models get the
prompt as it is in the file (a string or the conversation), not the rendered text.

Preferences (``preferences = "path"``): ``prompt`` + ``chosen`` + ``rejected`` (explicit prompt) or
``chosen`` + ``rejected`` that both contain the prompt (implicit prompt; the shared beginning is
the prompt), strings or conversations.

Held-out rows: an ``eval_prompts`` / ``eval_preferences`` file, else a datasets folder's ``test``
(or ``validation``) split, else ``eval_fraction`` of the rows (a fixed shuffle by task_seed).
Every reading error is one line naming the file and, where it applies, the row and the columns found.
"""

from __future__ import annotations

import csv
import json
import os
import random
import re
from dataclasses import dataclass, field
from typing import Any

SUFFIXES = (".jsonl", ".json", ".csv", ".tsv", ".parquet")
HELD_OUT_SPLITS = ("test", "validation", "eval")


class DataError(ValueError):
    """A prompt / preference file that cannot be used; the message is one line."""


# ---------------------------------------------------------------------------------
# Reading rows
# ---------------------------------------------------------------------------------


def read_splits(path: str) -> dict[str, list[dict]]:
    """{split: rows} of a file ({'train': rows}) or a local `datasets` folder (its splits)."""
    if not path:
        raise DataError("no data file given")
    if not os.path.exists(path):
        raise DataError(f"data file {path!r} does not exist")
    if os.path.isdir(path):
        return _read_datasets_folder(path)
    suffix = os.path.splitext(path)[1].lower()
    if suffix in (".jsonl", ".json"):
        return {"train": _read_json(path)}
    if suffix in (".csv", ".tsv"):
        return {"train": _read_csv(path, "\t" if suffix == ".tsv" else ",")}
    if suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise DataError(f"{path}: reading Parquet needs pyarrow (pip install pyarrow)") from None
        try:
            return {"train": pq.read_table(path).to_pylist()}
        except Exception as error:  # pyarrow's errors are many kinds
            raise DataError(f"{path}: not a readable Parquet file ({str(error).splitlines()[0]})") from None
    raise DataError(f"{path}: unknown file type {suffix or '(none)'!r}; use one of {', '.join(SUFFIXES)} "
                    "or a folder written by datasets' save_to_disk")


def _read_json(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        text = f.read()
    stripped = text.lstrip()
    if stripped.startswith("["):  # one JSON list of objects
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as error:
            raise DataError(f"{path}: not valid JSON ({error})") from None
    else:  # JSON lines
        rows = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise DataError(f"{path}: line {number} is not valid JSON ({error.msg})") from None
    for number, row in enumerate(rows, start=1):
        if not isinstance(row, dict):
            raise DataError(f"{path}: row {number} is a {type(row).__name__}, not an object with columns")
    return rows


def _message_list(text: str):
    """A CSV cell's list of messages: JSON, or the Python repr that ``pandas.DataFrame.to_csv`` writes for a column
    of lists of dicts (single quotes); None when it is neither."""
    import ast

    try:
        return json.loads(text)
    except json.JSONDecodeError:
        pass
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return None


def _read_csv(path: str, delimiter: str) -> list[dict]:
    """CSV rows; a cell holding a list of {"role", "content"} messages (JSON, or pandas' Python repr) becomes that
    conversation, and a
    column (other than the text ones) whose every cell is an int (or a float) holds numbers, empty cells None."""
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f, delimiter=delimiter))
    for row in rows:
        for key, value in row.items():
            if isinstance(value, str) and re.match(r"\s*\[\s*\{", value):
                parsed = _message_list(value)
                if is_conversation(parsed):
                    row[key] = parsed
    text_columns = {"prompt", "messages", "chosen", "rejected"}
    for key in {k for row in rows for k in row} - text_columns:  # numbers as numbers, as datasets' CSV reader types them
        cells = [row.get(key) for row in rows]
        for kind in (int, float):
            try:
                typed = [None if c is None or c == "" else kind(c) for c in cells]
            except (TypeError, ValueError):
                continue
            if any(t is not None for t in typed):
                for row, value in zip(rows, typed):
                    row[key] = value
            break
    return rows


def _read_datasets_folder(path: str) -> dict[str, list[dict]]:
    try:
        import datasets
    except ImportError:
        raise DataError(f"{path} is a folder: reading a `datasets` folder needs the datasets package") from None
    try:
        loaded = datasets.load_from_disk(path)
    except (FileNotFoundError, ValueError) as error:
        raise DataError(f"{path} is a folder but not one written by datasets' save_to_disk ({str(error).splitlines()[0]})") from None
    if isinstance(loaded, datasets.DatasetDict):
        return {name: split.to_list() for name, split in loaded.items()}
    return {"train": loaded.to_list()}


def train_and_held_out(path: str, eval_path: str, eval_fraction: float, seed: int, what: str, check=None
                       ) -> tuple[list[dict], list[dict], str]:
    """(training rows, held-out rows, where the held-out rows come from); ``check(row, where)`` runs on
    the first row before anything is split, so a wrong file says what is wrong with it first."""
    splits = read_splits(path)
    train_name = "train" if "train" in splits else next(iter(splits))
    train = splits[train_name]
    if not train:
        raise DataError(f"{path}: no rows")
    if check is not None:
        check(train[0], f"{path}: row 1")
    if eval_path:  # a folder of several splits: its held-out one ('test', ...), else its only one
        eval_splits = read_splits(eval_path)
        name = next((n for n in HELD_OUT_SPLITS if n in eval_splits), None)
        if name is None and len(eval_splits) > 1:
            raise DataError(f"{eval_path}: splits {', '.join(eval_splits)}, none of them a held-out one "
                            f"({', '.join(HELD_OUT_SPLITS)}); save the held-out rows alone or as one of those")
        name = name or next(iter(eval_splits))
        return train, eval_splits[name], eval_path if len(eval_splits) == 1 else f"the '{name}' split of {eval_path}"
    for name in HELD_OUT_SPLITS:
        if name in splits and name != train_name:
            return train, splits[name], f"the '{name}' split of {path}"
    if eval_fraction <= 0:
        return train, list(train), f"the training {what} (eval_fraction = 0)"
    if len(train) < 2:
        raise DataError(f"{path}: {len(train)} row, too few to hold out eval_fraction = {eval_fraction} "
                        f"(give eval_{what} or eval_fraction = 0)")
    order = list(range(len(train)))
    random.Random(seed).shuffle(order)
    n_held = min(len(train) - 1, max(1, round(len(train) * eval_fraction)))
    held = set(order[:n_held])
    return ([r for i, r in enumerate(train) if i not in held], [r for i, r in enumerate(train) if i in held],
            f"{path} (eval_fraction {eval_fraction})")


# ---------------------------------------------------------------------------------
# Conversations
# ---------------------------------------------------------------------------------


def is_conversation(value: Any) -> bool:
    """A non-empty list of {"role", "content"} messages."""
    return (isinstance(value, list) and len(value) > 0
            and all(isinstance(m, dict) and "role" in m and "content" in m for m in value))


def _strip_leading_bos(text: str, tokenizer) -> str:
    """A chat template that writes the BOS text itself, for a tokenizer that adds BOS again, would give two."""
    bos = getattr(tokenizer, "bos_token", None)
    if bos and text.startswith(bos):
        ids = tokenizer("x")["input_ids"]
        if ids and ids[0] == tokenizer.bos_token_id:
            return text[len(bos) :]
    return text


def render_chat(tokenizer, messages: list[dict], add_generation_prompt: bool, who: str = "the tokenizer") -> str:
    """messages -> text with the tokenizer's chat template (the BOS left to the tokenizer)."""
    if not getattr(tokenizer, "chat_template", None):
        raise DataError(f"conversational data needs a chat template, and {who} has none "
                        "(set tokenizer.chat_template and save it with the model, or use string prompts)")
    if add_generation_prompt and messages and messages[-1].get("role") == "assistant":
        # a prefill ("The cat is"): the response continues that message, as TRL's maybe_apply_chat_template renders it
        text = tokenizer.apply_chat_template(messages, tokenize=False, continue_final_message=True)
    else:
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    return _strip_leading_bos(text, tokenizer)


def split_prefill(prompt: Any) -> tuple[Any, str]:
    """(the prompt without a final assistant message, that message's text): a conversation that ends with the
    start of the answer; ``(prompt, "")`` for anything else."""
    if is_conversation(prompt) and prompt and prompt[-1].get("role") == "assistant":
        return list(prompt[:-1]), str(prompt[-1].get("content", ""))
    return prompt, ""


# ---------------------------------------------------------------------------------
# Prompts
# ---------------------------------------------------------------------------------


@dataclass
class PromptSet:
    """Prompts as the policy sees them (``texts``) and as the file has them (``raw``), plus the other columns."""

    texts: list[str]
    raw: list[Any]
    columns: dict[str, list] = field(default_factory=dict)
    source: str = ""
    conversational: bool = False
    dropped: int = 0

    @classmethod
    def from_texts(cls, texts: list[str], source: str = "") -> PromptSet:
        return cls(list(texts), list(texts), {}, source)

    def __len__(self) -> int:
        return len(self.texts)

    def select(self, indices: list[int]) -> PromptSet:
        return PromptSet([self.texts[i] for i in indices], [self.raw[i] for i in indices],
                         {k: [v[i] for i in indices] for k, v in self.columns.items()}, self.source, self.conversational)

    def sample(self, n: int, seed: int) -> PromptSet:
        """n prompts drawn without replacement (each pass a fresh permutation when n > len), a function of seed only."""
        rng = random.Random(seed)
        indices: list[int] = []
        while len(indices) < n:
            order = list(range(len(self)))
            rng.shuffle(order)
            indices += order[: n - len(indices)]
        return self.select(indices)

    def first(self, n: int) -> PromptSet:
        """The first n prompts (evaluation: a fixed set)."""
        return self.select(list(range(min(n, len(self)))))


def prompt_of_row(row: dict, where: str) -> Any:
    """The row's prompt: a string or a conversation (TRL's 'prompt', or 'messages' without its last assistant turns)."""
    if "prompt" in row:
        value = row["prompt"]
        if isinstance(value, str) or is_conversation(value):
            return value
        raise DataError(f"{where}: 'prompt' must be a string or a list of {{\"role\", \"content\"}} messages, "
                        f"got {type(value).__name__}")
    if "messages" in row:
        value = row["messages"]
        if not is_conversation(value):
            raise DataError(f"{where}: 'messages' must be a list of {{\"role\", \"content\"}} messages")
        while value and value[-1]["role"] == "assistant":
            value = value[:-1]
        if not value:
            raise DataError(f"{where}: 'messages' has only assistant turns, no prompt")
        return value
    raise DataError(f"{where}: no 'prompt' (or 'messages') column; columns found: {', '.join(sorted(row)) or 'none'}")


def build_prompt_set(rows: list[dict], tokenizer, source: str, max_prompt_tokens: int = 0) -> PromptSet:
    """Render each row's prompt for the policy; drop those over max_prompt_tokens (counted in ``dropped``)."""
    if not rows:
        raise DataError(f"{source}: no prompts")
    raw = [prompt_of_row(row, f"{source}: row {i + 1}") for i, row in enumerate(rows)]
    kinds = {isinstance(r, str) for r in raw}
    if len(kinds) > 1:
        raise DataError(f"{source}: mixes string and conversational prompts; use one kind per file")
    conversational = not isinstance(raw[0], str)
    texts = [render_chat(tokenizer, r, add_generation_prompt=True, who="the policy's tokenizer") if conversational else r
             for r in raw]
    empty = next((i for i, text in enumerate(texts) if not text.strip()), None)
    if empty is not None:
        raise DataError(f"{source}: row {empty + 1}: the prompt is empty; the policy needs at least one token to "
                        "continue (remove the row, or give it text)")
    skip = {"prompt", "messages"}
    names = list(dict.fromkeys(k for row in rows for k in row if k not in skip))  # every row's, as datasets does
    columns = {k: [row.get(k) for row in rows] for k in names}  # None where a row lacks the column
    prompts = PromptSet(texts, raw, columns, source, conversational)
    if max_prompt_tokens:
        lengths = [len(ids) for ids in tokenizer(texts)["input_ids"]]
        keep = [i for i, n in enumerate(lengths) if n <= max_prompt_tokens]
        if not keep:
            raise DataError(f"{source}: all {len(texts)} prompts are longer than max_prompt_tokens = {max_prompt_tokens} "
                            f"(the shortest has {min(lengths)} tokens)")
        dropped = len(texts) - len(keep)
        prompts = prompts.select(keep)
        prompts.dropped = dropped
    return prompts


def load_prompt_sets(cfg, tokenizer, log=print) -> tuple[PromptSet, PromptSet]:
    """(training prompts, held-out prompts) of cfg.prompts, length-filtered; logs what was read and dropped."""
    train_rows, held_rows, held_from = train_and_held_out(cfg.prompts, cfg.eval_prompts, cfg.eval_fraction, cfg.task_seed,
                                                          "prompts", check=prompt_of_row)
    train = build_prompt_set(train_rows, tokenizer, cfg.prompts, cfg.max_prompt_tokens)
    held = build_prompt_set(held_rows, tokenizer, held_from, cfg.max_prompt_tokens)
    if log:
        kind = "conversational, chat template applied" if train.conversational else "strings"
        extra = f"; extra columns for reward functions: {', '.join(train.columns)}" if train.columns else ""
        log(f"prompts: {len(train)} for training from {cfg.prompts} ({kind}), {len(held)} held out from {held_from}{extra}")
        if cfg.max_prompt_tokens:
            log(f"prompts: dropped {train.dropped} training and {held.dropped} held-out prompts longer than "
                f"max_prompt_tokens = {cfg.max_prompt_tokens}")
    return train, held


# ---------------------------------------------------------------------------------
# Preferences
# ---------------------------------------------------------------------------------


def extract_prompt(chosen: Any, rejected: Any) -> tuple[Any, Any, Any]:
    """Implicit prompt: the shared beginning of chosen and rejected (messages, or characters up to a word
    boundary), as TRL's extract_prompt.  Returns (prompt, chosen rest, rejected rest)."""
    if isinstance(chosen, list):
        i = 0
        while i < min(len(chosen), len(rejected)) - 1 and chosen[i] == rejected[i]:
            i += 1
        return chosen[:i], chosen[i:], rejected[i:]
    i = 0
    while i < min(len(chosen), len(rejected)) and chosen[i] == rejected[i]:
        i += 1
    while i > 0 and not chosen[i - 1].isspace():  # back to a word boundary: the prompt ends with whitespace
        i -= 1
    return chosen[:i], chosen[i:], rejected[i:]


def preference_triples(rows: list[dict], source: str) -> list[tuple[Any, Any, Any]]:
    """(prompt, chosen, rejected) per row; conversational prompts keep their messages."""
    triples = []
    for number, row in enumerate(rows, start=1):
        where = f"{source}: row {number}"
        if "chosen" not in row or "rejected" not in row:
            raise DataError(f"{where}: preference rows need 'chosen' and 'rejected' columns (and optionally 'prompt'); "
                            f"columns found: {', '.join(sorted(row)) or 'none'}")
        chosen, rejected = row["chosen"], row["rejected"]
        for name, value in (("chosen", chosen), ("rejected", rejected)):
            if not (isinstance(value, str) or is_conversation(value)):
                raise DataError(f"{where}: '{name}' must be a string or a list of {{\"role\", \"content\"}} messages")
        if isinstance(chosen, str) != isinstance(rejected, str):
            raise DataError(f"{where}: 'chosen' and 'rejected' must both be strings or both conversations")
        explicit = "prompt" in row and row["prompt"] not in (None, "")
        if explicit and not (isinstance(row["prompt"], str) or is_conversation(row["prompt"])):
            raise DataError(f"{where}: 'prompt' must be a string or a list of {{\"role\", \"content\"}} messages")
        # a 'prompt' of the other kind than 'chosen' (a string beside conversations) is a dataset's extra column with
        # the prompt implicit in chosen / rejected: extracted from them, as TRL's maybe_extract_prompt does
        if explicit and isinstance(row["prompt"], str) == isinstance(chosen, str):
            prompt = row["prompt"]
        else:
            prompt, chosen, rejected = extract_prompt(chosen, rejected)
        if triples and isinstance(triples[0][1], str) != isinstance(chosen, str):
            raise DataError(f"{where}: mixes string and conversational preferences (row 1 is "
                            f"{'strings' if isinstance(triples[0][1], str) else 'conversational'}); use one kind per file")
        triples.append((prompt, chosen, rejected))
    if not triples:
        raise DataError(f"{source}: no preference rows")
    return triples


def load_preferences(cfg, log=print) -> tuple[list[tuple], list[tuple], str]:
    """(training triples, held-out triples, where the held-out ones come from) of cfg.preferences."""
    train_rows, held_rows, held_from = train_and_held_out(cfg.preferences, cfg.eval_preferences, cfg.eval_fraction,
                                                          cfg.task_seed, "preferences",
                                                          check=lambda row, where: preference_triples([row], where.rpartition(": row ")[0]))
    train, held = preference_triples(train_rows, cfg.preferences), preference_triples(held_rows, held_from)
    if log:
        kind = "conversational" if isinstance(train[0][1], list) else "strings"
        log(f"preferences: {len(train)} pairs for training from {cfg.preferences} ({kind}), {len(held)} held out from {held_from}")
        unused = sorted({k for row in train_rows[:1000] for k in row} - {"prompt", "chosen", "rejected"})
        if unused:  # TRL's RewardTrainer reads 'margin'; rlkit trains the plain Bradley-Terry loss
            log(f"preferences: column(s) {', '.join(unused)} not used (the loss is plain Bradley-Terry, "
                "-log sigmoid(r_chosen - r_rejected))")
    return train, held, held_from
