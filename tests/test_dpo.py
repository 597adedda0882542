"""dpo.py: every loss against a per-example loop, completion-only log-probs, the ln 2 first step, precomputed vs
on-the-fly reference, and end-to-end runs (embedded pairs; a GPT-2 without a pad token on a user's jsonl file)."""

import copy
import math
import re
from collections import Counter
from contextlib import nullcontext

import pytest
import torch
from transformers import AutoModelForCausalLM

import dpo
from common import data, models, task
from conftest import LORA_KINDS, check_lora_save, one_and_two_processes, run_script, scalars

LN2 = math.log(2)


def log_sigmoid(x):
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


def loop_loss(pc, pr, rc, rr, beta, loss_type, e, form, nc, nr, alpha):
    """The losses written out one pair at a time from the papers' formulas."""
    out = []
    for i in range(len(pc)):
        c, r = pc[i] - rc[i], pr[i] - rr[i]
        z = beta * (c - r)
        if loss_type == "sigmoid" and form == "conservative":
            loss = -(1 - e) * log_sigmoid(z) - e * log_sigmoid(-z)
        elif loss_type == "sigmoid":
            loss = (-(1 - e) * log_sigmoid(z) + e * log_sigmoid(-z)) / (1 - 2 * e)
        elif loss_type == "ipo":
            loss = (c / nc[i] - r / nr[i] - 1 / (2 * beta)) ** 2
        else:
            loss = max(0.0, 1 - z)
        out.append(loss + alpha * (-pc[i] / nc[i]))
    return out


@pytest.mark.parametrize("loss_type,e,form,alpha", [
    ("sigmoid", 0.0, "conservative", 0.0), ("sigmoid", 0.2, "conservative", 0.0), ("sigmoid", 0.2, "robust", 0.0),
    ("sigmoid", 0.0, "conservative", 0.5), ("ipo", 0.0, "conservative", 0.0), ("ipo", 0.0, "conservative", 1.0),
    ("hinge", 0.0, "conservative", 0.0), ("hinge", 0.0, "conservative", 0.3),
])
def test_dpo_loss_matches_loop(loss_type, e, form, alpha):
    g = torch.Generator().manual_seed(0)
    pc, pr, rc, rr = (-30 * torch.rand(64, generator=g, dtype=torch.float64) for _ in range(4))
    nc, nr = (torch.randint(1, 40, (64,), generator=g).double() for _ in range(2))
    beta = 0.3
    losses, cr, rj = dpo.dpo_loss(pc, pr, rc, rr, beta, loss_type, e, form, nc, nr, alpha)
    expected = loop_loss(pc.tolist(), pr.tolist(), rc.tolist(), rr.tolist(), beta, loss_type, e, form, nc.tolist(), nr.tolist(), alpha)
    assert losses.tolist() == pytest.approx(expected, rel=1e-9, abs=1e-9)
    assert cr.tolist() == pytest.approx((beta * (pc - rc)).tolist())
    assert rj.tolist() == pytest.approx((beta * (pr - rr)).tolist())
    if loss_type == "hinge":
        assert (losses - alpha * (-pc / nc) == 0).any() and (losses - alpha * (-pc / nc) > 0).any()  # both sides of the hinge


def test_loss_values_by_hand_at_policy_equals_reference():
    z, n = torch.zeros(3), torch.full((3,), 7.0)
    for form in ("conservative", "robust"):
        for e in (0.0, 0.1, 0.3):
            assert dpo.dpo_loss(z, z, z, z, 0.1, "sigmoid", e, form)[0].tolist() == pytest.approx([LN2] * 3)
    assert dpo.dpo_loss(z, z, z, z, 0.25, "ipo", chosen_tokens=n, rejected_tokens=n)[0].tolist() == pytest.approx([4.0] * 3)  # (1/(2*0.25))^2
    assert dpo.dpo_loss(z, z, z, z, 0.1, "hinge")[0].tolist() == pytest.approx([1.0] * 3)


def test_robust_loss_is_unbiased_under_label_flips():
    """rDPO's defining property: flipping the label with probability e, its expectation is the clean DPO loss."""
    h = torch.linspace(-20, 20, 41, dtype=torch.float64)
    zero = torch.zeros_like(h)
    for e in (0.1, 0.25, 0.4):
        kept = dpo.dpo_loss(h, zero, zero, zero, 0.2, "sigmoid", e, "robust")[0]
        flipped = dpo.dpo_loss(zero, h, zero, zero, 0.2, "sigmoid", e, "robust")[0]
        clean = dpo.dpo_loss(h, zero, zero, zero, 0.2, "sigmoid")[0]
        assert torch.allclose((1 - e) * kept + e * flipped, clean)


