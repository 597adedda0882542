"""common/scoring.py: every kind of reward scores a response the same way whatever path it takes."""


import pytest
import torch

import ppo_rlhf
from common import data, models, sampling, scoring, task
from test_ppo_rlhf import other_tokenizer, save_reward_model

PROMPTS = task.all_prompts()[:3]


def _batch(tok, texts, with_eos):
    """Left-padded prompt + response ids as a rollout holds them: EOS only after the responses that ended with it."""
    seqs = []
    for p, t, eos in zip(PROMPTS, texts, with_eos):
        ids = tok(p).input_ids + tok(" " + t, add_special_tokens=False).input_ids
        seqs.append(ids + [tok.eos_token_id] if eos else ids)
    return data.pad(seqs, tok.pad_token_id, "left"), data.pad([[1] * len(s) for s in seqs], 0, "left")


def test_decoder_reward_model_same_score_on_its_tokens_and_re_encoded(tmp_path):
    """A response that ended with EOS and one that was cut off: the policy's tokens read directly and the decoded text
    re-encoded for a tokenizer with another vocabulary give the same normalized score (before the fix the re-encoded
    path appended EOS to every response: a cut-off one scored differently)."""
    tok = models.load_tokenizer(models.BUNDLED_MODEL)
    rm_dir = save_reward_model(tmp_path / "rm", tok, mean=0.3, std=2.0)
    other_dir = save_reward_model(tmp_path / "rm_other", other_tokenizer(), mean=0.3, std=2.0)
    same, other = scoring.load(rm_dir, tok), scoring.load(other_dir, tok)
    assert same["same_vocab"] and not other["same_vocab"] and same["kind"] == other["kind"] == "decoder"
    texts = ["Sure! The answer is 1.", "It is 0.", "Obviously. 0 is larger. Cats are"]
    with_eos = torch.tensor([True, True, False])  # the last one ran out of length
    seq, mask = _batch(tok, texts, with_eos)
    direct = scoring.score(same, PROMPTS, texts, with_eos, seq, mask)
    reencoded = scoring.score(other, PROMPTS, texts, with_eos, seq, mask)
    torch.testing.assert_close(direct, reencoded, atol=1e-5, rtol=1e-5)
    raw = models.reward_at_last_token(same["model"], seq, mask)
    torch.testing.assert_close(direct, (raw - 0.3) / 2.0)
    # EOS is what the reward model reads for a finished response: with it appended the cut-off one scores otherwise
    appended = scoring.score(other, PROMPTS, texts, torch.tensor([True, True, True]), seq, mask)
    assert abs(appended[2] - direct[2]) > 1e-3 and torch.allclose(appended[:2], direct[:2], atol=1e-5)


def test_gold_and_the_stop_token_stays_in_the_text():
    """With --stop-token "." the text a reward sees ends with the period (it was stripped before, so the gold reward's
    sentence checks could never see it): rollout keeps non-special stop tokens and drops EOS."""
    gold = scoring.load("gold", None)
    assert scoring.score(gold, PROMPTS, ["It is 1.", "x"], torch.tensor([1, 0])).tolist() == [
        task.gold_reward(PROMPTS[0], "It is 1."), task.gold_reward(PROMPTS[1], "x")]
    tok = models.load_tokenizer(models.BUNDLED_MODEL)
    policy = models.load_causal_lm(models.BUNDLED_MODEL)
    period = [tok.convert_tokens_to_ids(".")]
    stop_ids = [tok.eos_token_id] + period
    queries = [tok(p).input_ids for p in task.all_prompts()[:32]]
    torch.manual_seed(0)
    r = sampling.rollout(policy, policy, tok, queries, sampling.generation_config(tok, stop_ids, 24, 1.0), stop_ids, 1.0)
    ends = [row[m.bool()].tolist()[-1] for row, m in zip(r["seq"][:, r["context_length"]:], r["resp_mask"])]
    assert sum(e == period[0] for e in ends) >= 8  # the check has cases to check
    for text, end, eos in zip(r["texts"], ends, r["with_eos"].tolist()):
        assert text.endswith(".") == (end == period[0]) or end == tok.eos_token_id and text.endswith(".")
        assert eos == (end == tok.eos_token_id) and "<eos>" not in text


def test_python_function_reward(tmp_path):
    f = tmp_path / "my_rewards.py"
    f.write_text("def reward(prompts, completions):\n    return [float(len(c)) for c in completions]\n"
                 "def wrong(prompts, completions):\n    return [1.0]\n")
    fn = scoring.load(f"{f}:reward", None)
    assert scoring.score(fn, PROMPTS[:2], ["ab", "abcd"], torch.tensor([1, 1])).tolist() == [2.0, 4.0]
    with pytest.raises(SystemExit, match="returned 1 values for 2 completions"):
        scoring.score(scoring.load(f"{f}:wrong", None), PROMPTS[:2], ["ab", "abcd"], torch.tensor([1, 1]))
    with pytest.raises(SystemExit, match="defines no function nope"):
        scoring.load(f"{f}:nope", None)
    with pytest.raises(SystemExit, match="no such file"):
        scoring.load(f"{tmp_path}/missing.py:reward", None)


def test_a_causal_lm_is_not_a_reward_model():
    with pytest.raises(SystemExit, match="is not a sequence classifier"):
        scoring.load(models.BUNDLED_MODEL, models.load_tokenizer(models.BUNDLED_MODEL))
