"""rm_generative.py and common/judge.py: the judging texts, the scores against a forward pass worked by hand, the
pointwise labels, position consistency of a judge built to be biased, training end to end (one process, DDP and
--fsdp), the zero-shot judge on a stand-in instruct model, and PPO through saved judges."""

import json
import math
import random
from collections import Counter

import pytest
import torch
from transformers import AutoModelForCausalLM

from common import data, judge, models, scoring, task
from conftest import one_and_two_processes, run_script, scalars
from rm_generative import evaluate, judging_examples, pointwise_labels, two_way_loss, verdict_loss

PROMPT = "Which is smaller, 1 or 22?"
A, B = "Glad to help. It is 1.", "Cats are wonderful animals. The answer is 24."


@pytest.fixture(scope="module")
def bundled():
    tok = models.load_tokenizer(models.BUNDLED_MODEL)
    model = AutoModelForCausalLM.from_pretrained(models.BUNDLED_MODEL).eval()
    return tok, model


def test_response_cap_against_brute_force():
    rng = random.Random(0)
    for _ in range(300):
        lengths = [rng.randint(0, 40) for _ in range(rng.randint(1, 3))]
        budget = rng.randint(0, 90)
        fits = [c for c in range(41) if sum(min(n, c) for n in lengths) <= budget]  # every cap that fits, ascending
        best = fits[-1] if fits else 0
        assert judge.response_cap(lengths, budget) == min(best, max(lengths))


def test_judging_texts_both_orders_verdict_position_and_truncation(bundled):
    tok, _ = bundled
    s = judge.settings(tok, "pairwise", "", "", 128, 32, "bundled")
    assert s["verdict_words"] == ["1", "2"] and s["verdict_ids"] == tok(" 1 2", add_special_tokens=False).input_ids
    rows = [{"prompt": PROMPT, "chosen": A, "rejected": B}]
    seqs, first = judging_examples(rows, [(True, False)], tok, s, Counter())
    assert first.tolist() == [True, False]  # chosen first: verdict 1; rejected first: verdict 2
    # the texts as a reader would write them, tokenized whole
    by_hand = [f"{PROMPT} 1. {x} 2. {y} Which answer is useful, 1 or 2?" for x, y in ((A, B), (B, A))]
    assert seqs == [tok(t).input_ids for t in by_hand]
    # the verdict is the token that follows the text: the text + " 1" is the text's ids + the verdict id
    assert tok(by_hand[0] + " 1").input_ids == seqs[0] + [s["verdict_ids"][0]]
    # too long: the longer response is cut first, its beginning kept, and counted; the text fits max_length
    long = " ".join(["There are many ways to look at a question like this."] * 6)
    short = judge.settings(tok, "pairwise", "", "", 64, 32, "bundled")
    counts = Counter()
    ids = judge.judging_ids(tok, short, PROMPT, [long, A], counts)
    assert len(ids) <= 64 and counts["responses truncated"] == 1 and counts["prompts truncated"] == 0
    assert tok.decode(ids).count("It is 1") == 1  # the short response whole
    # pointwise: one response; the bundled vocabulary has no Yes, so the verdicts fall back to 1 / 0
    p = judge.settings(tok, "pointwise", "", "", 128, 32, "bundled")
    assert p["verdict_words"] == ["1", "0"]
    seqs, first = judging_examples(rows, [(True, False)], tok, p, Counter())
    assert seqs == [tok(f"{PROMPT} {x} Good answer, 1 or 0?").input_ids for x in (A, B)] and first.tolist() == [True, False]


def _by_hand(model, tok, text, ids):
    """log P(first verdict) - log P(second) after one unpadded text, from the full softmax."""
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=torch.tensor([tok(text).input_ids])).logits[0, -1].double(), -1)
    return (logp[ids[0]] - logp[ids[1]]).item()


