"""Reading, validating and tokenizing data: the project's own files and the hub's datasets as they are published.

Every row becomes one of four kinds (TRL's formats):
    prompt    {"prompt"}
    sft       {"prompt", "completion"}
    pairwise  {"prompt", "chosen", "rejected"[, "margin"][, "label_smoothing"]}
    kwise     {"prompt", "completions": [best first, ...]}
A text is a non-empty string, or a list of {"role", "content"} messages rendered with the tokenizer's chat template.
The published layouts read into them (FORMATS below), so --dataset takes a hub name as it is:
    implicit prompt       {"chosen", "rejected"} that share the prompt: Anthropic/hh-rlhf (plain text, "\n\nHuman: ...
                          \n\nAssistant: ..."), trl-lib/ultrafeedback_binarized (messages); the prompt is the shared
                          part up to the last assistant turn
    repeated prompt       {"prompt", "chosen", "rejected"} whose messages repeat the prompt
                          (HuggingFaceH4/ultrafeedback_binarized): the prompt is not doubled
    conversations         {"messages"}: all but the last (assistant) message is the prompt
    K-wise                {"prompt", "completions"[, "ranking" | "scores"]} (ours), {"prompt", "answers": [{"answer",
                          "rank"}]} (berkeley-nest/Nectar, rank 1 best), {"instruction", "completions": [{"response",
                          "overall_score"}]} (openbmb/UltraFeedback)
Columns a script does not need are ignored. Bad rows are errors that name the file or split, the row and the field;
what is truncated is counted and reported.
"""

import hashlib
import json
import random
from collections import Counter
from pathlib import Path

import torch

from common import models, task

FORMATS = {
    "prompt": '{"prompt"}, {"messages"}, {"instruction"}, or any pairwise, SFT or K-wise row (its prompt)',
    "sft": '{"prompt", "completion"} or {"messages": [..., last an assistant message]}',
    "pairwise": '{"prompt", "chosen", "rejected"[, "margin"][, "label_smoothing"]} or {"chosen", "rejected"} sharing '
                'an implicit prompt',
    "kwise": '{"prompt", "completions"[, "ranking" | "scores"]}, {"prompt", "answers": [{"answer", "rank"}]} (Nectar) '
             'or {"instruction", "completions": [{"response", "overall_score"}]} (UltraFeedback)',
}
ASSISTANT_TURN = "\n\nAssistant:"  # Anthropic's dialogue format


class DataError(SystemExit):
    """A problem with the user's data: the script stops with this message (exit code 1), no traceback."""


# ---------------------------------------------------------------- reading: a file, a local dataset folder, or the hub

def read_records(path):
    """{"train": [(where, record)]} from a .jsonl file (one JSON object a line) or a .json file (a list of objects).
    Every line that is not JSON is reported, not only the first."""
    text = Path(path).read_text()
    if str(path).endswith(".json"):
        try:
            records = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
        if not isinstance(records, list):
            raise DataError(f"{path}: expected a JSON list of objects, got {type(records).__name__}")
        return {"train": [(f"{path}: item {i}", rec) for i, rec in enumerate(records, 1)]}
    records, errors = [], []
    for i, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                records.append((f"{path}:{i}", json.loads(line)))
            except json.JSONDecodeError as e:
                errors.append(f"{path}:{i}: not valid JSON ({e.msg})")
    if errors:
        raise DataError(f"{len(errors)} line(s) of {path} are not JSON:\n" + "\n".join(errors[:10]))
    return {"train": records}