def test_bad_combinations_fail():
    z = torch.zeros(2)
    with pytest.raises(ValueError, match="sigmoid loss only"):
        dpo.dpo_loss(z, z, z, z, 0.1, "ipo", 0.1, chosen_tokens=z + 1, rejected_tokens=z + 1)
    with pytest.raises(ValueError, match="per token"):
        dpo.dpo_loss(z, z, z, z, 0.1, "ipo")
    with pytest.raises(ValueError, match=r"\[0, 0.5\)"):
        dpo.dpo_loss(z, z, z, z, 0.1, "sigmoid", 0.5, "robust")


# ---------------------------------------------------------------- log-probs on the real model and real pairs

@pytest.fixture(scope="module")
def base():
    tok = models.load_tokenizer(models.BUNDLED_MODEL)
    model = models.disable_dropout(models.load_causal_lm(models.BUNDLED_MODEL)).eval()
    rows = task.make_pairs(task.split_prompts()[0][:6], task.Labeler(), 2, seed=3)
    counts = Counter()
    chosen = [data.encode(tok, r["prompt"], r["chosen"], 96, 32, counts) for r in rows]
    rejected = [data.encode(tok, r["prompt"], r["rejected"], 96, 32, counts) for r in rows]
    return model, tok, rows, chosen, rejected


def test_sequence_logps_sums_completion_tokens_only(base):
    model, tok, rows, chosen, _ = base
    ids, am, cm = dpo.collate(chosen, tok.pad_token_id, "cpu")
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=am).logits.double()
    logps, n = dpo.sequence_logps(logits, ids, cm)
    for b, (seq, mask) in enumerate(chosen):
        n_prompt = len(tok(rows[b]["prompt"]).input_ids)
        assert mask == [0] * n_prompt + [1] * (len(seq) - n_prompt) and seq[-1] == tok.eos_token_id  # EOS is completion
        total = 0.0
        for t in range(n_prompt, len(seq)):  # completion tokens only, each predicted from the position before
            row = logits[b, t - 1].tolist()
            total += row[seq[t]] - math.log(sum(math.exp(v) for v in row))
        assert logps[b].item() == pytest.approx(total, abs=1e-5)  # float32 inside
        assert n[b].item() == len(seq) - n_prompt
    # the logits that predict prompt tokens or padding do not count at all; those that predict the completion do
    predicts_completion = torch.cat([cm[:, 1:], torch.zeros_like(cm[:, :1])], 1).bool()  # (B, T): position t predicts t + 1
    noise = 5 * torch.randn(logits.shape, generator=torch.Generator().manual_seed(0), dtype=logits.dtype)
    assert torch.allclose(dpo.sequence_logps(logits + noise * ~predicts_completion[..., None], ids, cm)[0], logps)
    assert not torch.allclose(dpo.sequence_logps(logits + noise * predicts_completion[..., None], ids, cm)[0], logps)


def test_first_step_loss_is_ln2_when_policy_is_reference(base):
    model, tok, _, chosen, rejected = base
    ref = copy.deepcopy(model)
    ref_logps = dpo.precompute_reference(ref, chosen, rejected, 5, tok.pad_token_id, "cpu", nullcontext())
    args = dpo.Args()
    loss, m = dpo.pair_batch(model, None, ref_logps, chosen, rejected, list(range(len(chosen))), args, tok.pad_token_id, "cpu")
    assert loss.item() == pytest.approx(LN2, abs=1e-5)
    assert m["rewards/margins"] == pytest.approx(0, abs=1e-5) and m["logps/chosen"] < -1
    loss.backward()  # and the gradient is not zero: the first step moves the policy
    assert sum(p.grad.abs().sum() for p in model.parameters()) > 0
    model.zero_grad()