def test_scores_against_a_forward_pass_worked_by_hand(bundled):
    """Batched (left-padded, logits at the last position only) against one text at a time through the full softmax;
    fp32 with padding differs by about 1e-6, a wrong position or order by far more than the 1e-4 allowed."""
    tok, model = bundled
    s = judge.settings(tok, "pairwise", "", "", 128, 32, "bundled")
    others = [B, "Stop asking me easy things. 22 is smaller.", "It is 1."]
    got = judge.raw_scores(model, tok, s, [PROMPT] * 3, [A] * 3, others)
    for g, other in zip(got.tolist(), others):
        ab = _by_hand(model, tok, f"{PROMPT} 1. {A} 2. {other} Which answer is useful, 1 or 2?", s["verdict_ids"])
        ba = _by_hand(model, tok, f"{PROMPT} 1. {other} 2. {A} Which answer is useful, 1 or 2?", s["verdict_ids"])
        assert g == pytest.approx((ab - ba) / 2, abs=1e-4)
    # antisymmetric, and a response against itself scores exactly 0
    swapped = judge.raw_scores(model, tok, s, [PROMPT] * 3, others, [A] * 3)
    torch.testing.assert_close(swapped, -got)
    assert judge.raw_scores(model, tok, s, [PROMPT], [A], [A]).item() == 0.0
    p = judge.settings(tok, "pointwise", "", "", 128, 32, "bundled")
    got = judge.raw_scores(model, tok, p, [PROMPT] * 2, [A, B])
    for g, x in zip(got.tolist(), (A, B)):
        assert g == pytest.approx(_by_hand(model, tok, f"{PROMPT} {x} Good answer, 1 or 0?", p["verdict_ids"]), abs=1e-4)


def test_losses_against_their_definitions():
    torch.manual_seed(0)
    logits, targets = torch.randn(5, 11), torch.tensor([3, 0, 10, 3, 7])
    rows = logits.tolist()
    by_hand = sum(-math.log(math.exp(rows[i][t]) / sum(math.exp(x) for x in rows[i])) for i, t in enumerate(targets.tolist()))
    assert verdict_loss(logits, targets).item() == pytest.approx(by_hand / 5, rel=1e-5)
    lo, first = torch.tensor([2.0, -1.0, 0.0]), torch.tensor([True, True, False])
    expected = [math.log(1 + math.exp(-2.0)), math.log(1 + math.exp(1.0)), math.log(2)]
    assert two_way_loss(lo, first).tolist() == pytest.approx(expected, rel=1e-6)


def test_pointwise_labels_follow_the_labeler():
    """A nearly noiseless labeler says Yes exactly above the threshold; a noisy one at sigmoid((perceived - t) / T);
    one that flips every label says Yes half the time whatever the response."""
    prompts = task.split_prompts()[0][:300]
    rows = task.make_pairs(prompts, task.Labeler(), 1, seed=0)
    sharp = task.as_pool(task.Labeler(temperature=1e-6))
    labels = pointwise_labels(rows, sharp, 1.0, random.Random(0))
    assert [lab[0] for lab in labels] == [task.gold_reward(r["prompt"], r["chosen"]) > 1.0 for r in rows]
    r = rows[0]
    p_yes = 1 / (1 + math.exp(-(task.gold_reward(r["prompt"], r["chosen"]) - 0.5) / 2.0))
    noisy = task.as_pool(task.Labeler(temperature=2.0))
    freq = sum(pointwise_labels([r], noisy, 0.5, random.Random(i))[0][0] for i in range(4000)) / 4000
    assert abs(freq - p_yes) < 4 * math.sqrt(p_yes * (1 - p_yes) / 4000)
    flips = task.as_pool(task.Labeler(flip_rate=1.0))
    freq = sum(a + b for a, b in pointwise_labels(rows * 10, flips, -100.0, random.Random(1))) / (2 * len(rows) * 10)
    assert abs(freq - 0.5) < 4 * math.sqrt(0.25 / (2 * len(rows) * 10))