def open_dataset(name, config=None):
    """{split: [(where, record)]}: a .jsonl/.json file (one split, "train"), or what `datasets.load_dataset` reads
    (a local folder or data file, or a hub name)."""
    path = Path(name).expanduser()
    if path.is_file() and path.suffix in (".jsonl", ".json"):
        return read_records(path)
    looks_local = path.exists() or name.startswith((".", "/", "~")) or path.suffix or name.count("/") > 1
    if looks_local and not path.exists():
        raise DataError(f"--dataset {name}: no such file or folder")
    try:
        import datasets
    except ImportError:
        raise DataError(f"--dataset {name} is read with the `datasets` library: pip install datasets") from None
    try:
        d = datasets.load_dataset(str(path) if path.exists() else name, config)
    except (ConnectionError, FileNotFoundError, datasets.exceptions.DatasetNotFoundError) as e:
        set_to = [v for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE") if models.offline_variable(v)]
        hint = str(e).splitlines()[0]
        if set_to or isinstance(e, ConnectionError):
            hint = f"{' and '.join(set_to)} is set (offline)" if set_to else "the hub is not reachable from here"
        raise DataError(f"--dataset {name}: not a local file or folder, and not found on the hub: {hint}") from None
    except ValueError as e:  # e.g. a config that does not exist: datasets names the ones that do
        raise DataError(f"--dataset {name}: {str(e).splitlines()[0]}") from None
    return {split: [(f"{name}[{split}] row {i}", rec) for i, rec in enumerate(d[split], 1)] for split in d}


def eval_split(splits, dataset, train_split, test_split):
    """The split to evaluate on: test_split, else "test" or "validation" where there is one, else None (hold out
    prompts). Stops with one line when a split named by a flag is not in the dataset."""
    for flag, split in (("--dataset-train-split", train_split), ("--dataset-test-split", test_split)):
        if split is not None and split not in splits:
            raise DataError(f"{flag} {split}: {dataset} has no such split; its splits are {', '.join(splits)}")
    if test_split is None:
        test_split = next((s for s in ("test", "validation") if s in splits and s != train_split), None)
    return test_split


def load_rows(dataset, kind, config=None, train_split="train", test_split=None, eval_frac=0.05, verbose=True):
    """(train_rows, eval_rows) of a kind. The eval rows are test_split, or by default the "test" or "validation"
    split where there is one, else a held-out eval_frac of the prompts (no prompt on both sides)."""
    splits = open_dataset(dataset, config)
    test_split = eval_split(splits, dataset, train_split, test_split)
    one_file = list(splits) == ["train"] and Path(dataset).suffix in (".jsonl", ".json")
    train = validate(splits[train_split], kind, dataset if one_file else f"{dataset}[{train_split}]")
    if not train:
        empty = " (the file is empty)" if one_file else ""
        raise DataError(f"--dataset {dataset}: no rows in split {train_split}" + empty)
    if test_split is not None:
        evals, where = validate(splits[test_split], kind, f"{dataset}[{test_split}]"), f"split {test_split}"
    else:
        train, evals = split_by_prompt(train, eval_frac)
        where = f"{eval_frac:.0%} of the prompts held out"
    if verbose:
        print(f"{dataset}: {len(train)} {kind} rows from split {train_split}, {len(evals)} for evaluation ({where})")
    return train, evals


def load_prompts(dataset, config=None, train_split="train", test_split=None, num_eval=None, verbose=True):
    """(train_prompts, eval_prompts): the embedded task's, or the prompts of a dataset's rows of any kind (load_rows).
    Where none is held out (a small file), the first 64 train prompts are evaluated on; num_eval keeps the first N."""
    if dataset == "embedded":
        train, evals = task.split_prompts()
    else:
        rows = load_rows(dataset, "prompt", config, train_split, test_split, verbose=verbose)
        train, evals = ([r["prompt"] for r in split] for split in rows)
    if not train:
        raise DataError(f"--dataset {dataset}: no train prompts (all of them went to the eval split)")
    if not evals and verbose:
        print("no held-out prompts in the dataset's split: evaluating on the first 64 train prompts")
    return train, (evals or train[:64])[:num_eval]


def _ratings(rec):
    """([(prompt, response, {attribute: rating or None})], error) from one record of rated responses: a flat row
    {"prompt", "response", <attribute>: number, ...} (nvidia/HelpSteer2), or {"instruction", "completions":
    [{"response", "annotations": {<attribute>: {"Rating": "1".."5" or "N/A"}}}]} (openbmb/UltraFeedback; "N/A" is
    missing)."""
    if not isinstance(rec, dict):
        return None, f"expected a JSON object, got {type(rec).__name__}"
    prompt = rec["prompt"] if "prompt" in rec else rec.get("instruction")
    if "completions" not in rec:
        ratings = {k: v for k, v in rec.items() if k not in ("prompt", "response") and (_is_number(v) or v is None)}
        if "response" not in rec or not ratings:
            return None, (f'expected {{"prompt", "response", <attribute>: number, ...}} or UltraFeedback\'s '
                          f'{{"instruction", "completions"}}; it has keys {sorted(rec)}')
        return [(prompt, rec["response"], ratings)], None
    out = []
    for i, c in enumerate(rec["completions"] if isinstance(rec["completions"], list) else [None]):
        notes = c.get("annotations") if isinstance(c, dict) else None
        if not isinstance(notes, dict):
            return None, f"field 'completions[{i}]': expected {{\"response\", \"annotations\": {{...}}}}"
        ratings = {}
        for name, note in notes.items():
            value = note.get("Rating") if isinstance(note, dict) else None
            if value == "N/A":
                ratings[name] = None
            elif isinstance(value, str) and value.strip().lstrip("-").replace(".", "", 1).isdigit():
                ratings[name] = float(value)
            else:
                return None, f"field 'completions[{i}].annotations.{name}.Rating': expected \"1\"..\"5\" or \"N/A\""
        out.append((prompt, c.get("response"), ratings))
    return out, None


def load_ratings(dataset, config=None, train_split="train", test_split=None, eval_frac=0.05, verbose=True):
    """(train_rows, eval_rows, attributes): rated responses {"prompt", "response", "ratings": {attribute: number or
    None}} of every attribute (one missing from a row is None, counted), split as load_rows splits."""
    splits = open_dataset(dataset, config)
    test_split = eval_split(splits, dataset, train_split, test_split)
    read, errors, attributes = {}, [], {}
    for split in (train_split, test_split):
        read[split] = []
        for where, rec in splits.get(split, []):
            items, error = _ratings(rec)
            for prompt, response, _ in items or []:
                error = error or _text_error(prompt) and f"field 'prompt': {_text_error(prompt)}"
                error = error or _text_error(response) and f"field 'response': {_text_error(response)}"
            if error:
                errors.append(f"{where}: {error}")
                continue
            for prompt, response, ratings in items:
                attributes |= dict.fromkeys(ratings)
                read[split].append({"prompt": prompt, "response": response, "ratings": ratings})
    if errors:
        more = f"\n... and {len(errors) - 10} more" if len(errors) > 10 else ""
        raise DataError(f"{len(errors)} bad row(s) in {dataset}:\n" + "\n".join(errors[:10]) + more)
    train, evals = read[train_split], read[test_split] if test_split is not None else None
    if not train:
        raise DataError(f"--dataset {dataset}: no rated responses in split {train_split}")
    if evals is None:
        train, evals = split_by_prompt(train, eval_frac)
    missing = 0
    for row in train + evals:
        missing += sum(row["ratings"].get(a) is None for a in attributes)
        row["ratings"] = {a: row["ratings"].get(a) for a in attributes}
    if verbose:
        print(f"{dataset}: {len(train)} rated responses to train on, {len(evals)} for evaluation; attributes "
              f"{', '.join(attributes)}; {missing} ratings missing (N/A or absent)")
    return train, evals, list(attributes)


def split_by_prompt(rows, eval_frac=0.05):
    """(train, eval): a row goes to eval when a hash of its prompt falls in the lowest eval_frac of the hash range, so
    no prompt is in both. With two prompts or more each side gets one at least: where none fell that low the prompt
    lowest in hash order is held out (a small dataset still gets an eval split), where all did the highest is kept
    for training; one prompt alone, or eval_frac 0, holds out nothing."""
    def position(row):
        h = hashlib.sha1(json.dumps(row["prompt"], sort_keys=True).encode()).digest()
        return int.from_bytes(h[:4], "big")
    at = [position(r) for r in rows]
    cut = eval_frac * 2**32 if len(set(at)) > 1 else 0  # one prompt: it cannot be both trained and held out
    if eval_frac > 0 and len(set(at)) > 1:  # two prompts or more: something on each side
        cut = min(max(cut, min(at) + 1), max(at))
    return [r for r, p in zip(rows, at) if p >= cut], [r for r, p in zip(rows, at) if p < cut]


def check_eval_rows(rows, dataset, what):
    """Stop when a dataset leaves nothing to evaluate on: so few prompts that none of them was held out."""
    if not rows:
        raise DataError(f"--dataset {dataset} has no eval {what} (all its rows share one prompt, which cannot be "
                        "both trained on and held out): give it more prompts or a --dataset-test-split")


def reference_rows(reference, auto_rows, size, seed, verbose=True):
    """At most `size` {"prompt", "completion"} rows, a seeded random sample of auto_rows when reference is "auto",
    else of every split of the file or dataset `reference` (the responses a reward model is normalized on)."""
    rows = auto_rows
    if reference != "auto":
        rows = [r for split in load_rows(reference, "sft", verbose=verbose) for r in split]
    return random.Random(seed).sample(rows, min(size, len(rows)))


# ---------------------------------------------------------------- rows: published layouts into the four kinds

def _text_error(value):
    """Why a value is not a text (None when it is one)."""
    if isinstance(value, str):
        return None if value.strip() else "expected a non-empty string, got an empty one"
    if isinstance(value, list) and value:
        for m in value:
            if not (isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)):
                return f'expected messages {{"role": str, "content": str}}, got {json.dumps(m)[:60]}'
            if not m["content"].strip():
                return "expected non-empty message contents, got an empty one"
        return None
    return f"expected a non-empty string or a list of messages, got {type(value).__name__} {json.dumps(value)[:40]}"


