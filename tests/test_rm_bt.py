"""rm_bt.py: the Bradley-Terry loss, the reward read at the last real token, the normalization, and the script end to end."""

import math
import random
import re
from collections import Counter

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from common import data, models, task
from conftest import LORA_KINDS, calibration_refit, check_lora_save, one_and_two_processes, run_capture, run_script
from rm_bt import bradley_terry_loss, reward_normalization, score, score_pairs


def _loop_loss(rc, rr, margin, center_coef):
    """-log sigmoid(r_w - r_l - m) written out as log(1 + exp(-(r_w - r_l - m))), plus the centering term, one pair at a time."""
    total, centering = 0.0, 0.0
    for w, l, m in zip(rc, rr, margin):
        total += math.log(1 + math.exp(-(w - l - m)))
        centering += (w + l) ** 2
    return total / len(rc) + center_coef * centering / len(rc)


def test_bradley_terry_loss_against_a_loop():
    torch.manual_seed(0)
    rc, rr = torch.randn(16) * 3, torch.randn(16) * 3
    margin = torch.tensor([0, 1 / 3, 2 / 3, 1.0] * 4)
    no_margin = [0.0] * 16
    assert bradley_terry_loss(rc, rr).item() == pytest.approx(_loop_loss(rc.tolist(), rr.tolist(), no_margin, 0.0), rel=1e-5)
    assert bradley_terry_loss(rc, rr, margin, 0.01).item() == pytest.approx(
        _loop_loss(rc.tolist(), rr.tolist(), margin.tolist(), 0.01), rel=1e-5)
    # by hand: r_w = r_l and no margin gives log 2; a margin makes the same pair cost more
    assert bradley_terry_loss(torch.zeros(3), torch.zeros(3)).item() == pytest.approx(math.log(2))
    assert bradley_terry_loss(torch.zeros(1), torch.zeros(1), torch.ones(1)).item() == pytest.approx(math.log(1 + math.e))
    # stable where log(sigmoid(.)) underflows: a pair ordered the wrong way by 200 costs 200
    assert bradley_terry_loss(torch.tensor([-100.0]), torch.tensor([100.0])).item() == pytest.approx(200.0)


def test_label_smoothing_against_a_loop_and_by_hand():
    """Per-pair smoothing a: (1 - a) log(1 + e^-d) + a log(1 + e^d), a pair at a time; a = 1 is the reversed label,
    a = 1/2 has its minimum at d = 0 (the label carries no direction)."""
    torch.manual_seed(1)
    rc, rr, a = torch.randn(16) * 3, torch.randn(16) * 3, torch.rand(16)
    loop = sum((1 - ai) * math.log(1 + math.exp(-(w - l))) + ai * math.log(1 + math.exp(w - l))
               for w, l, ai in zip(rc.tolist(), rr.tolist(), a.tolist())) / 16
    assert bradley_terry_loss(rc, rr, smoothing=a).item() == pytest.approx(loop, rel=1e-5)
    assert bradley_terry_loss(rc, rr, smoothing=torch.ones(16)).item() == pytest.approx(bradley_terry_loss(rr, rc).item())
    d = torch.zeros(1, requires_grad=True)
    bradley_terry_loss(d, torch.zeros(1), smoothing=torch.full((1,), 0.5)).backward()
    assert d.grad.item() == pytest.approx(0.0, abs=1e-7)


def test_bradley_terry_gradient_pushes_chosen_up_and_rejected_down():
    rc, rr = torch.tensor([0.5], requires_grad=True), torch.tensor([0.2], requires_grad=True)
    bradley_terry_loss(rc, rr).backward()
    s = 1 / (1 + math.exp(-(0.5 - 0.2)))
    assert rc.grad.item() == pytest.approx(-(1 - s)) and rr.grad.item() == pytest.approx(1 - s)


def _reward_alone(model, ids):
    """The reward of one unpadded sequence: the head applied to the last position's hidden state."""
    with torch.no_grad():
        hidden = model.base_model(input_ids=torch.tensor([ids])).last_hidden_state  # (1, T, H)
        return model.score(hidden[0, -1]).item()