def test_precomputed_and_on_the_fly_reference_agree(base):
    ref, tok, _, chosen, rejected = base
    policy = copy.deepcopy(ref)
    with torch.no_grad():  # a policy that has moved away from the reference
        for p in policy.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
    precomputed = dpo.precompute_reference(ref, chosen, rejected, 5, tok.pad_token_id, "cpu", nullcontext())  # other batching
    args = dpo.Args(beta=0.5)
    idx = [7, 0, 11, 3]
    with torch.no_grad():
        l_pre, m_pre = dpo.pair_batch(policy, None, precomputed, chosen, rejected, idx, args, tok.pad_token_id, "cpu")
        l_fly, m_fly = dpo.pair_batch(policy, ref, None, chosen, rejected, idx, args, tok.pad_token_id, "cpu")
    assert abs(l_pre.item() - LN2) > 1e-3
    assert l_pre.item() == pytest.approx(l_fly.item(), abs=1e-5)
    for k in m_pre:
        assert m_pre[k] == pytest.approx(m_fly[k], abs=1e-4), k
    with torch.no_grad():  # and each precomputed value is the reference's log-prob of that one sequence alone
        for i in (0, 11):
            for j, enc in enumerate((chosen[i], rejected[i])):
                ids, am, cm = dpo.collate([enc], tok.pad_token_id, "cpu")
                assert precomputed[i, j].item() == pytest.approx(dpo.sequence_logps(ref(input_ids=ids).logits, ids, cm)[0].item(), abs=1e-4)


# ---------------------------------------------------------------- end to end

def implicit_accuracy(model_dir, rows, tok):
    """Fraction of pairs whose implicit reward (log-ratio to the bundled base policy) prefers the chosen response."""
    counts = Counter()
    chosen = [data.encode(tok, r["prompt"], r["chosen"], 96, 32, counts) for r in rows]
    rejected = [data.encode(tok, r["prompt"], r["rejected"], 96, 32, counts) for r in rows]
    out = []
    for name in (model_dir, models.BUNDLED_MODEL):
        m = AutoModelForCausalLM.from_pretrained(models.resolve(name)).eval()
        with torch.no_grad():
            out.append(dpo.concatenated_logps(m, chosen, rejected, tok.pad_token_id, "cpu")[0])
    ratio = out[0] - out[1]
    return (ratio[: len(rows)] > ratio[len(rows) :]).float().mean().item()


def test_end_to_end_embedded_pairs(tmp_path):
    out = run_script("dpo.py", "--num-train-prompts", "40", "--pairs-per-prompt", "2", "--num-eval-prompts", "16", "--num-epochs", "3",
                     "--per-device-batch-size", "16", "--learning-rate", "1e-3", "--eval-every", "6", "--max-new-tokens", "24",
                     "--output-dir", str(tmp_path / "model"), cwd=tmp_path)
    summary = out.strip().splitlines()[-1]
    assert re.search(r"eval accuracy 0\.50 -> \d\.\d\d \(labeler ceiling 0\.\d\d\).*eval gold -?\d\.\d+ -> -?\d\.\d+ .*at KL -?\d", summary), summary
    gold0, gold1 = map(float, re.search(r"eval gold (-?[\d.]+) -> (-?[\d.]+)", summary).groups())
    logged = scalars(tmp_path / "runs")  # step 0 (before training: the policy is its reference) and every 6 steps
    assert logged["eval/gold"][0] == pytest.approx(gold0, abs=1e-3) and logged["eval/gold"][-1] == pytest.approx(gold1, abs=1e-3)
    assert logged["eval/kl"][0] == 0.0 and len(logged["eval/kl"]) == 1 + math.ceil(3 * 80 / 16 / 6)
    # the saved model loads as a causal LM and has learned its training pairs (about 0.5 before training)
    rows = task.make_pairs(task.split_prompts()[0][:40], task.Labeler(), 2, seed=1)
    assert implicit_accuracy(str(tmp_path / "model"), rows, models.load_tokenizer(models.BUNDLED_MODEL)) > 0.75


def test_gpt2_without_pad_token_on_a_jsonl_file(gpt2_no_pad, tmp_path):
    """A user's model (GPT-2 architecture, no pad token) and file, with the reference run on the fly and the IPO loss."""
    rows = task.make_pairs(task.split_prompts()[0][:60], task.Labeler(), 1, seed=0)
    task.export_jsonl(rows, tmp_path / "pairs.jsonl")
    out = run_script("dpo.py", "--model", gpt2_no_pad, "--dataset", str(tmp_path / "pairs.jsonl"), "--reference-on-the-fly",
                     "--loss-type", "ipo", "--beta", "0.1", "--num-epochs", "1", "--per-device-batch-size", "8", "--eval-every", "4",
                     "--max-new-tokens", "8", "--output-dir", str(tmp_path / "model"), cwd=tmp_path)
    assert "dpo (ipo, beta 0.1)" in out and "saved to" in out
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "model")
    assert model.config.model_type == "gpt2"