def test_position_consistency_of_a_judge_built_to_be_biased(bundled):
    """The bundled model with its final norm set to a constant: the same logits after every text, verdict 1 favoured.
    It names the first response in both orders: position consistency 0, every pair a tie (accuracy 1/2). The trained
    direction, content alone, is the opposite: consistency 1 (checked on a judge that reads one feature)."""
    tok, model = bundled
    biased = AutoModelForCausalLM.from_pretrained(models.BUNDLED_MODEL).eval()
    s = judge.settings(tok, "pairwise", "", "", 128, 32, "bundled")
    with torch.no_grad():
        biased.transformer.ln_f.weight.zero_()
        biased.transformer.ln_f.bias.copy_(biased.transformer.wte.weight[s["verdict_ids"][0]])
    rows = task.make_pairs(task.split_prompts()[1][:20], task.Labeler(), 2, seed=0)
    seqs, first = judging_examples(rows, [(True, False)] * len(rows), tok, s, Counter())
    ev = evaluate(biased, seqs, first, s, tok.pad_token_id)
    assert ev["position_consistency"] == 0.0 and ev["accuracy"] == 0.5
    ev = evaluate(model, seqs, first, s, tok.pad_token_id)  # the untrained model: in between
    assert 0.0 <= ev["position_consistency"] <= 1.0


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A pairwise and a pointwise judge trained on a few embedded prompts (seconds each)."""
    out = {}
    for mode in ("pairwise", "pointwise"):
        cwd = tmp_path_factory.mktemp(mode)
        log = run_script("rm_generative.py", "--mode", mode, "--num-train-prompts", "200", "--pairs-per-prompt", "4",
                         "--eval-pairs-per-prompt", "1", "--calibration-size", "64", "--eval-every", "1000",
                         "--output-dir", str(cwd / "judge"), cwd=cwd)
        out[mode] = (cwd, log)
    return out


def test_training_learns_and_saves_a_judge_ppo_reads(trained):
    for mode, (cwd, log) in trained.items():
        logged = scalars(cwd / "runs")
        assert logged["eval/accuracy"][-1] > logged["eval/accuracy"][0] + 0.05, (mode, logged["eval/accuracy"])
        assert logged["eval/loss"][-1] < logged["eval/loss"][0]
        assert len(logged["eval/accuracy"]) == len(logged["eval/alignment_gap"]) == 2 and "eval/ceiling" in logged and "eval/gold_accuracy" in logged
        assert ("eval/position_consistency" in logged) == (mode == "pairwise")
        assert len(logged["eval/ood_accuracy"]) == 2 and "off-distribution accuracy" in log  # RL policies' pairs
        saved = json.loads((cwd / "judge" / "judge.json").read_text())
        assert saved["mode"] == mode and saved["reward_std"] > 0
        assert f"rm_generative ({mode}): eval accuracy" in log


@pytest.mark.parametrize("mode", ["pairwise", "pointwise"])
def test_ppo_through_a_saved_judge(trained, tmp_path, mode):
    """ppo_rlhf.py --reward-model DIR with no other flag: it says what the reward means, and it trains. In process:
    the score the loaded judge gives equals the saved normalization applied to judge.raw_scores; pairwise, a response
    equal to its prompt's reference scores the normalized 0."""
    cwd, _ = trained[mode]
    prompts = tmp_path / "prompts.jsonl"  # 60 of the task's prompts: 60 references to sample, not 1740
    task.export_jsonl([{"prompt": p} for p in task.all_prompts()[:60]], prompts)
    out = run_script("ppo_rlhf.py", "--reward-model", str(cwd / "judge"), "--dataset", str(prompts),
                     "--total-episodes", "64", "--rollout-batch-size", "32", "--log-samples-every", "1", cwd=tmp_path)
    assert f"a generative judge ({mode})" in out and "ppo_rlhf: eval gold" in out
    assert ("60 reference responses" in out) == (mode == "pairwise")
    tok = models.load_tokenizer(models.BUNDLED_MODEL)
    reward = scoring.load(str(cwd / "judge"), tok)
    j = reward["judge"]
    reward["references"] = {PROMPT: B}
    got = scoring.score(reward, [PROMPT, PROMPT], [A, B], torch.tensor([True, True]))
    raw = judge.raw_scores(reward["model"], reward["tokenizer"], j, [PROMPT] * 2, [A, B], [B, B] if mode == "pairwise" else None)
    torch.testing.assert_close(got, (raw - j["reward_mean"]) / j["reward_std"])
    if mode == "pairwise":
        assert got[1].item() == pytest.approx(-j["reward_mean"] / j["reward_std"], abs=1e-6)