@pytest.mark.parametrize("checkpoint", ["bundled", "gpt2_no_pad", "llama_pad_eos"])
def test_reward_at_last_real_token_whatever_the_padding(checkpoint, request):
    """Right padding with a separate pad token (bundled), a tokenizer without one (GPT-2 style, pad set to EOS
    by the loader), and pad == EOS (Llama style): a batch gives every sequence the reward it gets alone."""
    name = models.BUNDLED_MODEL if checkpoint == "bundled" else request.getfixturevalue(checkpoint)
    tok = models.load_tokenizer(name)
    torch.manual_seed(0)
    model = models.load_reward_model(name).eval()
    torch.nn.init.normal_(model.score.weight)  # a random head, so different positions give different rewards
    prompt = "Which is larger, 12 or 7?"
    responses = ["It is 12.", "Sure! The answer is 12. Hope this helps!", "Obviously. 7 is larger. Cats are wonderful animals."]
    seqs = [data.encode(tok, prompt, r, 96, 32, Counter())[0] for r in responses]
    assert all(s[-1] == tok.eos_token_id for s in seqs)  # every sequence ends in EOS, so with pad == EOS the padding looks like it
    with torch.no_grad():
        batched = score(model, seqs, tok.pad_token_id, "cpu")
        rc, rr = score_pairs(model, [{"chosen": seqs[0], "rejected": seqs[2]}, {"chosen": seqs[1], "rejected": seqs[0]}], tok.pad_token_id, "cpu")
    alone = [_reward_alone(model, s) for s in seqs]
    assert batched.tolist() == pytest.approx(alone, abs=1e-4)
    assert rc.tolist() == pytest.approx([alone[0], alone[1]], abs=1e-4) and rr.tolist() == pytest.approx([alone[2], alone[0]], abs=1e-4)
    # the reward at the token before EOS would differ: the position matters
    assert _reward_alone(model, seqs[0][:-1]) != pytest.approx(alone[0], abs=1e-3)


def test_reward_normalization_mean_zero_and_std_one():
    torch.manual_seed(0)
    rewards = torch.randn(500) * 2.5 + 4.0
    mean, std = reward_normalization(rewards)
    assert std == 1.0 and ((rewards - mean) / std).mean().item() == pytest.approx(0.0, abs=1e-5)
    mean, std = reward_normalization(rewards, gain=True)
    normalized = ((rewards - mean) / std).double()
    assert normalized.mean().item() == pytest.approx(0.0, abs=1e-5) and normalized.std(correction=0).item() == pytest.approx(1.0, abs=1e-5)


def _summary(out):
    m = re.search(r"rm_bt: eval accuracy ([\d.]+) -> ([\d.]+)", out)
    assert m, out
    return float(m.group(1)), float(m.group(2))


def _normalized_rewards(model, tok, rows):
    ids = [data.encode(tok, r["prompt"], r["completion"], 96, 32, Counter())[0] for r in rows]
    with torch.no_grad():
        raw = score(model, ids, tok.pad_token_id, "cpu")
    return (raw - model.config.reward_mean) / model.config.reward_std


def _other_operand(prompt):
    """The wrong one of the prompt's two numbers."""
    a, b = map(int, re.findall(r"\d+", prompt))
    return a + b - task.correct_answer(prompt)


