"""Generative reward models (rm_generative.py) and LLM-as-a-judge: a causal LM reads a judging text and the next token
is its verdict. What rm_generative.py trains and what ppo_rlhf.py and grpo.py score with (--reward-model DIR with
DIR/judge.json) is built here once:

    pairwise   the prompt and two responses, the verdict names the better one (Mahan et al. 2024; TRL's pairwise
               judges); scored in both orders and averaged, so position carries no signal (Zheng et al. 2023)
    pointwise  the prompt and one response, the verdict is Yes or No (Zhang et al. 2024, Generative Verifiers)

The judge's settings (mode, template, verdict tokens, lengths, normalization) are saved as DIR/judge.json beside the
model. The template is plain text with placeholders; with a tokenizer that has a chat template it is the user's message,
rendered with the generation prompt, so the verdict is the first token of the assistant's reply.
"""

import json
import re
from collections import Counter
from pathlib import Path

import torch

from common import data, models, runs

FIELDS = {"pairwise": ("prompt", "response_a", "response_b"), "pointwise": ("prompt", "response")}
# plain templates: words of the bundled model's vocabulary, no newlines (its tokenizer splits on spaces only)
PLAIN = {"pairwise": "{prompt} {verdict_1}. {response_a} {verdict_2}. {response_b} "
                     "Which answer is useful, {verdict_1} or {verdict_2}?",
         "pointwise": "{prompt} {response} Good answer, {verdict_1} or {verdict_2}?"}
CHAT = {"pairwise": "Which of these two answers to the question is better?\n\nQuestion: {prompt}\n\n"
                    "Answer {verdict_1}: {response_a}\n\nAnswer {verdict_2}: {response_b}\n\n"
                    "Reply with {verdict_1} or {verdict_2} only.",
        "pointwise": "Is this answer to the question good?\n\nQuestion: {prompt}\n\nAnswer: {response}\n\n"
                     "Reply with {verdict_1} or {verdict_2} only."}
DEFAULT_WORDS = {"pairwise": [("1", "2")], "pointwise": [("Yes", "No"), ("1", "0")]}  # the first the tokenizer has


def verdict_logodds(logits, verdict_ids):
    """(N,) log P(verdict_1) - log P(verdict_2) from the next-token logits (N, V); the softmax's normalizer cancels.
    Pairwise, the log-odds that the judge names the first response (Mahan et al. 2024); pointwise, the score
    log P(Yes) - log P(No): the logit of P(Yes | Yes or No), a monotone map of Zhang et al.'s reward P(Yes)."""
    return logits[:, verdict_ids[0]].float() - logits[:, verdict_ids[1]].float()


def pairwise_score(logodds_ab, logodds_ba):
    """(N,) the preference for a over b: the log-odds that a wins with a shown first, and with b shown first (there
    the log-odds of naming the first response is against a), averaged: (lo_ab - lo_ba) / 2. Judging both orders
    removes position bias (Zheng et al. 2023); s(a, b) = -s(b, a), and s(a, a) = 0."""
    return (logodds_ab - logodds_ba) / 2


def as_text(x):
    """A prompt or response as plain text: a conversation's messages' contents, one per line."""
    return x if isinstance(x, str) else "\n".join(m["content"] for m in x)


def substitute(template, values):
    """The template with each {name} of `values` replaced in one pass (a response that contains "{prompt}" stays)."""
    return re.sub(r"\{(\w+)\}", lambda m: values.get(m.group(1), m.group(0)), template)


def response_cap(lengths, budget):
    """The largest number of tokens c such that the responses cut to c tokens each fit the budget,
    sum_i min(len_i, c) <= budget: the longest is cut first, and none is cut when all fit."""
    for c in range(max(lengths), -1, -1):
        if sum(min(n, c) for n in lengths) <= budget:
            return c
    return 0


def settings(tokenizer, mode, template, verdict_words, max_length, max_prompt_length, name):
    """The judge as a dict (saved as judge.json): its template with the verdict words filled in (and the chat template
    applied where the tokenizer has one), the verdict words and their token ids, the lengths. Stops with one line on a
    template without the placeholders it needs or verdict words that are not two distinct tokens."""
    chat = tokenizer.chat_template is not None
    template = template or (CHAT if chat else PLAIN)[mode]
    names = set(re.findall(r"\{(\w+)\}", template))
    missing = [f for f in FIELDS[mode] if f not in names]
    unknown = sorted(names - set(FIELDS[mode]) - {"verdict_1", "verdict_2"})
    if missing or unknown:
        runs.stop(f"--template: a {mode} template needs {{{'}, {'.join(FIELDS[mode])}}} (and may use {{verdict_1}}, "
                  f"{{verdict_2}}); " + (f"missing {missing}" if missing else f"unknown placeholders {unknown}"))
    candidates = [tuple(verdict_words.split())] if verdict_words else DEFAULT_WORDS[mode]
    for words in candidates:
        if len(words) != 2:
            runs.stop(f"--verdict-words {verdict_words!r}: give two words (the first response's and the second's, "
                      "or Yes and No)")
        text = substitute(template, {"verdict_1": words[0], "verdict_2": words[1]})
        if chat:
            text = tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                                 add_generation_prompt=True)
        ids = [verdict_id(tokenizer, text, w, chat) for w in words]
        unknown = tokenizer.unk_token_id in ids and tokenizer.unk_token_id != tokenizer.eos_token_id
        if ids[0] != ids[1] and not unknown:
            break
    else:
        tokens = tokenizer.convert_ids_to_tokens(ids)
        runs.stop(f"--verdict-words {' '.join(words)!r}: in {name}'s tokenizer they begin with the tokens {tokens}; "
                  "the verdicts must begin with two different known tokens")
    judge = {"mode": mode, "template": text, "chat": chat, "verdict_words": list(words), "verdict_ids": ids,
             "max_length": max_length, "max_prompt_length": max_prompt_length}
    judge["overhead"] = len(encode_text(tokenizer, judge, substitute(text, dict.fromkeys(FIELDS[mode], ""))))
    if judge["overhead"] + max_prompt_length >= max_length:
        runs.stop(f"--max-length {max_length}: the template alone takes {judge['overhead']} tokens and the prompt "
                  f"up to {max_prompt_length}: no room for the responses")
    return judge


