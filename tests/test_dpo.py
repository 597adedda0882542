"""dpo.py: every loss against the papers' forms and values by hand, completion-only log-probs, the ln 2 first step, precomputed vs
on-the-fly reference, and end-to-end runs (embedded pairs; a GPT-2 without a pad token on a user's jsonl file)."""

import copy
import math
import random
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


def preference_probability(reward_w, reward_l):
    """P(y_w preferred) under Bradley-Terry: a softmax over the two implicit rewards, computed stably."""
    top = max(reward_w, reward_l)
    return math.exp(reward_w - top) / (math.exp(reward_w - top) + math.exp(reward_l - top))


def losses_from_tokens(tokens, beta, loss_type, e, form, alpha):
    """The losses from per-token log-probs, one pair at a time, the way the papers state them: DPO and its label-noise
    variants as (soft) cross-entropies of the Bradley-Terry preference probability of the implicit rewards, IPO on the
    means over tokens of the per-token log-ratios, RPO as the chosen response's mean token NLL. tokens: per pair
    (policy_w, ref_w, policy_l, ref_l), lists of per-token log-probs."""
    out = []
    for pw, qw, pl, ql in tokens:
        c, r = sum(pw) - sum(qw), sum(pl) - sum(ql)
        p = preference_probability(beta * c, beta * r)
        if loss_type == "sigmoid" and form == "conservative":  # soft label: y_w wins with probability 1 - e
            loss = -(1 - e) * math.log(p) - e * math.log(1 - p)
        elif loss_type == "sigmoid":  # Chowdhury et al.: [(1 - e) l(w, l) - e l(l, w)] / (1 - 2e), l the DPO loss
            loss = ((1 - e) * -math.log(p) - e * -math.log(1 - p)) / (1 - 2 * e)
        elif loss_type == "ipo":
            mean_w = sum(a - b for a, b in zip(pw, qw)) / len(pw)
            mean_l = sum(a - b for a, b in zip(pl, ql)) / len(pl)
            loss = (mean_w - mean_l - 1 / (2 * beta)) ** 2
        else:
            loss = max(0.0, 1 - beta * (c - r))
        out.append(loss + alpha * -sum(pw) / len(pw))
    return out


@pytest.mark.parametrize("loss_type,e,form,alpha", [
    ("sigmoid", 0.0, "conservative", 0.0), ("sigmoid", 0.2, "conservative", 0.0), ("sigmoid", 0.2, "robust", 0.0),
    ("sigmoid", 0.0, "conservative", 0.5), ("ipo", 0.0, "conservative", 0.0), ("ipo", 0.0, "conservative", 1.0),
    ("hinge", 0.0, "conservative", 0.0), ("hinge", 0.0, "conservative", 0.3),
])
def test_dpo_loss_against_the_papers_forms_from_per_token_log_probs(loss_type, e, form, alpha):
    rng = random.Random(0)
    tokens = []
    for _ in range(64):
        nw, nl = rng.randint(1, 12), rng.randint(1, 12)
        pw, pl = [-3 * rng.random() for _ in range(nw)], [-3 * rng.random() for _ in range(nl)]
        tokens.append((pw, [x + rng.gauss(0, 0.3) for x in pw], pl, [x + rng.gauss(0, 0.3) for x in pl]))
    # policy chosen, policy rejected, reference chosen, reference rejected: dpo_loss's argument order
    sums = [torch.tensor([sum(t[k]) for t in tokens], dtype=torch.float64) for k in (0, 2, 1, 3)]
    counts = [torch.tensor([float(len(t[k])) for t in tokens], dtype=torch.float64) for k in (0, 2)]
    beta = 0.7
    losses, _, _ = dpo.dpo_loss(*sums, beta, loss_type, e, form, *counts, alpha)
    expected = losses_from_tokens(tokens, beta, loss_type, e, form, alpha)
    assert losses.tolist() == pytest.approx(expected, rel=1e-9, abs=1e-12)
    if loss_type == "hinge":  # both sides of the hinge are exercised
        hinge = [x - alpha * -sum(t[0]) / len(t[0]) for x, t in zip(expected, tokens)]
        assert min(hinge) == pytest.approx(0.0, abs=1e-12) and max(hinge) > 0


def test_loss_values_by_hand_at_policy_equals_reference():
    z, n = torch.zeros(3), torch.full((3,), 7.0)
    for form in ("conservative", "robust"):
        for e in (0.0, 0.1, 0.3):
            assert dpo.dpo_loss(z, z, z, z, 0.1, "sigmoid", e, form)[0].tolist() == pytest.approx([LN2] * 3)
    assert dpo.dpo_loss(z, z, z, z, 0.25, "ipo", chosen_tokens=n, rejected_tokens=n)[0].tolist() == pytest.approx([4.0] * 3)  # (1/(2*0.25))^2
    assert dpo.dpo_loss(z, z, z, z, 0.1, "hinge")[0].tolist() == pytest.approx([1.0] * 3)