def test_end_to_end_tiny_run_ranks_best_above_worst(tmp_path):
    out = run_script("rm_bt.py", "--pairs-per-prompt", "1", "--eval-pairs-per-prompt", "2", "--reference-size", "256",
                     "--normalize-std", "--calibration-size", "0", "--output-dir", str(tmp_path / "m"), cwd=tmp_path)
    before, after = _summary(out)
    assert after > before + 0.1 and "labeler's ceiling" in out and "gold accuracy" in out
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "m").eval()
    tok = models.load_tokenizer(str(tmp_path / "m"))
    # the saved normalization: the reference responses (SFT demonstrations, as the script draws them) score mean 0, std 1
    train_prompts, eval_prompts = task.split_prompts()
    ref = random.Random(1).sample(task.make_sft(train_prompts, 1, seed=1 + 2), 256)
    normalized = _normalized_rewards(model, tok, ref)
    assert abs(normalized.mean().item()) < 1e-3 and normalized.std(correction=0).item() == pytest.approx(1.0, abs=1e-3)
    # a clearly better response above a clearly worse one (wrong, rude, rambling) on held-out prompts
    better = [{"prompt": p, "completion": task.best_response(p)} for p in eval_prompts]
    worse = [{"prompt": p, "completion": f"Obviously. It is {_other_operand(p)}. Let me think about this for a moment. "
              "I like to talk about the weather. Numbers are a very old invention."} for p in eval_prompts]
    assert all(task.gold_reward(p, w["completion"]) < -2 for p, w in zip(eval_prompts, worse))
    wins = (_normalized_rewards(model, tok, better) > _normalized_rewards(model, tok, worse)).float().mean().item()
    assert wins > 0.9, wins
    # off the training distribution: the summary's accuracy on the RL policies' pairs (task.ood_pairs) is the saved
    # model's, scored here one response at a time (ties are measure-zero for a float reward)
    rows, ceiling = task.ood_pairs(task.labeler_pool(task.LabelerArgs()), 2, seed=1 + 5)
    chosen = _normalized_rewards(model, tok, [{"prompt": r["prompt"], "completion": r["chosen"]} for r in rows])
    rejected = _normalized_rewards(model, tok, [{"prompt": r["prompt"], "completion": r["rejected"]} for r in rows])
    logged = re.search(r"off-distribution accuracy ([\d.]+) \(ceiling ([\d.]+)\)", out)
    assert float(logged.group(1)) == pytest.approx((chosen > rejected).float().mean().item(), abs=1e-3)
    assert float(logged.group(2)) == pytest.approx(ceiling, abs=1e-3) and len(rows) > 300


def test_user_jsonl_with_margins_and_any_causal_lm(tmp_path, gpt2_no_pad):
    path = tmp_path / "pairs.jsonl"
    task.export_jsonl(task.make_pairs(task.all_prompts()[::2], task.Labeler(), 1, seed=0, margin=True), path)
    out = run_script("rm_bt.py", "--model", gpt2_no_pad, "--dataset", str(path), "--margin", "--center-coef", "0.01",
                     "--learning-rate", "3e-3", "--per-device-batch-size", "16", "--output-dir", str(tmp_path / "m"), cwd=tmp_path)
    before, after = _summary(out)
    assert "train pairs:" in out and "gold accuracy" in out and "labeler's ceiling" not in out
    assert after > before + 0.1  # measured: 0.50 -> 0.69
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "m")
    assert isinstance(model.config.reward_mean, float) and model.config.reward_std == 1.0


def test_two_processes_follow_the_one_process_trajectory(tmp_path):
    """torchrun with 2 processes and 8 pairs per device takes the same steps as 1 process with 16 (same global
    batches, each loss weighted by its share, gradients averaged by DDP or, with --fsdp, reduce-scattered): the same logged train loss and accuracy
    at every step within 1e-4, the same eval accuracy; rank 0 alone prints and saves. A user's file of 99 pairs: the
    last batch of 3 splits 2 + 1; its 1 eval pair leaves rank 1 nothing to score at evaluation."""
    train, eval_ = data.split_by_prompt(task.make_pairs(task.all_prompts(), task.Labeler(), 1, seed=0))
    task.export_jsonl(train[:99] + eval_[:1], tmp_path / "pairs.jsonl")
    flags = ["--dataset", str(tmp_path / "pairs.jsonl"), "--eval-every", "3", "--reference-size", "64"]
    one, *twos = one_and_two_processes("rm_bt.py", flags, tmp_path, "rm_bt: eval accuracy")
    for two in twos:  # DDP, then --fsdp
        assert len(one["loss/train"]) == len(two["loss/train"]) == 7  # 6 x 16 + 3
        assert two["loss/train"] == pytest.approx(one["loss/train"], abs=1e-4)
        assert two["rewards/accuracies"] == pytest.approx(one["rewards/accuracies"], abs=1e-4)
        assert two["eval/loss"] == pytest.approx(one["eval/loss"], abs=1e-4) and len(two["eval/loss"]) == 4  # 0, 3, 6, 7
    assert one["eval/loss"][-1] < one["eval/loss"][0] - 0.2  # it moved (measured: 0.54 -> 0.21)