def _is_number(x):
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def extract_prompt(chosen, rejected):
    """(prompt, chosen, rejected) from two texts that share an implicit prompt (TRL's extraction): for messages,
    the shared leading messages; for plain text, the shared prefix up to its last "\\n\\nAssistant:" (Anthropic's
    dialogues), else up to a word boundary."""
    if isinstance(chosen, list) and isinstance(rejected, list):
        n = 0
        while n < min(len(chosen), len(rejected)) - 1 and chosen[n] == rejected[n]:
            n += 1
        return chosen[:n], chosen[n:], rejected[n:]
    n = 0
    while n < min(len(chosen), len(rejected)) and chosen[n] == rejected[n]:
        n += 1
    shared = chosen[:n]
    if ASSISTANT_TURN in shared:
        n = shared.rindex(ASSISTANT_TURN) + len(ASSISTANT_TURN)
    else:
        n = max(shared.rfind(" "), shared.rfind("\n")) + 1
    return chosen[:n], chosen[n:], rejected[n:]


def _drop_repeated_prompt(prompt, chosen, rejected):
    """HuggingFaceH4/ultrafeedback_binarized: chosen and rejected are whole conversations that begin with the
    prompt's messages; keep the prompt once, as messages, and the replies after it."""
    if not (isinstance(chosen, list) and isinstance(rejected, list)):
        return prompt, chosen, rejected
    head = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
    same = [{"role": m.get("role"), "content": m.get("content")} for m in chosen[: len(head)]] == head
    if same and chosen[: len(head)] == rejected[: len(head)] and len(chosen) > len(head) < len(rejected):
        return chosen[: len(head)], chosen[len(head):], rejected[len(head):]
    return prompt, chosen, rejected