def test_sampled_responses_and_their_log_probs(base):
    """The KL at evaluation: log-probs of sampled responses (left-padded batch, tempered) against an unpadded
    token-by-token recomputation; the response runs up to and including the first EOS."""
    model, tok, *_ = base
    prompts = ["Which is larger, 12 or 7?", "Please, which is smaller, 3 or 9? Thanks.", "Which is smaller, 1 or 2?"]
    torch.manual_seed(0)
    texts, batches = dpo.sample(model, tok, [tok(p).input_ids for p in prompts], 12, 0.7)
    logps = dpo.sample_logps(model, batches, 0.7)
    ids, am, rm = batches[0]
    for b, prompt in enumerate(prompts):
        prefix = tok(prompt).input_ids
        response = ids[b][rm[b].bool()].tolist()
        assert tok.eos_token_id not in response[:-1] and (response[-1] == tok.eos_token_id or len(response) == 12)
        assert texts[b] == tok.decode(response, skip_special_tokens=True).strip()
        total = 0.0
        with torch.no_grad():
            for t in response:
                total += torch.log_softmax(model(input_ids=torch.tensor([prefix])).logits[0, -1] / 0.7, -1)[t].item()
                prefix = prefix + [t]
        assert logps[b].item() == pytest.approx(total, abs=1e-4)


def test_two_processes_follow_the_one_process_trajectory(tmp_path):
    """torchrun with 2 processes and 8 pairs per device takes the same steps as 1 process with 16: the same global
    batches, gradients averaged by DDP, metrics averaged over ranks. Same logged loss and accuracy at every step, within 1e-4
    (the all-reduce sums in another order); only rank 0 logs, saves and prints."""
    flags = ["--num-train-prompts", "48", "--pairs-per-prompt", "2", "--num-eval-prompts", "8", "--eval-every", "1000",
             "--max-new-tokens", "8", "--learning-rate", "1e-3", "--no-eval-kl"]
    one, two = one_and_two_processes("dpo.py", flags, tmp_path, "dpo (sigmoid")
    assert len(one["train/loss"]) == len(two["train/loss"]) == 6  # 96 pairs / 16 per step
    assert two["train/loss"] == pytest.approx(one["train/loss"], abs=1e-4)
    # at the first step the policy is the reference, so every margin is 0 up to rounding: exact ties count 0.5, but a
    # rounding error of either sign decides a pair (0.5 against 0.59 in one CI run). From the second step on it is not noise.
    assert two["rewards/accuracies"][1:] == pytest.approx(one["rewards/accuracies"][1:], abs=1e-4)
    assert one["train/loss"][-1] < one["train/loss"][0]  # it moved: the trajectories are not trivially flat


@pytest.mark.parametrize("kind, flags", zip(LORA_KINDS, [[], ["--reference-on-the-fly"], ["--gradient-checkpointing"]]))
def test_use_peft_reference_is_the_start_and_only_adapters_train(tmp_path, standin, kind, flags):
    """--use-peft on the GPT-2, Llama and Qwen2 stand-ins (TL;DR preference pairs), the reference precomputed or run
    at every step with the adapters off: the first loss is ln 2 (policy = reference), then the policy moves away from
    a reference that stays put (were the adapters left on, every margin would stay 0 with the on-the-fly reference);
    only the adapters train and the merged save loads with transformers (check_lora_save)."""
    base = standin("lm", kind)
    run_script("dpo.py", "--model", base, "--dataset", standin("data", "tldr-preference"), "--num-epochs", "3",
               "--per-device-batch-size", "8", "--learning-rate", "1e-2", "--use-peft", "--lora-r", "2", "--merge-lora",
               *flags, "--output-dir", str(tmp_path / "m"), cwd=tmp_path)
    logged = scalars(tmp_path / "runs")
    assert logged["train/loss"][0] == pytest.approx(LN2, abs=1e-5)
    assert logged["rewards/margins"][0] == pytest.approx(0.0, abs=1e-5)
    assert logged["train/loss"][-1] < LN2 - 0.05 and abs(logged["rewards/margins"][-1]) > 0.05, logged["train/loss"]
    check_lora_save(tmp_path / "m", base, 2)