def test_loss_values_by_hand_away_from_the_reference():
    """beta h = ln 3, so sigmoid(beta h) = 3/4: every sigmoid form in closed form, and label smoothing now matters."""
    one, zero = torch.ones(1, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)
    c = math.log(3) * one  # c = ln 3, r = 0, beta = 1
    value = {form_e: dpo.dpo_loss(c, zero, zero, zero, 1.0, "sigmoid", form_e[1], form_e[0])[0].item()
             for form_e in [("conservative", 0.0), ("conservative", 0.25), ("robust", 0.25)]}
    assert value["conservative", 0.0] == pytest.approx(math.log(4 / 3))  # -log 3/4
    assert value["conservative", 0.25] == pytest.approx(0.75 * math.log(4 / 3) + 0.25 * math.log(4))  # soft label 3/4
    assert value["robust", 0.25] == pytest.approx((0.75 * math.log(4 / 3) - 0.25 * math.log(4)) / 0.5)  # = -0.262 < 0
    # IPO on per-token means: chosen log-ratio 2 over 4 tokens (0.5 each), rejected -3 over 6 (-0.5 each), beta 1:
    # (0.5 + 0.5 - 1/2)^2 = 0.25; its rewards are the beta-scaled per-token means, as its loss compares them
    losses, rw, rl = dpo.dpo_loss(2 * one, -3 * one, zero, zero, 1.0, "ipo", chosen_tokens=4 * one, rejected_tokens=6 * one)
    assert losses.item() == pytest.approx(0.25) and rw.item() == pytest.approx(0.5) and rl.item() == pytest.approx(-0.5)
    # hinge relu(1 - beta h) with beta 0.5: h = 1 gives 0.5, h = 4 gives 0, h = -2 gives 2
    h = torch.tensor([1.0, 4.0, -2.0], dtype=torch.float64)
    z3 = torch.zeros(3, dtype=torch.float64)
    assert dpo.dpo_loss(h, z3, z3, z3, 0.5, "hinge")[0].tolist() == pytest.approx([0.5, 0.0, 2.0])
    # RPO adds alpha times the mean token NLL of the chosen response: -(-6) / 3 = 2, times 0.5
    rpo = dpo.dpo_loss(-6 * one, zero, -6 * one, zero, 1.0, "sigmoid", chosen_tokens=3 * one, rejected_tokens=one, rpo_alpha=0.5)
    assert rpo[0].item() == pytest.approx(LN2 + 1.0)
    # DPO's rewards are the beta-scaled summed log-ratios
    assert dpo.dpo_loss(c, zero, zero, zero, 0.5, "sigmoid")[1].item() == pytest.approx(0.5 * math.log(3))


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
    ids, am, cm = data.collate(chosen, tok.pad_token_id, "cpu")
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
                ids, am, cm = data.collate([enc], tok.pad_token_id, "cpu")
                assert precomputed[i, j].item() == pytest.approx(dpo.sequence_logps(ref(input_ids=ids).logits, ids, cm)[0].item(), abs=1e-4)


# ---------------------------------------------------------------- end to end

def log_ratio_margins(model_dir, reference, rows, tok, per_token=False):
    """(N,) implicit reward margins of the pairs, log pi/pi_ref of chosen minus that of rejected, summed over completion
    tokens or (per_token) averaged over them."""
    counts = Counter()
    chosen = [data.encode(tok, r["prompt"], r["chosen"], 96, 32, counts) for r in rows]
    rejected = [data.encode(tok, r["prompt"], r["rejected"], 96, 32, counts) for r in rows]
    out = []
    for name in (model_dir, reference):
        m = AutoModelForCausalLM.from_pretrained(models.resolve(name)).eval()
        with torch.no_grad():
            out.append(dpo.concatenated_logps(m, chosen, rejected, tok.pad_token_id, "cpu"))
    ratio = (out[0][0] - out[1][0]) / (out[0][1] if per_token else 1)
    return ratio[: len(rows)] - ratio[len(rows) :]


def implicit_accuracy(model_dir, rows, tok):
    """Fraction of pairs whose implicit reward (log-ratio to the bundled base policy) prefers the chosen response."""
    return (log_ratio_margins(model_dir, models.BUNDLED_MODEL, rows, tok) > 0).float().mean().item()


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