def _kwise(rec):
    """(prompt, completions best first, error) from a K-wise row in any of the accepted layouts."""
    if "answers" in rec:  # Nectar: rank 1 is the best
        answers = rec["answers"]
        if not (isinstance(answers, list) and all(isinstance(a, dict) and _is_number(a.get("rank")) for a in answers)):
            return None, None, "field 'answers': expected a list of {\"answer\", \"rank\"}"
        return rec.get("prompt"), [a.get("answer") for a in sorted(answers, key=lambda a: a["rank"])], None
    c = rec.get("completions")
    prompt = rec["prompt"] if "prompt" in rec else rec.get("instruction")
    if not isinstance(c, list) or len(c) < 2:
        return None, None, f"field 'completions': expected a list of at least 2 completions, got {json.dumps(c)[:40]}"
    if all(isinstance(x, dict) for x in c):  # UltraFeedback: the highest overall_score is the best
        if not all(_is_number(x.get("overall_score")) for x in c):
            return None, None, "field 'completions': expected {\"response\", \"overall_score\": number} items"
        return prompt, [x.get("response") for x in sorted(c, key=lambda x: -x["overall_score"])], None
    if "ranking" in rec:
        r = rec["ranking"]
        if not (isinstance(r, list) and sorted(r) == list(range(len(c)))):
            return None, None, (f"field 'ranking': expected a permutation of 0..{len(c) - 1} (best first), "
                                f"got {json.dumps(r)[:40]}")
        return prompt, [c[i] for i in r], None
    if "scores" in rec:
        s = rec["scores"]
        if not (isinstance(s, list) and len(s) == len(c) and all(_is_number(x) for x in s)):
            return None, None, (f"field 'scores': expected {len(c)} numbers (one per completion), "
                                f"got {json.dumps(s)[:40]}")
        return prompt, [c[i] for i in sorted(range(len(c)), key=lambda i: -s[i])], None
    return prompt, c, None


