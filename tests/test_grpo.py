"""grpo.py: the group advantages against a loop over groups, the k3 loss term against its closed form and its
expected gradient by enumeration, the loss averagings and the clipped loss by hand, one update on real samples, and
end-to-end runs (GRPO, RLOO, Dr. GRPO, 2 processes against 1)."""

import math
import re
import statistics

import pytest
import torch

import grpo
from common import models, sampling, task
from conftest import check_lora_save, run_script, scalars

pytestmark = pytest.mark.usefixtures("one_cpu_thread")  # conftest.py


# ---------------------------------------------------------------- advantages

GROUPS = [[1.0, 2.0, 4.0, 1.0], [0.5, 0.5, 0.5, 0.5], [-3.0, 0.0, 2.5, 7.0]]  # the second: all rewards equal


def test_grpo_advantages_against_a_loop_over_groups():
    rewards = torch.tensor(sum(GROUPS, []), dtype=torch.float64)
    for scale in (True, False):
        expected = []
        for group in GROUPS:
            mean, std = statistics.mean(group), statistics.stdev(group)  # Bessel-corrected, as TRL
            expected += [(r - mean) / (std + 1e-4) if scale else r - mean for r in group]
        torch.testing.assert_close(grpo.grpo_advantages(rewards, 4, scale), torch.tensor(expected, dtype=torch.float64))
    equal = grpo.grpo_advantages(rewards, 4)[4:8]
    assert torch.isfinite(equal).all() and (equal == 0).all()  # no division by zero, no signal
    # by hand: group 1 has mean 2 and std sqrt(2); its third response is 2 above the mean
    assert grpo.grpo_advantages(rewards, 4)[2].item() == pytest.approx(2 / (math.sqrt(2) + 1e-4), rel=1e-12)


def test_rloo_advantages_against_a_loop_over_groups():
    rewards = torch.tensor(sum(GROUPS, []), dtype=torch.float64)
    expected = [r - sum(g[j] for j in range(4) if j != i) / 3 for g in GROUPS for i, r in enumerate(g)]
    torch.testing.assert_close(grpo.rloo_advantages(rewards, 4), torch.tensor(expected, dtype=torch.float64))
    assert (grpo.rloo_advantages(rewards, 4)[4:8] == 0).all()
    # k = 2: each response's baseline is the other's reward
    assert grpo.rloo_advantages(torch.tensor([3.0, 1.0]), 2).tolist() == [2.0, -2.0]


# ---------------------------------------------------------------- the KL term in the loss

def test_k3_loss_term_by_hand_and_its_expected_gradient_by_enumeration():
    """k3 = r - 1 - log r with r = ref / pi, by hand; over a 6-way pi = softmax(theta), enumerated exactly: its mean
    under pi is KL(pi || ref), and the mean of its gradient (the samples held fixed, as in the loss) is the gradient of
    KL(ref || pi): the sum of (pi - ref) grad log pi."""
    logp, ref = torch.tensor([math.log(0.5), math.log(0.2)]), torch.tensor([math.log(0.25), math.log(0.4)])
    torch.testing.assert_close(grpo.k3_kl(logp, ref), torch.tensor([0.5 - 1 - math.log(0.5), 2 - 1 - math.log(2)]))
    g = torch.Generator().manual_seed(0)
    theta = torch.randn(6, generator=g, dtype=torch.float64, requires_grad=True)
    ref = (2 * torch.randn(6, generator=g, dtype=torch.float64)).log_softmax(0)
    logp = theta.log_softmax(0)
    pi = logp.exp().detach()
    assert (pi * grpo.k3_kl(logp.detach(), ref)).sum().item() == pytest.approx((pi * (logp.detach() - ref)).sum().item())
    expected_grad = sum(pi[x] * torch.autograd.grad(grpo.k3_kl(logp[x], ref[x]), theta, retain_graph=True)[0]
                        for x in range(6))
    reverse_kl = torch.autograd.grad((ref.exp() * (ref - theta.log_softmax(0))).sum(), theta)[0]
    forward_kl = torch.autograd.grad((theta.log_softmax(0).exp() * (theta.log_softmax(0) - ref)).sum(), theta)[0]
    torch.testing.assert_close(expected_grad, reverse_kl, atol=1e-12, rtol=0)
    assert (expected_grad - forward_kl).abs().max() > 0.1  # not the gradient of KL(pi || ref)


# ---------------------------------------------------------------- averaging and the clipped loss

def test_loss_averagings_by_hand():
    per_token = torch.tensor([[1.0, 2.0, 3.0, 0.0], [4.0, 0.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0]])
    assert grpo.average_tokens(per_token, mask, "sequence", 4).item() == pytest.approx((6 / 3 + 4 / 1) / 2)  # 3
    assert grpo.average_tokens(per_token, mask, "token", 4).item() == pytest.approx(10 / 4)
    assert grpo.average_tokens(per_token, mask, "constant", 4).item() == pytest.approx(10 / (2 * 4))
    assert grpo.average_tokens(per_token + 100 * (1 - mask), mask, "token", 4).item() == pytest.approx(10 / 4)  # padding


