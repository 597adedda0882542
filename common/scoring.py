"""What scores a response in ppo_rlhf.py (--reward-model): one function, score(), whatever the reward is.

    gold                    the embedded task's gold reward of the decoded text (task prompts only)
    my_rewards.py:fn        a Python function fn(prompts, completions) -> one float per completion (a rule, a
                            verifier, an API); prompts as in the data (text or messages), completions as decoded text
    a decoder classifier    (GPT-2, Llama, Qwen2, GPT-NeoX ...ForSequenceClassification, rm_bt.py / rm_kwise.py output):
                            its `score` head read at the last real token of prompt + response, EOS included only where
                            the response ended with EOS; with the policy's vocabulary it reads the sampled tokens, with
                            another it reads the decoded text re-encoded with its own tokenizer (AlpacaFarm)
    an encoder classifier   (DeBERTa, RoBERTa, DistilBERT): its own pooled output, on its own tokenization: a reward
                            model with one output reads (prompt, response) as a text pair (OpenAssistant's reward
                            models), a classifier with several labels reads prompt + response as one text (TRL's
                            gpt2-sentiment)
--reward-label picks the output of a classifier with several labels: a name of config.id2label or an index
(rm_composite.py's models read "composite" unless told otherwise).
Our reward models store a normalization in their config: normalized = (raw - reward_mean) / reward_std, one number
for all outputs, or a list with one per output (rm_composite.py). Calibrated to gold on the embedded task, the
normalized score is on gold's scale.
"""

import importlib.util
import math
from collections import Counter
from pathlib import Path

import torch

from common import data, models, runs, task


def label_index(config, label, name):
    """The output to read: --reward-label as a name of config.id2label or an index; required with several labels."""
    labels = {int(i): str(v) for i, v in config.id2label.items()}
    if label is None:
        if config.num_labels == 1:
            return 0
        if "composite" in labels.values():  # rm_composite.py's output: the composite unless told otherwise
            return next(i for i, v in labels.items() if v == "composite")
        raise SystemExit(f"--reward-model {name} has {config.num_labels} labels ({', '.join(labels.values())}): "
                         "pass --reward-label with the one to maximize (e.g. --reward-label POSITIVE)")
    if label.isdigit() and int(label) < config.num_labels:
        return int(label)
    for i, v in labels.items():
        if v == label:
            return i
    known = ", ".join(f"{i} ({v})" for i, v in labels.items())
    raise SystemExit(f"--reward-label {label}: {name} has no such label; its labels are {known}")