def _has_ties(rec):
    """A K-wise row whose scores tie (UltraFeedback's overall_score often does): the order among them is arbitrary."""
    c = rec.get("completions") if isinstance(rec, dict) else None
    dicts = isinstance(c, list) and all(isinstance(x, dict) for x in c)
    scores = [x.get("overall_score") for x in c] if dicts else None
    scores = rec.get("scores") if scores is None and isinstance(rec, dict) else scores
    return isinstance(scores, list) and len({json.dumps(x) for x in scores}) < len(scores)


def to_row(rec, kind):
    """(row of the kind, None) or (None, why not) for one record in any accepted layout."""
    if not isinstance(rec, dict):
        return None, f"expected a JSON object, got {type(rec).__name__}"
    if kind == "kwise" or (kind == "prompt" and ("answers" in rec or "completions" in rec)):
        if not ({"prompt", "instruction"} & set(rec) and {"answers", "completions"} & set(rec)):
            return None, f"fits no {kind} format; accepted: {FORMATS[kind]}; it has keys {sorted(rec)}"
        prompt, completions, error = _kwise(rec)
        if error:
            return None, error
        row = {"prompt": prompt, "completions": completions}
    elif kind == "pairwise" or (kind == "prompt" and {"chosen", "rejected"} <= set(rec)):
        missing = [k for k in ("chosen", "rejected") if k not in rec]
        if missing:
            return None, f"missing key '{missing[0]}'; accepted: {FORMATS[kind]}; it has keys {sorted(rec)}"
        chosen, rejected = rec["chosen"], rec["rejected"]
        if "prompt" in rec:
            prompt, chosen, rejected = _drop_repeated_prompt(rec["prompt"], chosen, rejected)
        elif (isinstance(chosen, str) == isinstance(rejected, str)
              and not (_text_error(chosen) or _text_error(rejected))):
            prompt, chosen, rejected = extract_prompt(chosen, rejected)
        else:
            why = _text_error(chosen) or _text_error(rejected) or "one is text, one messages"
            return None, f"field 'chosen'/'rejected': {why}"
        row = {"prompt": prompt, "chosen": chosen, "rejected": rejected}
        if rec.get("margin") is not None and kind == "pairwise":  # null: a row without one (a column others have)
            if not _is_number(rec["margin"]):
                return None, f"field 'margin': expected a number, got {json.dumps(rec['margin'])[:40]}"
            row["margin"] = float(rec["margin"])
        if rec.get("label_smoothing") is not None and kind == "pairwise":  # P(label is wrong): rm_ensemble.py writes it
            a = rec["label_smoothing"]
            if not (_is_number(a) and 0 <= a <= 1):
                return None, f"field 'label_smoothing': expected a number in [0, 1], got {json.dumps(a)[:40]}"
            row["label_smoothing"] = float(a)
    elif "messages" in rec and (kind == "prompt" and "prompt" not in rec or kind == "sft" and "completion" not in rec):
        m = rec["messages"]
        if _text_error(m) or len(m) < 2 or m[-1]["role"] != "assistant":
            why = _text_error(m) or "expected a conversation that ends with the assistant reply"
            return None, f"field 'messages': {why}"
        row = {"prompt": m[:-1]} | ({"completion": m[-1:]} if kind == "sft" else {})
    elif kind == "sft":
        missing = [k for k in ("prompt", "completion") if k not in rec]
        if missing:
            return None, f"missing key '{missing[0]}'; accepted: {FORMATS[kind]}; it has keys {sorted(rec)}"
        row = {"prompt": rec["prompt"], "completion": rec["completion"]}
    else:
        if "prompt" not in rec and "instruction" not in rec:
            return None, f"missing key 'prompt'; accepted: {FORMATS[kind]}; it has keys {sorted(rec)}"
        row = {"prompt": rec["prompt"] if "prompt" in rec else rec["instruction"]}
    if kind == "prompt":
        row = {"prompt": row["prompt"]}
    for key, value in row.items():
        texts = [(f"{key}[{i}]", v) for i, v in enumerate(value)] if key == "completions" else [(key, value)]
        for name, text in texts:
            if key not in ("margin", "label_smoothing") and _text_error(text):
                return None, f"field '{name}': {_text_error(text)}"
    return row, None