def test_clipped_policy_loss_by_hand():
    """Two responses of two tokens, advantages +1 and -1, one token per response outside the clip range (0.2)."""
    old = torch.zeros(2, 2)
    new = torch.log(torch.tensor([[1.5, 1.0], [0.5, 1.1]]))
    mask = torch.ones(2, 2)
    loss, stats = grpo.policy_loss(new, old, torch.tensor([1.0, -1.0]), mask, 0.2, "token", 2)
    # A = +1: max(-1.5, -1.2) = -1.2 and -1.0; A = -1: max(0.5, 0.8) = 0.8 and max(1.1, 1.1) = 1.1
    assert loss.item() == pytest.approx((-1.2 - 1.0 + 0.8 + 1.1) / 4)
    assert stats["clipfrac"] == pytest.approx(2 / 4)
    assert stats["approxkl"] == pytest.approx(sum(0.5 * math.log(x) ** 2 for x in (1.5, 1.0, 0.5, 1.1)) / 4)


# ---------------------------------------------------------------- on the bundled policy

@pytest.fixture(scope="module")
def policy_and_samples():
    torch.manual_seed(0)
    tok = models.load_tokenizer(models.BUNDLED_MODEL)
    policy = models.disable_dropout(models.load_causal_lm(models.BUNDLED_MODEL))
    config = sampling.generation_config(tok, [tok.eos_token_id], 16, 1.0)
    prompts = task.split_prompts()[0][:2]
    queries = [tok(p).input_ids for p in prompts]
    return tok, policy, config, queries


def test_one_update_moves_the_better_samples_up(policy_and_samples):
    """8 samples of one prompt scored 1 for the better half by gold, 0 for the rest: after one small SGD step on the
    GRPO loss the above-average samples are on average more likely than before and the below-average ones less
    likely (a small step: to first order the loss falls; one sample may still move against its advantage, as the
    samples share weights)."""
    tok, policy, config, queries = policy_and_samples
    policy = models.load_causal_lm(models.BUNDLED_MODEL)  # a fresh copy: this test trains it
    r = sampling.rollout(policy, policy, tok, [queries[0]] * 8, config, [tok.eos_token_id], 1.0)
    gold = torch.tensor([task.gold_reward(task.split_prompts()[0][0], t) for t in r["texts"]])
    scores = (gold >= gold.median()).float()
    assert 0 < scores.sum() < 8
    advantages = grpo.grpo_advantages(scores, 8)
    optimizer = torch.optim.SGD(policy.parameters(), lr=1e-2)
    logprobs = sampling.response_logprobs(policy, r["seq"], r["mask"], r["context_length"], 1.0)[0]
    loss, _ = grpo.policy_loss(logprobs, r["logprobs"], advantages, r["resp_mask"], 0.2, "sequence", 16)
    loss.backward()
    optimizer.step()
    with torch.no_grad():
        after = sampling.response_logprobs(policy, r["seq"], r["mask"], r["context_length"], 1.0)[0]
    change = ((after - r["logprobs"]) * r["resp_mask"]).sum(1)
    assert change[advantages > 0].mean() > 0 > change[advantages < 0].mean(), (advantages, change)
    assert (advantages * change).sum() > 0


def test_merged_rollouts_keep_every_log_prob(policy_and_samples):
    """Two prompts sampled apart (different prompt and response lengths), merged: the log-probs recomputed on the
    merged batch are the ones read on each part, so the padding added on both sides is invisible to the model."""
    tok, policy, config, queries = policy_and_samples
    queries = [queries[0], queries[1][3:]]  # the task's prompts all have one length: cut one short
    parts = [sampling.rollout(policy, policy, tok, [q] * 3, config, [tok.eos_token_id], 1.0) for q in queries]
    assert parts[0]["context_length"] != parts[1]["context_length"]
    assert parts[0]["resp_mask"].shape[1] != parts[1]["resp_mask"].shape[1]
    merged = grpo.merge_rollouts(parts, tok.pad_token_id)
    assert merged["seq"].shape[0] == 6 and merged["texts"] == parts[0]["texts"] + parts[1]["texts"]
    with torch.no_grad():
        again = sampling.response_logprobs(policy, merged["seq"], merged["mask"], merged["context_length"], 1.0)[0]
    mask = merged["resp_mask"]  # after a response's stop token the log-probs are of padding: never used
    torch.testing.assert_close(again * mask, merged["logprobs"] * mask, atol=1e-5, rtol=0)
    assert merged["resp_mask"].sum() == sum(p["resp_mask"].sum() for p in parts)


# ---------------------------------------------------------------- end to end

TINY = ["--total-episodes", "192", "--rollout-batch-size", "32", "--num-generations", "4", "--response-length", "24",
        "--num-eval-prompts", "64", "--log-samples-every", "3"]


@pytest.mark.parametrize("flags, kl_in", [([], "loss"),
                                          (["--advantage", "rloo", "--reward-model", "rewards.py:gold"], "reward"),
                                          (["--no-scale-rewards", "--loss-averaging", "constant"], "loss")])