def test_ipo_with_gpt2_without_pad_token_on_a_jsonl_file(gpt2_no_pad, tmp_path):
    """A user's model (GPT-2 architecture, no pad token) and file, with the reference run on the fly and the IPO loss.
    At the first step the policy is its reference, so the loss is (1 / (2 beta))^2 = 25. The logged eval margin is beta
    times the per-token averaged log-ratio margin, the quantity IPO's loss drives towards 1 / (2 beta), recomputed here
    from the saved model on the file's eval pairs; and the model has learned its training pairs."""
    rows = task.make_pairs(task.split_prompts()[0][:60], task.Labeler(), 1, seed=0)
    task.export_jsonl(rows, tmp_path / "pairs.jsonl")
    out = run_script("dpo.py", "--model", gpt2_no_pad, "--dataset", str(tmp_path / "pairs.jsonl"), "--reference-on-the-fly",
                     "--loss-type", "ipo", "--beta", "0.1", "--num-epochs", "3", "--learning-rate", "3e-3", "--per-device-batch-size", "8",
                     "--eval-every", "4", "--max-new-tokens", "8", "--output-dir", str(tmp_path / "model"), cwd=tmp_path)
    assert "dpo (ipo, beta 0.1)" in out and "saved to" in out
    logged = scalars(tmp_path / "runs")
    assert logged["train/loss"][0] == pytest.approx(25.0, abs=1e-4)
    tok = models.load_tokenizer(gpt2_no_pad)
    train_rows, eval_rows = data.split_by_prompt(rows)
    per_token = log_ratio_margins(str(tmp_path / "model"), gpt2_no_pad, eval_rows, tok, per_token=True)
    assert logged["eval/rewards/margins"][-1] == pytest.approx(0.1 * per_token.mean().item(), abs=1e-4)  # after the last step
    summed = log_ratio_margins(str(tmp_path / "model"), gpt2_no_pad, eval_rows, tok)
    assert abs(0.1 * summed.mean().item() - logged["eval/rewards/margins"][-1]) > 1e-2  # the sum, what dpo logs, is not it
    learned = (log_ratio_margins(str(tmp_path / "model"), gpt2_no_pad, train_rows, tok, per_token=True) > 0).float().mean()
    assert learned > 0.65  # measured 0.82 (0.5 before training)
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "model").config.model_type == "gpt2"


def test_sampled_responses_and_their_log_probs(base):
    """The KL at evaluation: log-probs of sampled responses (left-padded batch, tempered) against an unpadded
    token-by-token recomputation; the response runs up to and including the first EOS."""
    model, tok, *_ = base
    prompts = ["Which is larger, 12 or 7?", "Please, which is smaller, 3 or 9? Thanks.", "Which is smaller, 1 or 2?"]
    torch.manual_seed(0)
    texts, batches = dpo.sample(model, tok, [tok(p).input_ids for p in prompts], 12, 0.7)
    logps = dpo.sample_logps(model, batches, 0.7)
    r = batches[0]
    for b, prompt in enumerate(prompts):
        prefix = tok(prompt).input_ids
        response = r["seq"][b, r["context_length"] :][r["resp_mask"][b].bool()].tolist()
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
    batches, each micro-batch's loss weighted by its share of the global batch, gradients averaged by DDP (or reduce-
    scattered with --fsdp, which saves DDP's weights). 51 pairs: the
    last batch of 3 splits 2 + 1, where an unweighted average over ranks is not the batch mean. One eval sample: rank 1
    has none and adds nothing to the means. Same logged loss and accuracy at every step within 1e-4 (the all-reduce
    sums in another order); only rank 0 logs, saves and prints."""
    flags = ["--num-train-prompts", "51", "--pairs-per-prompt", "1", "--num-epochs", "2", "--num-eval-prompts", "1",
             "--eval-samples-per-prompt", "1", "--eval-every", "1000", "--max-new-tokens", "8", "--learning-rate", "1e-3"]
    one, *twos = one_and_two_processes("dpo.py", flags, tmp_path, "dpo (sigmoid")
    for two in twos:  # DDP, then --fsdp (policy and reference sharded)
        assert len(one["train/loss"]) == len(two["train/loss"]) == 8  # (16, 16, 16, 3) per epoch
        assert two["train/loss"] == pytest.approx(one["train/loss"], abs=1e-4)
        # at the first step the policy is the reference, so every margin is 0 up to rounding: exact ties count 0.5, but
        # a rounding error of either sign decides a pair (0.5 against 0.59 in one CI run). From step 2 it is not noise.
        assert two["rewards/accuracies"][1:] == pytest.approx(one["rewards/accuracies"][1:], abs=1e-4)
        assert two["eval/loss"] == pytest.approx(one["eval/loss"], abs=1e-4) and len(two["eval/kl"]) == 2  # steps 0, 8
    assert one["train/loss"][-1] < one["train/loss"][0] - 0.3  # it moved (measured: 0.693 -> 0.016)


def test_two_processes_with_a_last_batch_smaller_than_the_number_of_processes(tmp_path):
    """49 pairs in global batches of 16 on 2 processes: the last one (a single pair) joins the batch before it, so both
    processes run a backward pass at every step (else gloo aborts, NCCL hangs); rank 0's share of that batch of 17 is
    9 pairs, rank 1's 8: two micro-batches each. With --fsdp and the reference run at every step, sharded too: every
    forward of both is a collective, and both ranks run as many."""
    out = run_script("dpo.py", "--num-train-prompts", "49", "--pairs-per-prompt", "1", "--num-eval-prompts", "2",
                     "--per-device-batch-size", "8", "--max-new-tokens", "8", "--no-eval-kl", "--output-dir", str(tmp_path / "model"),
                     "--fsdp", "--reference-on-the-fly", cwd=tmp_path, nproc=2)
    assert out.count("dpo (sigmoid") == 1 and "on 2 process(es)" in out
    assert len(scalars(tmp_path / "runs")["train/loss"]) == 3  # 16, 16 and 16 + 1


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
