"""Reading, validating and tokenizing data in TRL's formats (plain text or conversational).

    prompts   {"prompt"}
    SFT       {"prompt", "completion"}
    pairwise  {"prompt", "chosen", "rejected"} with an optional "margin"
    K-wise    {"prompt", "completions": [best first, ...]}, or with "ranking" (indices, best first) or "scores" (higher is better)

A text is a non-empty string, or a list of {"role", "content"} messages rendered with the tokenizer's chat template.
Bad rows are errors that name the file, the line and the field; what is truncated is counted and reported.
"""

import hashlib
import json
from pathlib import Path

import torch

KEYS = {"prompt": ["prompt"], "sft": ["prompt", "completion"], "pairwise": ["prompt", "chosen", "rejected"], "kwise": ["prompt", "completions"]}


class DataError(ValueError):
    pass


def read_records(path):
    """[(line, record)] from a .jsonl file (one JSON object a line) or a .json file (a list of objects)."""
    text = Path(path).read_text()
    if str(path).endswith(".json"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
        if not isinstance(data, list):
            raise DataError(f"{path}: expected a JSON list of objects, got {type(data).__name__}")
        return [(f"item {i}", rec) for i, rec in enumerate(data, 1)]
    records = []
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            records.append((i, json.loads(line)))
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{i}: not valid JSON ({e.msg})") from None
    return records


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


def validate(records, kind, source):
    """Check every record of a kind; return the rows (K-wise rows normalized to completions best first).
    All problems are collected and raised together, each with source:line and the field."""
    rows, errors = [], []
    for line, rec in records:
        where = f"{source}:{line}"
        if not isinstance(rec, dict):
            errors.append(f"{where}: expected a JSON object, got {type(rec).__name__}")
            continue
        missing = [k for k in KEYS[kind] if k not in rec]
        if missing:
            errors.append(f"{where}: missing key '{missing[0]}' (a {kind} row needs {KEYS[kind]}, has {sorted(rec)})")
            continue
        texts = [("prompt", rec["prompt"])] + [(k, rec[k]) for k in KEYS[kind][1:] if k != "completions"]
        if kind == "kwise":
            c = rec["completions"]
            if not isinstance(c, list) or len(c) < 2:
                errors.append(f"{where}: field 'completions': expected a list of at least 2 completions, got {json.dumps(c)[:40]}")
                continue
            texts += [(f"completions[{i}]", t) for i, t in enumerate(c)]
        bad = [(k, e) for k, v in texts if (e := _text_error(v))]
        if bad:
            errors.append(f"{where}: field '{bad[0][0]}': {bad[0][1]}")
            continue
        row = {k: rec[k] for k in KEYS[kind]}
        if kind == "pairwise" and "margin" in rec:
            if not isinstance(rec["margin"], (int, float)) or isinstance(rec["margin"], bool):
                errors.append(f"{where}: field 'margin': expected a number, got {json.dumps(rec['margin'])[:40]}")
                continue
            row["margin"] = float(rec["margin"])
        if kind == "kwise":
            order, err = _kwise_order(rec, len(rec["completions"]))
            if err:
                errors.append(f"{where}: {err}")
                continue
            row["completions"] = [rec["completions"][i] for i in order]
        rows.append(row)
    if errors:
        more = f"\n... and {len(errors) - 10} more" if len(errors) > 10 else ""
        raise DataError(f"{len(errors)} bad row(s) in {source}:\n" + "\n".join(errors[:10]) + more)
    return rows


def _kwise_order(rec, k):
    if "ranking" in rec:
        r = rec["ranking"]
        if not (isinstance(r, list) and sorted(r) == list(range(k))):
            return None, f"field 'ranking': expected a permutation of 0..{k - 1} (best first), got {json.dumps(r)[:40]}"
        return r, None
    if "scores" in rec:
        s = rec["scores"]
        if not (isinstance(s, list) and len(s) == k and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in s)):
            return None, f"field 'scores': expected {k} numbers (one per completion), got {json.dumps(s)[:40]}"
        return sorted(range(k), key=lambda i: -s[i]), None
    return list(range(k)), None


def split_by_prompt(rows, eval_frac=0.05):
    """(train, eval): a row goes to eval when a hash of its prompt says so, so no prompt is in both."""
    def is_eval(row):
        h = hashlib.sha1(json.dumps(row["prompt"], sort_keys=True).encode()).digest()
        return int.from_bytes(h[:4], "big") < eval_frac * 2**32
    return [r for r in rows if not is_eval(r)], [r for r in rows if is_eval(r)]


def load_rows(dataset, kind, eval_frac=0.05):
    """(train_rows, eval_rows) from a local .jsonl/.json file or a Hugging Face hub dataset. The eval rows are
    the hub's "test" (or "validation") split when it has one, else a split by prompt."""
    if Path(dataset).exists():
        return split_by_prompt(validate(read_records(dataset), kind, dataset), eval_frac)
    try:
        import datasets
    except ImportError:
        raise SystemExit(f"--dataset {dataset!r} is not a local file, so it is read from the Hugging Face hub, "
                         "which needs the `datasets` library: pip install datasets") from None
    d = datasets.load_dataset(dataset)
    rows = {s: validate(enumerate(d[s], 1), kind, f"{dataset}[{s}] row") for s in d}
    eval_split = next((s for s in ("test", "validation") if s in rows), None)
    if eval_split:
        return rows["train"], rows[eval_split]
    return split_by_prompt(rows["train"], eval_frac)


def render(tokenizer, prompt, completion=None):
    """(prompt_text, completion_text): plain strings as they are; conversations through the chat template."""
    if isinstance(prompt, str):
        if completion is not None and not isinstance(completion, str):
            raise DataError("a plain-text prompt needs plain-text completions, got messages")
        return prompt, completion
    p = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    if completion is None:
        return p, None
    if isinstance(completion, str):
        completion = [{"role": "assistant", "content": completion}]
    full = tokenizer.apply_chat_template(prompt + completion, tokenize=False)
    if not full.startswith(p):
        raise DataError("the chat template does not render the conversation as prompt + completion")
    return p, full[len(p):]


def encode(tokenizer, prompt, completion, max_length, max_prompt_length, counts):
    """(input_ids, completion_mask) for prompt + completion + EOS; the loss reads completion tokens only.
    Too long: keep the end of the prompt (at most max_prompt_length tokens) and cut the completion; counted."""
    p_text, c_text = render(tokenizer, prompt, completion)
    p = tokenizer(p_text, add_special_tokens=isinstance(prompt, str)).input_ids
    c = tokenizer(c_text, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
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
    counts["prompts"] += 1
    if len(p) > max_prompt_length:
        counts["prompts truncated"] += 1
    return p[-max_prompt_length:]


def report(counts, what):
    """Print what was truncated, so nothing is cut silently."""
    cut = {k: v for k, v in counts.items() if "truncated" in k}
    total = counts.get("examples") or counts.get("prompts") or 0
    print(f"{what}: {total} sequences" + "".join(f", {v} {k}" for k, v in cut.items() if v))


def pad(seqs, value, side="right"):
    """(B, T) tensor of lists padded with value on the given side."""
    T = max(len(s) for s in seqs)
    fill = [[value] * (T - len(s)) for s in seqs]
    return torch.tensor([s + f if side == "right" else f + s for s, f in zip(seqs, fill)])