def validate(records, kind, source):
    """The rows of a kind from [(where, record)]. All problems are collected and raised together, each naming
    where it is (file:line or dataset[split] row) and the field."""
    rows, errors = [], []
    for where, rec in records:
        row, error = to_row(rec, kind)
        if error:
            errors.append(f"{where}: {error}")
        else:
            rows.append(row)
    if errors:
        more = f"\n... and {len(errors) - 10} more" if len(errors) > 10 else ""
        raise DataError(f"{len(errors)} bad row(s) in {source}:\n" + "\n".join(errors[:10]) + more)
    ties = sum(_has_ties(rec) for _, rec in records) if kind == "kwise" else 0
    if ties:
        print(f"{source}: {ties} of {len(rows)} rankings have tied scores; tied completions keep their listed order")
    if kind == "prompt":  # a preference or K-wise set repeats its prompts: each once
        unique = {json.dumps(r["prompt"], sort_keys=True): r for r in rows}
        rows = list(unique.values())
    return rows


# ---------------------------------------------------------------- tokenizing

def render(tokenizer, prompt, completion=None):
    """(prompt_text, completion_text): plain strings as they are; conversations through the chat template."""
    if isinstance(prompt, str):
        if completion is not None and not isinstance(completion, str):
            raise DataError("a plain-text prompt needs plain-text completions, got messages")
        return prompt, completion
    if tokenizer.chat_template is None:
        raise DataError(f"the data holds conversations (lists of messages), but the tokenizer {tokenizer.name_or_path} "
                        "has no chat template: use a chat model (e.g. an -Instruct one) or plain-text rows")
    p = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    if completion is None:
        return p, None
    if isinstance(completion, str):
        completion = [{"role": "assistant", "content": completion}]
    full = tokenizer.apply_chat_template(prompt + completion, tokenize=False)
    if not full.startswith(p):
        raise DataError("the chat template does not render the conversation as prompt + completion")
    return p, full[len(p):]


def count_unknown(tokenizer, ids, counts):
    """Tokens the tokenizer could not represent (its unk id, where that is not also its EOS, as in GPT-2)."""
    counts["tokens"] = counts.get("tokens", 0) + len(ids)
    if tokenizer.unk_token_id is not None and tokenizer.unk_token_id != tokenizer.eos_token_id:
        counts["unknown tokens"] = counts.get("unknown tokens", 0) + sum(t == tokenizer.unk_token_id for t in ids)