def test_zero_shot_judge_on_a_standin_instruct_model(tmp_path, standin):
    """--judge-only with the Qwen2 stand-in (a chat template): the judging text is the user's message rendered with the
    generation prompt, the verdict the first token of the reply; nothing trained; hub pairs read as published."""
    data_dir = standin("data", "trl-ultrafeedback")
    out = run_script("rm_generative.py", "--judge-only", "--model", standin("lm", "qwen2"), "--dataset", data_dir,
                     "--output-dir", str(tmp_path / "judge"), cwd=tmp_path)
    saved = json.loads((tmp_path / "judge" / "judge.json").read_text())
    assert saved["chat"] and "<|im_start|>user\nWhich of these two answers" in saved["template"]  # after Qwen's system turn
    assert saved["template"].endswith("<|im_start|>assistant\n") and "{response_a}" in saved["template"]
    tok = models.load_tokenizer(str(tmp_path / "judge"))
    assert saved["verdict_ids"] == [tok("1").input_ids[0], tok("2").input_ids[0]]  # no space after the newline
    logged = scalars(tmp_path / "runs")
    assert len(logged["eval/accuracy"]) == 1 and "eval/position_consistency" in logged
    assert "rm_generative (pairwise): eval accuracy" in out


def test_two_processes_follow_the_one_process_trajectory(tmp_path):
    """DDP and --fsdp on 2 processes with 8 texts per device take the steps of 1 process with 16 (same global batches):
    the same logged loss at every step and the same eval loss within 1e-4 (fp32 sums in another order: about 1e-6).
    A user's file of 60 pairs (120 judging texts) and 3 held-out pairs: rank 1 scores 3 of the 6 eval texts."""
    train, eval_ = data.split_by_prompt(task.make_pairs(task.all_prompts(), task.Labeler(), 1, seed=0))
    task.export_jsonl(train[:60] + eval_[:3], tmp_path / "pairs.jsonl")
    flags = ["--dataset", str(tmp_path / "pairs.jsonl"), "--eval-every", "3"]
    one, *twos = one_and_two_processes("rm_generative.py", flags, tmp_path, "rm_generative (pairwise): eval accuracy")
    for two in twos:
        assert len(two["loss/train"]) == len(one["loss/train"]) == 8  # 120 texts in batches of 16
        assert two["loss/train"] == pytest.approx(one["loss/train"], abs=1e-4)
        assert two["eval/loss"] == pytest.approx(one["eval/loss"], abs=1e-4) and len(two["eval/loss"]) == 4  # 0 3 6 8
    assert one["loss/train"][-1] < one["loss/train"][0]


@pytest.mark.parametrize("kind, dataset, mode", [("gpt2", "hh-rlhf", "pairwise"), ("llama", "trl-ultrafeedback", "pointwise")])
def test_hub_layouts_on_standins_with_their_tokenizers(tmp_path, standin, kind, dataset, mode):
    """GPT-2's tokenizer (one token for unk, bos and eos; no pad) on hh-rlhf's whole dialogues: plain template, the
    verdicts " 1" / " 2" with their space. Llama's (BOS, pad = EOS, a chat template) on UltraFeedback's messages: the
    template rendered by the chat template carries its one BOS, which encoding does not add a second time."""
    out = run_script("rm_generative.py", "--model", standin("lm", kind), "--dataset", standin("data", dataset),
                     "--mode", mode, "--output-dir", str(tmp_path / "judge"), cwd=tmp_path)
    assert f"rm_generative ({mode}): eval accuracy" in out
    saved = json.loads((tmp_path / "judge" / "judge.json").read_text())
    tok = models.load_tokenizer(str(tmp_path / "judge"))
    if kind == "gpt2":
        assert not saved["chat"] and saved["verdict_ids"] == [tok(" 1").input_ids[0], tok(" 2").input_ids[0]]
    else:
        assert saved["chat"] and saved["verdict_words"] == ["Yes", "No"]
        ids = judge.judging_ids(tok, saved, [{"role": "user", "content": "Hi?"}], ["Hello."], Counter())
        assert ids[0] == tok.bos_token_id and ids[1] != tok.bos_token_id