def encode_text(tokenizer, judge, text):
    """Token ids of a filled-in judging text (a chat-rendered one carries its own special tokens)."""
    return tokenizer(text, add_special_tokens=not judge["chat"]).input_ids


def verdict_id(tokenizer, text, word, chat):
    """The token the model reads as the verdict `word` right after the judging text: the first token that text + word
    has beyond the text's own (a space before the word unless the text ends with whitespace)."""
    sep = "" if text[-1:].isspace() else " "
    before = tokenizer(text, add_special_tokens=not chat).input_ids
    after = tokenizer(text + sep + word, add_special_tokens=not chat).input_ids
    if after[: len(before)] == before and len(after) > len(before):
        return after[len(before)]
    return tokenizer(sep + word, add_special_tokens=False).input_ids[0]


def judging_ids(tokenizer, judge, prompt, responses, counts):
    """Token ids of the judging text for a prompt and its responses (one pointwise, two pairwise): the prompt cut to
    max_prompt_length tokens (its end kept), the responses cut to what is left of max_length, the longest first (their
    beginnings kept); each cut counted. The verdict token follows these ids."""
    tok = tokenizer
    p_ids = tok(as_text(prompt), add_special_tokens=False).input_ids
    texts = [as_text(prompt)] + [as_text(r) for r in responses]
    if len(p_ids) > judge["max_prompt_length"]:
        texts[0] = tok.decode(p_ids[-judge["max_prompt_length"]:])
        p_ids = p_ids[-judge["max_prompt_length"]:]
        counts["prompts truncated"] += 1
    r_ids = [tok(t, add_special_tokens=False).input_ids for t in texts[1:]]
    cap = response_cap([len(r) for r in r_ids], judge["max_length"] - judge["overhead"] - len(p_ids))
    for i, r in enumerate(r_ids):
        if len(r) > cap:
            texts[1 + i] = tok.decode(r[:cap])
            counts["responses truncated"] += 1
    ids = encode_text(tok, judge, substitute(judge["template"], dict(zip(FIELDS[judge["mode"]], texts))))
    data.count_unknown(tok, ids, counts)
    counts["examples"] += 1
    if len(ids) > judge["max_length"]:  # re-tokenized text can run a token or two longer
        counts["judging texts cut at their start"] += 1
        ids = ids[-judge["max_length"]:]
    return ids


def verdict_logits(model, seqs, pad_id):
    """(N, V) the next-token logits after each judging text (lists of ids): left padding puts every last token at
    the same position, so the model computes logits there only (logits_to_keep=1)."""
    device = next(model.parameters()).device
    ids = data.pad(seqs, pad_id, side="left").to(device)
    mask = data.pad([[1] * len(s) for s in seqs], 0, side="left").to(device)
    out = model(input_ids=ids, attention_mask=mask, position_ids=models.position_ids_from_mask(mask), logits_to_keep=1)
    return out.logits[:, -1]


@torch.no_grad()
def logodds(model, seqs, verdict_ids, pad_id, chunk=64):
    """(N,) verdict_logodds after each judging text (lists of ids), chunk texts per forward pass."""
    out = [verdict_logodds(verdict_logits(model, seqs[i : i + chunk], pad_id), verdict_ids).cpu()
           for i in range(0, len(seqs), chunk)]
    return torch.cat(out) if out else torch.zeros(0)


@torch.no_grad()
def raw_scores(model, tokenizer, judge, prompts, responses, references=None, counts=None, chunk=64):
    """(N,) the judge's score of each response: pointwise log P(Yes) - log P(No); pairwise its preference over the
    reference response to the same prompt (pairwise_score over both orders)."""
    counts = Counter() if counts is None else counts
    if judge["mode"] == "pointwise":
        seqs = [judging_ids(tokenizer, judge, p, [r], counts) for p, r in zip(prompts, responses)]
        return logodds(model, seqs, judge["verdict_ids"], tokenizer.pad_token_id, chunk)
    triples = list(zip(prompts, responses, references))
    seqs = [judging_ids(tokenizer, judge, p, [r, ref], counts) for p, r, ref in triples]  # the response first
    seqs += [judging_ids(tokenizer, judge, p, [ref, r], counts) for p, r, ref in triples]  # the reference first
    lo = logodds(model, seqs, judge["verdict_ids"], tokenizer.pad_token_id, chunk)
    return pairwise_score(lo[: len(triples)], lo[len(triples) :])


def prompt_key(prompt):
    """A prompt (text or messages) as a dict key."""
    return prompt if isinstance(prompt, str) else json.dumps(prompt, sort_keys=True)


def save(judge, directory):
    """The judge's settings as DIR/judge.json, beside its model: what ppo_rlhf.py needs to score with it."""
    Path(directory, "judge.json").write_text(json.dumps(judge, indent=1) + "\n")


def load(directory):
    """The settings of a saved judge, or None when the directory holds no judge.json."""
    path = Path(directory, "judge.json")
    return json.loads(path.read_text()) if path.is_file() else None