def test_end_to_end_learns_and_logs_the_names_of_ppo_rlhf(tmp_path, flags, kl_in):
    """GRPO, RLOO (against a user's reward function: the gold reward, through common/scoring.py) and Dr. GRPO."""
    (tmp_path / "rewards.py").write_text("from common import task\n\n\ndef gold(prompts, completions):\n"
                                         "    return [task.gold_reward(p, c) for p, c in zip(prompts, completions)]\n")
    out = run_script("grpo.py", *TINY, *flags, "--output-dir", str(tmp_path / "model"), cwd=tmp_path)
    assert f"KL in the {kl_in} (beta {0.04 if kl_in == 'loss' else 0.05})" in out
    before, after = map(float, re.search(r"eval gold (-?[\d.]+) -> (-?[\d.]+) \(best 3.5\)", out).groups())
    assert after > before + 0.3, out[-800:]  # measured: -0.19 -> 0.34 (grpo), 0.36 (rloo), 0.45 (Dr. GRPO)
    assert "192 episodes (48 prompts x 4)" in out
    logged = scalars(tmp_path / "runs")
    for tag in ["objective/scores", "objective/gold", "objective/kl", "objective/kl_coef", "objective/entropy",
                "objective/non_score_reward", "objective/rlhf_reward", "objective/frac_groups_equal_scores",
                "policy/approxkl_avg", "policy/clipfrac_avg", "policy/entropy_avg", "loss/policy_avg",
                "val/num_eos_tokens", "val/response_length", "charts/SPS", "eval/gold", "eval/kl"]:
        assert len(logged[tag]) >= 1 and all(math.isfinite(v) for v in logged[tag]), tag
    assert len(logged["objective/scores"]) == 6 and len(logged["eval/gold"]) == 3  # step 0, updates 3 and 6
    assert ("loss/kl_avg" in logged) == (kl_in == "loss")
    if kl_in == "reward":  # R = score - beta * KL: the logged means obey it
        for s, kl, rl in zip(logged["objective/scores"], logged["objective/kl"], logged["objective/rlhf_reward"]):
            assert rl == pytest.approx(s - 0.05 * kl, abs=1e-5)
    assert models.load_causal_lm(str(tmp_path / "model")).config.vocab_size == 189


def test_two_processes_reproduce_one_with_a_seed_per_group(tmp_path):
    """--seed-per-group samples group g of update u alike on any number of processes; with one minibatch per epoch
    the sequence-averaged loss of 2 processes (gradients averaged) is that of 1: the same scores, losses and
    weights, up to fp32 summation order (two updates apart the samples are still the same); under DDP and with --fsdp
    (policy and reference sharded)."""
    logged, weights = {}, {}
    for nproc, extra in ((1, []), (2, []), ("fsdp", ["--fsdp"])):
        cwd = tmp_path / f"nproc{nproc}"
        cwd.mkdir()
        out = run_script("grpo.py", "--total-episodes", "48", "--rollout-batch-size", "16", "--num-generations", "4",
                         "--response-length", "12", "--num-eval-prompts", "8", "--num-mini-batches", "1",
                         "--num-ppo-epochs", "2", "--seed-per-group", "--output-dir", str(cwd / "model"), *extra,
                         cwd=cwd, nproc=2 if extra else nproc)
        assert out.count("grpo (grpo): eval gold") == 1 and f"on {2 if extra else nproc} process(es)" in out
        logged[nproc] = scalars(cwd / "runs")
        weights[nproc] = models.load_causal_lm(str(cwd / "model")).state_dict()
    # (policy/approxkl_avg is a mean over each process's tokens, then over processes: not comparable)
    for two in (2, "fsdp"):
        for tag in ("objective/scores", "objective/kl", "loss/policy_avg", "loss/kl_avg", "objective/entropy"):
            assert logged[two][tag] == pytest.approx(logged[1][tag], rel=1e-4, abs=1e-6), (two, tag)
        for name, w in weights[1].items():
            torch.testing.assert_close(weights[two][name], w, atol=1e-5, rtol=1e-4)
    assert logged[1]["objective/kl"][0] == 0 and logged[1]["objective/kl"][-1] > 0  # the policy did move


def test_use_peft_trains_adapters_only(tmp_path, standin):
    base = standin("lm", "llama")
    run_script("grpo.py", "--model", base, "--reward-model", standin("rm", "llama"), "--dataset",
               standin("data", "tldr"), "--total-episodes", "16", "--rollout-batch-size", "8", "--num-generations",
               "2", "--response-length", "8", "--num-eval-prompts", "4", "--learning-rate", "1e-2", "--use-peft",
               "--lora-r", "2", "--merge-lora", "--output-dir", str(tmp_path / "model"), cwd=tmp_path)
    logged = scalars(tmp_path / "runs")
    assert logged["objective/kl"][0] == 0.0 and logged["eval/kl"][-1] != 0.0  # the reference is the start
    check_lora_save(tmp_path / "model", base, 2)