def test_global_batches_keep_every_pair_in_length_grouped_batches():
    from rm_bt import length_grouped_batches

    lengths = [random.Random(i).randint(5, 60) for i in range(1000)]
    batches = length_grouped_batches(lengths, 16, random.Random(0), world=2)
    assert sorted(i for b in batches for i in b) == list(range(1000)) and min(map(len, batches)) >= 2
    # grouped: within a batch the lengths are close (far closer than in a random batch)
    spread = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches) / len(batches)
    assert spread < 10, spread


@pytest.mark.parametrize("kind", LORA_KINDS)
def test_use_peft_trains_adapters_and_head_and_the_merged_save_keeps_the_normalization(tmp_path, standin, kind):
    """--use-peft on the GPT-2, Llama and Qwen2 stand-ins (TL;DR preference pairs): adapters and the scalar head
    trained, nothing else; the merged save loads with AutoModelForSequenceClassification, scores as the adapters did,
    and keeps reward_mean in its config (what ppo_rlhf.py --reward-model reads). Qwen2 on 2 processes with --fsdp:
    the frozen base sharded, adapters and head (peft's modules_to_save) trained, gathered to rank 0 and merged."""
    base = standin("lm", kind)
    fsdp = ["--fsdp", "--per-device-batch-size", "4"] if kind == "qwen2" else ["--per-device-batch-size", "8"]
    out = run_script("rm_bt.py", "--model", base, "--dataset", standin("data", "tldr-preference"), "--num-epochs", "2",
                     "--learning-rate", "1e-2", "--use-peft", "--lora-r", "2", *fsdp,
                     "--merge-lora", "--output-dir", str(tmp_path / "m"), cwd=tmp_path, nproc=2 if kind == "qwen2" else 1)
    before, after = map(float, re.search(r"eval accuracy ([\d.]+) -> ([\d.]+)", out).groups())
    assert after > before, out[-500:]
    check_lora_save(tmp_path / "m", base, 2, head=True)
    mean = float(re.search(r"reward_mean (-?[\d.]+)", out).group(1))
    merged = AutoModelForSequenceClassification.from_pretrained(tmp_path / "m")
    assert merged.config.reward_mean == pytest.approx(mean, abs=1e-3)


def test_calibration_to_gold_and_extra_pairs(tmp_path):
    """On the embedded task the saved normalization is the least-squares calibration to gold on --calibration-size
    generator responses (a refit gives a = 1, b = 0), and the alignment gap is reported; --extra-pairs adds a file's
    pairs to the labeler's, and refuses a pair on an eval prompt before any model loads."""
    train_prompts, eval_prompts = task.split_prompts()
    task.export_jsonl(task.make_pairs(train_prompts[:50], task.Labeler(), 2, seed=5), tmp_path / "extra.jsonl")
    out = run_script("rm_bt.py", "--num-train-prompts", "300", "--pairs-per-prompt", "1", "--eval-pairs-per-prompt",
                     "1", "--calibration-size", "256", "--extra-pairs", "extra.jsonl", "--output-dir", "m", cwd=tmp_path)
    assert "100 extra pairs from extra.jsonl: 400 train pairs in all" in out
    gap = float(re.search(r"alignment gap ([\d.]+) \(rank corr", out).group(1))
    assert 0 < gap < 3
    a, b = calibration_refit(tmp_path / "m", task.calibration_rows(train_prompts[:300], 256, 1 + 4), score)
    assert a == pytest.approx(1.0, abs=1e-3) and b == pytest.approx(0.0, abs=1e-3)
    task.export_jsonl(task.make_pairs(eval_prompts[:2], task.Labeler(), 1, seed=5), tmp_path / "leak.jsonl")
    code, text = run_capture("rm_bt.py", "--extra-pairs", "leak.jsonl", cwd=tmp_path)
    assert code == 1 and "--extra-pairs leak.jsonl: 2 of its 2 pairs are on eval prompts" in text
    assert "Loading weights" not in text
    code, text = run_capture("rm_bt.py", "--dataset", "extra.jsonl", "--extra-pairs", "extra.jsonl", cwd=tmp_path)
    assert code == 1 and "--extra-pairs must be used with the embedded task only" in text and "Traceback" not in text