def _load_function(spec):
    """fn from "path/to/file.py:fn"."""
    path, _, fn_name = spec.rpartition(":")
    if not Path(path).is_file():
        raise SystemExit(f"--reward-model {spec}: no such file {path}")
    module_spec = importlib.util.spec_from_file_location(Path(path).stem, path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not callable(getattr(module, fn_name, None)):
        raise SystemExit(f"--reward-model {spec}: {path} defines no function {fn_name}")
    return getattr(module, fn_name)


def check(spec):
    """Stop before anything loads when --reward-model names nothing that can be read (a missing file or model)."""
    if spec == "gold":
        return
    if spec.endswith(".py") or ".py:" in spec:
        path = spec.rpartition(":")[0] or spec
        if not Path(path).is_file():
            runs.stop(f"--reward-model {spec}: no such file {path}")
        return
    problem = models.model_problem(spec)
    if problem:
        runs.stop(problem)


def load(spec, policy_tokenizer, label=None, device="cpu", trust_remote_code=False, dtype=torch.float32):
    """The reward as a dict for score(): {"kind", and per kind "fn" or "model", "tokenizer", "label", "same_vocab"}.
    A reward model is frozen: its weights are stored in `dtype` (bf16 on GPUs that support it, under autocast)."""
    if spec == "gold":
        return {"kind": "gold"}
    if spec.endswith(".py") or ".py:" in spec:
        if ":" not in spec.rpartition(".py")[2]:
            raise SystemExit(f"--reward-model {spec}: name the function too, as in my_rewards.py:reward")
        return {"kind": "function", "fn": _load_function(spec), "name": spec}
    tokenizer = models.load_tokenizer(spec, trust_remote_code)
    model = models.load_reward_model(spec, dtype, trust_remote_code, num_labels=None)
    model = models.disable_dropout(model).to(device).eval().requires_grad_(False)
    kind = "decoder" if hasattr(model, "score") else "encoder"  # a decoder's head is read at the last token by us
    same_vocab = kind == "decoder" and tokenizer.get_vocab() == policy_tokenizer.get_vocab()
    if kind == "encoder":
        tokenizer.truncation_side = "left"  # a long prompt loses its beginning, never the response
    return {"kind": kind, "model": model, "tokenizer": tokenizer, "label": label_index(model.config, label, spec),
            "same_vocab": same_vocab, "context": models.context_length(model, tokenizer), "name": spec}


def describe(reward):
    """One line on how responses are scored."""
    if reward["kind"] == "gold":
        return "the embedded task's gold reward"
    if reward["kind"] == "function":
        return f"the function {reward.get('name')}"
    cfg = reward["model"].config
    tokens = "on the policy's tokenizer" if reward["same_vocab"] else "another tokenizer: re-encoded"
    how = {"encoder": "an encoder classifier on its own tokenization", "decoder": "read at the last token, " + tokens}
    mean, std = normalization(cfg, reward["label"])
    return (f"{reward['name']}: {how[reward['kind']]}, "
            f"output {reward['label']} ({cfg.id2label.get(reward['label'], '')}), "
            f"reward_mean {mean:.4g}, reward_std {std:.4g}")


def normalization(config, label):
    """(reward_mean, reward_std) of output `label`: normalized = (raw - reward_mean) / reward_std; (0, 1) if none is
    stored, one pair for all outputs, or lists with one per output."""
    mean, std = getattr(config, "reward_mean", 0.0), getattr(config, "reward_std", 1.0)
    if isinstance(mean, list):
        mean, std = mean[label], std[label]
    return mean, std


def _reencode(reward, prompts, texts, with_eos, counts):
    """(input_ids, attention_mask) of prompt + response in the reward model's own tokenization, at most its context
    long (the start of the prompt is cut first; counted)."""
    tok, n = reward["tokenizer"], reward["context"]
    if reward["kind"] == "encoder":
        prompt_texts = [p if isinstance(p, str) else "\n".join(m["content"] for m in p) for p in prompts]
        pair = reward["model"].config.num_labels == 1  # a reward model reads (question, answer)
        first, second = (prompt_texts, texts) if pair else ([f"{p} {t}" for p, t in zip(prompt_texts, texts)], None)
        full = tok(first, second).input_ids
        counts["truncated for the reward model"] += sum(len(ids) > n for ids in full)
        enc = tok(first, second, truncation="only_first" if pair else True, max_length=n, padding=True,
                  return_tensors="pt")
        return enc.input_ids, enc.attention_mask
    seqs = []
    for p, t, eos in zip(prompts, texts, with_eos):
        p_text, t_text = data.render(tok, p, t)
        ids = tok(p_text, add_special_tokens=isinstance(p, str)).input_ids
        ids = ids + tok(t_text, add_special_tokens=False).input_ids
        ids = ids + [tok.eos_token_id] if eos else ids  # EOS only where the response ended with one
        counts["truncated for the reward model"] += len(ids) > n
        seqs.append(ids[-n:])
    return data.pad(seqs, tok.pad_token_id), data.pad([[1] * len(s) for s in seqs], 0)


@torch.no_grad()
def score(reward, prompts, texts, with_eos, seq=None, mask=None, counts=None):
    """(B,) float scores of the responses: texts are the decoded responses, with_eos (B,) says which ended with
    EOS, seq and mask (B, T) are the policy's prompt + response tokens (read directly when the vocabularies match)."""
    counts = Counter() if counts is None else counts
    if reward["kind"] == "gold":
        return torch.tensor([task.gold_reward(p, t) for p, t in zip(prompts, texts)], dtype=torch.float32)
    if reward["kind"] == "function":
        values = reward["fn"](list(prompts), list(texts))
        values = [float(v) for v in (values.tolist() if hasattr(values, "tolist") else values)]
        if len(values) != len(texts) or not all(math.isfinite(v) for v in values):
            raise SystemExit(f"--reward-model {reward['name']} returned {len(values)} values "
                             f"for {len(texts)} completions (expected one finite number each)")
        return torch.tensor(values, dtype=torch.float32)
    model, label = reward["model"], reward["label"]
    device = next(model.parameters()).device
    if not reward["same_vocab"]:
        seq, mask = _reencode(reward, prompts, texts, with_eos.tolist(), counts)
    seq, mask = seq.to(device), mask.to(device)
    if reward["kind"] == "encoder":
        raw = model(input_ids=seq, attention_mask=mask).logits[:, label].float()
    else:
        raw = models.reward_at_last_token(model, seq, mask, label)
    mean, std = normalization(model.config, label)
    return ((raw - mean) / std).cpu()
