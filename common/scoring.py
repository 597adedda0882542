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
    a generative judge      a directory with judge.json (rm_generative.py output): a language model whose next token
                            is the verdict on the decoded text: pointwise log P(Yes) - log P(No), pairwise the
                            preference over the starting policy's response to the same prompt (common/judge.py;
                            sampling.sample_references draws those once, at the start)
    an ensemble             a directory with ensemble.json (rm_ensemble.py output): every member scores, one reward is
                            their mean, minimum or mean - c * std (--ensemble-aggregate; Coste et al. 2023)
--reward-label picks the output of a classifier with several labels: a name of config.id2label or an index
(rm_composite.py's models read "composite" unless told otherwise).
Our reward models store a normalization in their config: normalized = (raw - reward_mean) / reward_std, one number
for all outputs, or a list with one per output (rm_composite.py). Calibrated to gold on the embedded task, the
normalized score is on gold's scale.
"""

import importlib.util
import json
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from common import data, judge, models, parallel, runs, task


@dataclass
class EnsembleArgs:
    """How an ensemble of reward models (--reward-model DIR with DIR/ensemble.json) becomes one reward."""

    ensemble_aggregate: Literal["mean", "min", "mean_minus_std"] = "mean"
    """--reward-model an ensemble: the members' mean, their minimum (worst case) or mean - c * std (uncertainty
    weighted); the last two are conservative, against overoptimization (Coste et al. 2023)"""
    uncertainty_coef: float = 0.5
    """c of mean_minus_std: the reward is lowered by c standard deviations of the members' scores"""


def aggregate(scores, how, coef=0.0):
    """(B,) one reward from the members' (M, B) scores (Coste et al. 2023): their mean, their minimum (worst case),
    or mean - coef * std with the std over members (1/M; Coste et al. subtract coef * variance, on members of std 1
    the same ordering of responses up to the coefficient)."""
    if how == "mean":
        return scores.mean(0)
    if how == "min":
        return scores.min(0).values
    return scores.mean(0) - coef * scores.std(0, correction=0)


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
    members = ensemble_members(spec)
    for member in members or [spec]:
        problem = models.model_problem(member)
        if problem:
            runs.stop(problem)


def ensemble_members(spec):
    """The member directories of an ensemble (DIR/ensemble.json: {"members": [names in DIR]}), or None."""
    path = Path(spec) / "ensemble.json"
    if not path.is_file():
        return None
    members = json.loads(path.read_text()).get("members")
    if not members or not all(isinstance(m, str) for m in members):
        runs.stop(f"--reward-model {spec}: {path} must hold {{\"members\": [directory names]}}, got {members!r}")
    return [str(Path(spec) / m) for m in members]


def load(spec, policy_tokenizer, label=None, device="cpu", trust_remote_code=False, dtype=torch.float32,
         ensemble=None):
    """The reward as a dict for score(): {"kind", and per kind "fn" or "model", "tokenizer", "label", "same_vocab"}.
    A reward model is frozen: its weights are stored in `dtype` (bf16 on GPUs that support it, under autocast).
    An ensemble: {"kind": "ensemble", "members": [rewards], "aggregate", "coef"}, from ensemble (EnsembleArgs)."""
    if spec == "gold":
        return {"kind": "gold"}
    members = ensemble_members(spec)
    if members:
        ensemble = ensemble or EnsembleArgs()
        return {"kind": "ensemble", "name": spec, "aggregate": ensemble.ensemble_aggregate,
                "coef": ensemble.uncertainty_coef, "stats": {},
                "members": [load(m, policy_tokenizer, label, device, trust_remote_code, dtype) for m in members]}
    if spec.endswith(".py") or ".py:" in spec:
        if ":" not in spec.rpartition(".py")[2]:
            raise SystemExit(f"--reward-model {spec}: name the function too, as in my_rewards.py:reward")
        return {"kind": "function", "fn": _load_function(spec), "name": spec}
    settings = judge.load(spec)
    if settings is not None:  # rm_generative.py's output: a language model that writes the verdict
        model = models.load_causal_lm(spec, dtype, trust_remote_code)
        model = models.disable_dropout(model).eval().requires_grad_(False)
        return {"kind": "generative", "model": model if parallel.sharded_run() else model.to(device), "name": spec,
                "tokenizer": models.load_tokenizer(spec, trust_remote_code), "judge": settings, "references": {}}
    tokenizer = models.load_tokenizer(spec, trust_remote_code)
    model = models.load_reward_model(spec, dtype, trust_remote_code, num_labels=None)
    model = models.disable_dropout(model).eval().requires_grad_(False)
    model = model if parallel.sharded_run() else model.to(device)  # --fsdp: parallel.frozen() shards it later
    kind = "decoder" if hasattr(model, "score") else "encoder"  # a decoder's head is read at the last token by us
    same_vocab = kind == "decoder" and tokenizer.get_vocab() == policy_tokenizer.get_vocab()
    if kind == "encoder":
        tokenizer.truncation_side = "left"  # a long prompt loses its beginning, never the response
    return {"kind": kind, "model": model, "tokenizer": tokenizer, "label": label_index(model.config, label, spec),
            "same_vocab": same_vocab, "context": models.context_length(model, tokenizer), "name": spec}


def models_of(reward):
    """The networks a reward runs: its model, an ensemble's members' models, or none (gold, a function)."""
    return [m["model"] for m in reward.get("members", [reward]) if "model" in m]


def describe(reward):
    """One line on how responses are scored."""
    if reward["kind"] == "gold":
        return "the embedded task's gold reward"
    if reward["kind"] == "function":
        return f"the function {reward.get('name')}"
    if reward["kind"] == "ensemble":
        how = {"mean": "their mean", "min": "their minimum", "mean_minus_std": f"mean - {reward['coef']:g} std"}
        return (f"{reward['name']}: an ensemble of {len(reward['members'])} reward models, the reward "
                f"{how[reward['aggregate']]}; member 0: {describe(reward['members'][0])}")
    if reward["kind"] == "generative":
        j = reward["judge"]
        yes, no = j["verdict_words"]
        how = (f"log P({yes}) - log P({no}) after its question" if j["mode"] == "pointwise" else
               f"log-odds that the response beats the starting policy's response to its prompt (verdicts {yes}/{no}, "
               "both orders averaged)")
        return (f"{reward['name']}: a generative judge ({j['mode']}), the reward {how}, "
                f"reward_mean {j['reward_mean']:.4g}, reward_std {j['reward_std']:.4g}")
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
        prompt_texts = [judge.as_text(p) for p in prompts]
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
    if reward["kind"] == "ensemble":  # (M, B): every member scores; their spread is kept for the logs
        members = torch.stack([score(m, prompts, texts, with_eos, seq, mask, counts) for m in reward["members"]])
        reward["stats"] = {"ensemble/mean": members.mean().item(), "ensemble/min": members.min(0).values.mean().item(),
                           "ensemble/std": members.std(0, correction=0).mean().item()}
        return aggregate(members, reward["aggregate"], reward["coef"])
    if reward["kind"] == "generative":  # the judge reads the decoded texts
        j, refs, cut = reward["judge"], None, Counter()
        if j["mode"] == "pairwise":
            refs = [reward["references"][judge.prompt_key(p)] for p in prompts]
        raw = judge.raw_scores(reward["model"], reward["tokenizer"], j, list(prompts), list(texts), refs, cut)
        counts["truncated for the reward model"] += cut["prompts truncated"] + cut["responses truncated"]
        return (raw - j["reward_mean"]) / j["reward_std"]
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