def encode(tokenizer, prompt, completion, max_length, max_prompt_length, counts):
    """(input_ids, completion_mask) for prompt + completion + EOS; the loss reads completion tokens only. A chat
    template that already ends the reply with EOS gets no second one. Too long: keep the end of the prompt (at most
    max_prompt_length tokens) and cut the completion; counted."""
    p_text, c_text = render(tokenizer, prompt, completion)
    p = tokenizer(p_text, add_special_tokens=isinstance(prompt, str)).input_ids  # a chat template adds its own BOS
    eos = tokenizer.eos_token
    ends_with_eos = eos is not None and c_text.rstrip().endswith(eos)
    c = tokenizer(c_text.rstrip() if ends_with_eos else c_text, add_special_tokens=False).input_ids
    count_unknown(tokenizer, p + c, counts)
    c = c if ends_with_eos else c + [tokenizer.eos_token_id]
    counts["examples"] += 1
    if len(p) > max_prompt_length:
        p = p[-max_prompt_length:]
        counts["prompts truncated"] += 1
    if len(p) + len(c) > max_length:
        c = c[: max_length - len(p)]
        counts["completions truncated"] += 1
    return p + c, [0] * len(p) + [1] * len(c)


def encode_prompt(tokenizer, prompt, max_prompt_length, counts):
    """Prompt ids alone (for sampling), the end kept when too long; counted."""
    p_text, _ = render(tokenizer, prompt)
    p = tokenizer(p_text, add_special_tokens=isinstance(prompt, str)).input_ids
    count_unknown(tokenizer, p, counts)
    counts["prompts"] += 1
    if len(p) > max_prompt_length:
        counts["prompts truncated"] += 1
    return p[-max_prompt_length:]


def encode_prompts(tokenizer, prompts, max_prompt_length, what, verbose=True):
    """encode_prompt for every prompt, with a report of what was cut (when verbose and there are prompts)."""
    counts = Counter()
    out = [encode_prompt(tokenizer, p, max_prompt_length, counts) for p in prompts]
    if verbose and prompts:
        report(counts, what)
    return out


def encode_demonstrations(tokenizer, rows, max_length, max_prompt_length, what, verbose=True):
    """encode (ids, completion mask) for every {"prompt", "completion"} row, with a report of what was cut."""
    counts = Counter()
    out = [encode(tokenizer, r["prompt"], r["completion"], max_length, max_prompt_length, counts) for r in rows]
    if verbose:
        report(counts, what)
    return out


def report(counts, what, say=print, max_unknown=0.05):
    """Say what was truncated, so nothing is cut silently; stop when the tokenizer does not know the text."""
    total = counts.get("examples") or counts.get("prompts") or 0
    unknown = counts.get("unknown tokens", 0)
    if unknown > max_unknown * max(counts.get("tokens", 0), 1):
        raise DataError(f"{what}: {unknown} of {counts['tokens']} tokens are unknown to the model's tokenizer. "
                        "The bundled model knows only the embedded task's words: "
                        "pass --model with a pretrained model (e.g. gpt2)")
    cut = {k: v for k, v in counts.items() if "truncated" in k or k == "unknown tokens"}
    say(f"{what}: {total} sequences" + "".join(f", {v} {k}" for k, v in cut.items() if v))


def calibration_set(tokenizer, prompts, n, seed, max_length, max_prompt_length):
    """(ids, gold): n generator responses to these prompts (task.calibration_rows), encoded as the reward model reads
    a (prompt, completion), and their gold rewards: the calibration set of the alignment gap."""
    rows = task.calibration_rows(prompts, n, seed)
    encoded = encode_demonstrations(tokenizer, rows, max_length, max_prompt_length, "calibration responses", False)
    return [ids for ids, _ in encoded], [task.gold_reward(r["prompt"], r["completion"]) for r in rows]


def pad(seqs, value, side="right"):
    """(B, T) tensor of lists padded with value on the given side."""
    T = max(len(s) for s in seqs)
    fill = [[value] * (T - len(s)) for s in seqs]
    return torch.tensor([s + f if side == "right" else f + s for s, f in zip(seqs, fill)])


def collate(encoded, pad_id, device):
    """(input_ids, attention_mask, completion_mask), each (B, T), right-padded, from [(ids, completion_mask)]."""
    ids = pad([e[0] for e in encoded], pad_id).to(device)
    am = pad([[1] * len(e[0]) for e in encoded], 0).to(device)
    cm = pad([e[1] for e in encoded], 0).to(device)
    return ids, am, cm
