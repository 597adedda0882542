"""ppo_rlhf.py: the KL estimators, the adaptive controller, reward shaping, whitening, GAE and the PPO losses against
independent formulations; log-probs of a real rollout against the sampler's own; end-to-end runs."""

import math
import re

import pytest
import torch

import ppo_rlhf
from common import data, models, sampling, task
from conftest import LORA_KINDS, check_lora_save, compare_saved, run_script, scalars

pytestmark = pytest.mark.usefixtures("one_cpu_thread")  # conftest.py


# ---------------------------------------------------------------- KL estimators and the adaptive controller

def test_k1_k3_by_hand_and_unbiased_by_enumeration():
    logp, ref = torch.tensor([math.log(0.5), math.log(0.2)]), torch.tensor([math.log(0.25), math.log(0.4)])
    k1 = ppo_rlhf.per_token_kl(logp, ref, "k1")
    k3 = ppo_rlhf.per_token_kl(logp, ref, "k3")
    torch.testing.assert_close(k1, torch.tensor([math.log(2), math.log(0.5)]))
    torch.testing.assert_close(k3, torch.tensor([(0.5 - 1) + math.log(2), (2 - 1) + math.log(0.5)]))
    assert ppo_rlhf.per_token_kl(logp, ref, "k1", clamp=True).tolist() == pytest.approx([math.log(2), 0.0])
    # both are unbiased: their expectation under pi is the exact KL(pi || ref), summed over the whole vocabulary
    g = torch.Generator().manual_seed(0)
    pi, rf = torch.randn(50, generator=g).log_softmax(0), torch.randn(50, generator=g).log_softmax(0)
    exact = (pi.exp() * (pi - rf)).sum()
    for est in ("k1", "k3"):
        torch.testing.assert_close((pi.exp() * ppo_rlhf.per_token_kl(pi, rf, est)).sum(), exact)
    assert (ppo_rlhf.per_token_kl(pi, rf, "k3") >= 0).all() and (ppo_rlhf.per_token_kl(pi, rf, "k1") < 0).any()


def test_only_k1_as_a_detached_reward_has_the_gradient_of_the_kl():
    """The penalty enters PPO as a detached per-token reward, so its expected policy gradient is the score function
    sum_x pi(x) est(x) grad log pi(x), enumerated here exactly over a 6-way pi = softmax(theta). Against the gradient
    of the exact KL(pi || ref) (autograd through the sum over outcomes): k1 matches; k3, unbiased as a value, has the
    gradient of KL(pi || ref) - KL(ref || pi) instead."""
    g = torch.Generator().manual_seed(0)
    theta = torch.randn(6, generator=g, dtype=torch.float64, requires_grad=True)
    ref = (2 * torch.randn(6, generator=g, dtype=torch.float64)).log_softmax(0)

    def gradient(f):
        return torch.autograd.grad(f(theta.log_softmax(0)), theta)[0]

    kl_forward = gradient(lambda lp: (lp.exp() * (lp - ref)).sum())  # KL(pi || ref)
    kl_reverse = gradient(lambda lp: (ref.exp() * (ref - lp)).sum())  # KL(ref || pi)
    logp = theta.log_softmax(0)
    score = {}
    for est in ("k1", "k3"):
        reward = ppo_rlhf.per_token_kl(logp.detach(), ref, est)  # a number per outcome, as in the rollout
        score[est] = sum(logp[x].exp().item() * reward[x].item() * torch.autograd.grad(logp[x], theta, retain_graph=True)[0]
                         for x in range(6))
    torch.testing.assert_close(score["k1"], kl_forward, atol=1e-12, rtol=0)
    torch.testing.assert_close(score["k3"], kl_forward - kl_reverse, atol=1e-12, rtol=0)
    assert (score["k3"] - kl_forward).abs().max() > 0.1  # 0.44 here (grad KL(ref || pi) = pi - ref): another gradient


def test_adaptive_kl_controller_update():
    # Ziegler et al.: e = clip(KL / target - 1, -0.2, 0.2); beta *= 1 + e * n_steps / horizon
    assert ppo_rlhf.adaptive_kl_update(0.1, 6.6, 6.0, 512, 10000) == pytest.approx(0.1 * (1 + 0.1 * 512 / 10000))
    assert ppo_rlhf.adaptive_kl_update(0.1, 60.0, 6.0, 512, 10000) == pytest.approx(0.1 * (1 + 0.2 * 512 / 10000))
    assert ppo_rlhf.adaptive_kl_update(0.1, 0.0, 6.0, 512, 10000) == pytest.approx(0.1 * (1 - 0.2 * 512 / 10000))
    assert ppo_rlhf.adaptive_kl_update(0.1, 6.0, 6.0, 512, 10000) == 0.1
    # closed loop: with KL proportional to 1/beta, beta settles where KL hits the target
    beta = 0.05
    for _ in range(3000):
        beta = ppo_rlhf.adaptive_kl_update(beta, 0.6 / beta, 6.0, 100, 1000)
    assert beta == pytest.approx(0.1, rel=0.02)


# ---------------------------------------------------------------- rewards, whitening, GAE

def test_shape_rewards_hand_built():
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]]).float()
    kl = torch.tensor([[0.1, -0.2, 0.3, 9.0, 9.0], [0.0, 0.1, 0.1, 0.1, 0.1], [0.5, 9.0, 9.0, 9.0, 9.0]])
    rewards, non_score = ppo_rlhf.shape_rewards(kl, torch.tensor([1.0, 2.0, 3.0]), mask, beta=0.1)
    expected_ns = torch.tensor([[-0.01, 0.02, -0.03, 0, 0], [0, -0.01, -0.01, -0.01, -0.01], [-0.05, 0, 0, 0, 0]])
    torch.testing.assert_close(non_score, expected_ns)
    expected = expected_ns.clone()
    expected[0, 2] += 1.0  # the last response token (the EOS), not the padding after it
    expected[1, 4] += 2.0  # a response cut at the length limit: its last token
    expected[2, 0] += 3.0  # a response that is only EOS
    torch.testing.assert_close(rewards, expected)
    assert (rewards[mask == 0] == 0).all()
    # with the clamp (AlpacaFarm) a negative per-token KL adds no bonus
    clamped = ppo_rlhf.per_token_kl(torch.zeros(3, 5), -kl, "k1", clamp=True) * mask
    r2, _ = ppo_rlhf.shape_rewards(clamped, torch.tensor([1.0, 2.0, 3.0]), mask, beta=0.1)
    assert r2[0, 1] == 0.0 and r2[0, 2] == pytest.approx(1.0 - 0.03)


def test_masked_whiten_against_the_valid_tokens_alone():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 7, generator=g) * 3 + 2
    mask = torch.tensor([[1] * 7, [1] * 3 + [0] * 4, [1] * 5 + [0] * 2, [1] + [0] * 6]).float()
    valid = x[mask.bool()]
    mean, std = valid.mean(), valid.std()  # unbiased std
    white = ppo_rlhf.masked_whiten(x, mask)
    torch.testing.assert_close(white[mask.bool()], (valid - mean) / std, atol=1e-5, rtol=1e-5)
    keep = ppo_rlhf.masked_whiten(x, mask, shift_mean=False)
    torch.testing.assert_close(keep[mask.bool()], (valid - mean) / std + mean, atol=1e-5, rtol=1e-5)
    assert (white[mask == 0] == 0).all()
    garbage = torch.where(mask.bool(), x, torch.full_like(x, 1e4))  # padding values change nothing
    torch.testing.assert_close(ppo_rlhf.masked_whiten(garbage, mask), white)


def naive_gae(rewards, values, n, gamma, lam):
    """One sequence of n valid steps, the advantage as the explicit sum sum_l (gamma lam)^l delta_{t+l}."""
    v = values[:n] + [0.0]  # the value after the last token is 0
    deltas = [rewards[t] + gamma * v[t + 1] - v[t] for t in range(n)]
    return [sum((gamma * lam) ** l * deltas[t + l] for l in range(n - t)) for t in range(n)]


@pytest.mark.parametrize("gamma, lam", [(1.0, 0.95), (0.9, 0.8), (1.0, 1.0)])
def test_gae_against_a_naive_per_step_loop_with_masks(gamma, lam):
    g = torch.Generator().manual_seed(2)
    lengths = [6, 1, 4, 3]
    rewards, values = torch.randn(4, 6, generator=g), torch.randn(4, 6, generator=g)
    mask = torch.tensor([[1.0] * n + [0.0] * (6 - n) for n in lengths])
    adv, ret = ppo_rlhf.compute_gae(rewards, values, mask, gamma, lam)  # padding holds garbage: it must be ignored
    for i, n in enumerate(lengths):
        expected = naive_gae(rewards[i].tolist(), values[i].tolist(), n, gamma, lam)
        assert adv[i, :n].tolist() == pytest.approx(expected, abs=1e-5)
        assert adv[i, n:].abs().sum() == 0
        assert ret[i, :n].tolist() == pytest.approx([a + v for a, v in zip(expected, values[i, :n].tolist())], abs=1e-5)
        if gamma == lam == 1.0:  # the bandit case: reward-to-go minus the value
            togo = [sum(rewards[i, t:n].tolist()) - values[i, t].item() for t in range(n)]
            assert adv[i, :n].tolist() == pytest.approx(togo, abs=1e-5)


# ---------------------------------------------------------------- PPO losses

def test_ppo_losses_by_hand():
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    old = torch.tensor([[-1.0, -2.0, -3.0]])
    new = old + torch.tensor([[math.log(1.5), math.log(0.9), 5.0]])  # ratio 1.5 (clipped), 0.9, padding
    adv = torch.tensor([[2.0, -1.0, 7.0]])
    vpred, vold, ret = torch.tensor([[1.0, 0.5, 9.0]]), torch.tensor([[0.5, 0.1, 0.0]]), torch.tensor([[3.0, 0.0, 0.0]])
    pg, vf, s = ppo_rlhf.ppo_losses(new, old, adv, vpred, vold, ret, mask, cliprange=0.2, cliprange_value=0.2)
    # token 0: max(-2 * 1.5, -2 * 1.2) = -2.4 (clipped); token 1: max(0.9, 0.9) = 0.9
    assert pg.item() == pytest.approx((-2.4 + 0.9) / 2)
    # token 0: vpred 1.0 clipped to 0.7: max((1-3)^2, (0.7-3)^2) = 5.29; token 1: 0.5 clipped to 0.3: max(0.25, 0.09)
    assert vf.item() == pytest.approx(0.5 * (5.29 + 0.25) / 2)
    assert s["clipfrac"] == 0.5 and s["vf_clipfrac"] == 0.5
    assert s["ratio"] == pytest.approx((1.5 + 0.9) / 2)
    assert s["approxkl"] == pytest.approx(0.25 * (math.log(1.5) ** 2 + math.log(0.9) ** 2))


# ---------------------------------------------------------------- rollouts: the sampler's log-probs are the ones we recompute

@pytest.mark.parametrize("which", ["bundled", "llama"])
def test_rollout_logprobs_match_the_sampler_and_first_ratio_is_one(which, llama_pad_eos):
    """The log-probs recomputed in one forward pass (left padding, position ids from the mask, logits / temperature)
    equal those of the distribution generate() sampled from; so on the first minibatch the PPO ratio is 1."""
    path = models.BUNDLED_MODEL if which == "bundled" else llama_pad_eos
    tok, policy = models.load_tokenizer(path), models.load_causal_lm(path).eval()
    prompts = task.all_prompts()[::97][:12]
    queries = [tok(p).input_ids[: 3 + i % 6] for i, p in enumerate(prompts)]  # ragged lengths: real left padding
    T, stop = 0.7, [tok.eos_token_id]
    cfg = sampling.generation_config(tok, stop, 10, T)
    torch.manual_seed(0)
    r = sampling.rollout(policy, policy, tok, queries, cfg, stop, T)
    # the same samples again, this time with generate()'s own logits
    cfg.output_logits, cfg.return_dict_in_generate = True, True
    query = data.pad(queries, tok.pad_token_id, "left")
    torch.manual_seed(0)
    out = policy.generate(input_ids=query, attention_mask=data.pad([[1] * len(q) for q in queries], 0, "left"), generation_config=cfg)
    L, m = r["context_length"], r["resp_mask"]
    assert torch.equal(out.sequences[:, L:][m.bool()], r["seq"][:, L:][m.bool()])
    sampler = torch.stack(out.logits, 1).div(T).log_softmax(-1).gather(-1, out.sequences[:, L:, None]).squeeze(-1)
    torch.testing.assert_close(r["logprobs"] * m, sampler * m, atol=1e-4, rtol=1e-4)
    assert torch.equal(r["logprobs"], r["ref_logprobs"])  # policy == reference: KL 0
    # the entropy logged as policy/entropy_avg: of the sampler's distribution, over response tokens only
    _, entropy, _ = sampling.response_logprobs(policy, r["seq"], r["mask"], L, T)
    p = torch.stack(out.logits, 1).div(T).softmax(-1)
    sampler_entropy = -(p * p.log().nan_to_num(neginf=0.0)).sum(-1)  # 0 log 0 = 0
    torch.testing.assert_close(entropy[m.bool()], sampler_entropy[m.bool()], atol=1e-4, rtol=1e-4)
    assert ppo_rlhf.masked_mean(entropy, m).item() == pytest.approx(sampler_entropy[m.bool()].mean().item(), abs=1e-4)
    if which == "bundled":  # responses that stopped: padding there, whose entropy would move the mean if counted
        assert ppo_rlhf.masked_mean(entropy, m).item() != pytest.approx(entropy.mean().item(), abs=1e-2)

    mb = torch.randperm(len(queries))[:6]  # the first minibatch, recomputed with gradients as in the update
    new, _, _ = sampling.response_logprobs(policy, r["seq"][mb], r["mask"][mb], L, T)
    adv = torch.randn_like(new)
    zeros = torch.zeros_like(new)
    _, _, s = ppo_rlhf.ppo_losses(new, r["logprobs"][mb], adv, zeros, zeros, zeros, m[mb])
    assert s["ratio"] == pytest.approx(1.0, abs=1e-5) and s["clipfrac"] == 0.0 and s["approxkl"] < 1e-9
    # the check has teeth: the wrong temperature, or positions that ignore the left padding, break it
    wrong_t, _, _ = sampling.response_logprobs(policy, r["seq"][mb], r["mask"][mb], L, 1.0)
    assert ppo_rlhf.ppo_losses(wrong_t, r["logprobs"][mb], adv, zeros, zeros, zeros, m[mb])[2]["approxkl"] > 1e-4
    if which == "bundled":
        logits = policy(input_ids=r["seq"][mb], attention_mask=r["mask"][mb]).logits[:, L - 1 : -1] / T
        no_pos = logits.log_softmax(-1).gather(-1, r["seq"][mb][:, L:, None]).squeeze(-1)
        assert ppo_rlhf.ppo_losses(no_pos, r["logprobs"][mb], adv, zeros, zeros, zeros, m[mb])[2]["approxkl"] > 1e-4


def test_gradient_checkpointing_recomputes_in_the_update_and_rollouts_keep_the_kv_cache():
    """--gradient-checkpointing on the policy and the value network: in the update each block runs again in the
    backward pass (its activations recomputed, not stored) and the gradients are those without it; rollouts still
    sample with the KV cache (one new token per forward after the prompt), although the policy is in training mode,
    and sample what they sample without checkpointing (in training mode the blocks would drop the cache silently)."""
    tok = models.load_tokenizer(models.BUNDLED_MODEL)
    queries = [tok(p).input_ids for p in task.all_prompts()[:4]]
    stop = [tok.eos_token_id]
    cfg = sampling.generation_config(tok, stop, 6, 1.0)
    lengths = []  # the sequence length inside the first block at each of its forwards, policy and value network

    def counted(forward):  # module hooks stay outside the checkpoint (not re-run): count the forward itself
        def forward_and_count(hidden_states):
            lengths.append(hidden_states.shape[1])
            return forward(hidden_states)
        return forward_and_count

    grads, samples = {}, {}
    for checkpointing in (False, True):
        torch.manual_seed(0)  # the same fresh value head both times
        policy, value_model = models.load_causal_lm(models.BUNDLED_MODEL), models.load_reward_model(models.BUNDLED_MODEL)
        for model in (policy, value_model):
            if checkpointing:
                models.checkpoint_activations(model)  # as the script does: in training mode, where it acts
            model.base_model.h[0].mlp.forward = counted(model.base_model.h[0].mlp.forward)
        lengths.clear()
        torch.manual_seed(0)
        r = sampling.rollout(policy, policy, tok, queries, cfg, stop, 1.0)
        assert policy.training == checkpointing and lengths[1:6] == [1] * 5, lengths  # the prompt, then a token at a time
        samples[checkpointing] = r["seq"]
        lengths.clear()
        logprobs, _, _ = sampling.response_logprobs(policy, r["seq"], r["mask"], r["context_length"], 1.0)
        values = models.head_per_token(value_model, r["seq"], r["mask"])
        (logprobs.sum() + values.sum()).backward()
        assert len(lengths) == (4 if checkpointing else 2)  # policy and value network forward, and again in backward
        grads[checkpointing] = [p.grad for p in [*policy.parameters(), *value_model.parameters()]]
    assert torch.equal(samples[False], samples[True])
    for a, b in zip(grads[False], grads[True]):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def save_reward_model(path, tokenizer, mean=0.3, std=2.0, seed=0):
    """A reward-model directory in rm_bt.py's format: a sequence classifier, reward_mean/std in its config, the tokenizer."""
    torch.manual_seed(seed)
    rm = models.load_reward_model(models.BUNDLED_MODEL)
    rm.config.reward_mean, rm.config.reward_std = mean, std
    rm.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def other_tokenizer():
    """The task's tokenizer with one more token: another vocabulary, so the policy's ids cannot be fed to the RM."""
    tok = task.build_tokenizer()
    tok.add_tokens(["<extra>"])
    return tok


# ---------------------------------------------------------------- end to end

def test_end_to_end_gold_learns_and_logs_the_field_names(tmp_path):
    out = run_script("ppo_rlhf.py", "--total-episodes", "256", "--rollout-batch-size", "64", "--response-length", "24",
                     "--num-eval-prompts", "96", "--log-samples-every", "4", "--output-dir", str(tmp_path / "model"), cwd=tmp_path)
    before, after = map(float, re.search(r"eval gold (-?[\d.]+) -> (-?[\d.]+) \(best 3.5\)", out).groups())
    assert after > before + 0.5, out[-800:]  # measured: 0.15 -> 0.90 in these 4 updates
    kl = float(re.search(r"KL to the reference (-?[\d.]+) nats", out).group(1))
    assert 0.3 < kl < 3.0  # measured 1.06: the policy moved away from the reference, held near it by the 0.05 penalty
    logged = scalars(tmp_path / "runs")
    for tag in ["objective/scores", "objective/gold", "objective/kl", "objective/kl_coef", "objective/entropy",
                "objective/non_score_reward", "objective/rlhf_reward", "policy/approxkl_avg", "policy/clipfrac_avg",
                "policy/entropy_avg", "loss/policy_avg", "loss/value_avg", "val/clipfrac_avg", "val/explained_variance",
                "val/num_eos_tokens", "val/response_length", "charts/SPS", "eval/gold"]:
        assert len(logged[tag]) >= 1 and all(math.isfinite(v) for v in logged[tag]), tag
    assert len(logged["objective/scores"]) == 4 and logged["objective/kl_coef"] == pytest.approx([0.05] * 4)  # fixed beta
    assert logged["objective/scores"][-1] > logged["objective/scores"][0] + 0.5  # measured: 0.13 -> 1.37
    # the evaluation before training is logged at step 0 (the policy is its reference: KL exactly 0), then every 4 updates
    assert len(logged["eval/gold"]) == 2 and logged["eval/gold"][0] == pytest.approx(before, abs=1e-3)
    assert logged["eval/kl"][0] == 0.0 and logged["eval/kl"][1] == pytest.approx(kl, abs=0.01)
    assert models.load_causal_lm(str(tmp_path / "model")).config.vocab_size == 189
    # the time split: its parts are measured inside the loop, so together at most the loop's time (rounded to 1 s);
    # 4 rollouts of 64 responses of 1 to 24 tokens are 256 to 6144 sampled tokens (prompt tokens would add ~3000)
    parts = re.search(r"time: generation ([\d.]+)s \((\d+) tokens/s\), scoring \(log-probs, values, reward\) "
                      r"([\d.]+)s, update ([\d.]+)s, evaluation ([\d.]+)s", out)
    generation, tokens_per_s, scoring_s, update_s, evaluation_s = map(float, parts.groups())
    total = float(re.search(r"256 episodes in (\d+)s", out).group(1))
    assert min(generation, scoring_s, update_s, evaluation_s) > 0
    assert generation + scoring_s + update_s + evaluation_s <= total + 1.0
    assert 200 <= tokens_per_s * generation <= 6144 * 1.2  # 20% for the rounding of a short generation time
    assert logged["charts/generated_tokens_per_second"][-1] == pytest.approx(tokens_per_s, rel=0.01, abs=1)


@pytest.mark.parametrize("fixture, same_vocab, flags", [
    ("llama_pad_eos", True, ["--ptx-coef", "0.5", "--kl-estimator", "k3", "--whiten-rewards", "--target-kl", "1.0"]),
    ("gpt2_no_pad", False, ["--value-head-on-policy", "--kl-clamp", "--stop-token", ".", "--dataset", "prompts.jsonl"]),
])
def test_end_to_end_reward_model_directory_and_other_architectures(tmp_path, request, fixture, same_vocab, flags):
    """--reward-model with an rm_bt.py-style directory logs proxy and gold side by side; --model takes a Llama whose
    pad is EOS and a GPT-2 whose tokenizer has no pad; a reward model with another vocabulary reads re-encoded text;
    --dataset takes a file of {"prompt"} rows."""
    path = request.getfixturevalue(fixture)
    task.export_jsonl([{"prompt": p} for p in task.all_prompts()[::29]], tmp_path / "prompts.jsonl")  # a user's prompt file
    rm = save_reward_model(tmp_path / "rm", models.load_tokenizer(path) if same_vocab else other_tokenizer(), mean=0.1, std=0.5)
    out = run_script("ppo_rlhf.py", "--model", path, "--reward-model", rm, "--total-episodes", "16", "--rollout-batch-size", "8",
                     "--response-length", "8", "--num-eval-prompts", "8", *flags, "--output-dir", str(tmp_path / "model"), cwd=tmp_path)
    assert "reward_mean 0.1, reward_std 0.5" in out
    assert ("the policy's tokenizer" in out and f"value network initialized from {rm}" in out) if same_vocab else "re-encoded" in out
    assert re.search(r"eval gold -?[\d.]+ -> -?[\d.]+ \(best 3.5\), eval proxy score -?[\d.]+ -> -?[\d.]+", out), out[-800:]
    logged = scalars(tmp_path / "runs")
    assert len(logged["objective/scores"]) == 2 and len(logged["objective/gold"]) == 2
    if "--target-kl" in flags:  # the adaptive controller moved beta by Ziegler et al.'s rule, from the KL it measured
        error = min(max(logged["objective/kl"][0] / 1.0 - 1, -0.2), 0.2)
        assert logged["objective/kl_coef"][1] == pytest.approx(0.05 * (1 + error * 8 / 10000), rel=1e-6)
        assert logged["objective/kl_coef"][1] < 0.05  # the first rollout's KL is 0 (policy = reference), below target
    if "--ptx-coef" in flags:
        assert math.isfinite(logged["loss/ptx_avg"][0])
    assert models.load_causal_lm(str(tmp_path / "model")).config.model_type == fixture.split("_")[0]


def test_two_processes_share_the_rollouts_and_only_rank_0_reports(tmp_path):
    """torchrun with 2 processes: each samples half of every rollout of 16 prompts with its own seed, gradients are
    averaged by DDP, metrics over both; the adaptive beta stays the same on both ranks (else they would diverge).
    A user's file of 5 train prompts, fewer than a rollout: each rollout makes several passes over them; and 1 eval
    prompt, fewer than the processes: rank 1 samples none and adds nothing to the evaluation's means. With --fsdp
    (policy, value network and reference sharded) the same seeds sample the same responses: the same run, within
    fp32 sums in another order, and the same saved weights. (One process samples other responses: no comparison.)"""
    train, eval_ = data.split_by_prompt([{"prompt": p} for p in task.all_prompts()])
    task.export_jsonl(train[:5] + eval_[:1], tmp_path / "prompts.jsonl")
    runs = {}
    for name, extra in (("ddp", []), ("fsdp", ["--fsdp"])):
        (tmp_path / name).mkdir()
        out = run_script("ppo_rlhf.py", "--dataset", str(tmp_path / "prompts.jsonl"), "--total-episodes", "64",
                         "--rollout-batch-size", "16", "--response-length", "16", "--log-samples-every", "2",
                         "--target-kl", "1.0", "--output-dir", str(tmp_path / name / "model"), *extra,
                         cwd=tmp_path / name, nproc=2)
        assert out.count("ppo_rlhf: eval gold") == 1 and "64 episodes" in out and "on 2 process(es)" in out
        assert ("weights identical on the 2 processes: True" in out) == (name == "ddp")
        runs[name] = scalars(tmp_path / name / "runs")
    for tag in ("objective/scores", "objective/kl", "loss/policy_avg", "loss/value_avg", "eval/gold"):
        assert runs["fsdp"][tag] == pytest.approx(runs["ddp"][tag], abs=1e-4), tag
    compare_saved(tmp_path / "ddp" / "model", tmp_path / "fsdp" / "model")
    logged = runs["ddp"]
    assert len(logged["objective/scores"]) == 4 and len(logged["eval/gold"]) == 3  # step 0, updates 2 and 4
    assert len(set(logged["objective/kl_coef"])) == 4  # the controller moved beta at every update
    assert all(0 <= n <= 16 for n in logged["val/num_eos_tokens"])  # a count over both processes' 8 responses each
    assert models.load_causal_lm(str(tmp_path / "ddp" / "model")).config.vocab_size == 189


@pytest.mark.parametrize("kind, flags", zip(LORA_KINDS, [["--value-head-on-policy"], ["--fsdp"],
                                                         ["--gradient-checkpointing"]]))
def test_use_peft_reference_is_the_start_and_only_adapters_train(tmp_path, standin, kind, flags):
    """--use-peft on the GPT-2, Llama and Qwen2 stand-ins with a reward model of the same kind (TL;DR prompts): the
    value network from the reward model with adapters and head (or a head on the policy), the reference the policy
    with its adapters off. The first KL is exactly 0 and later ones are not (the reference stays put while the policy
    moves); only the policy's adapters train and the merged save loads with transformers (check_lora_save). The Llama
    case runs on 2 processes with --fsdp: frozen bases sharded, adapters trained, the merged policy gathered to save."""
    base, rm = standin("lm", kind), standin("rm", kind)
    out = run_script("ppo_rlhf.py", "--model", base, "--reward-model", rm, "--dataset", standin("data", "tldr"),
                     "--total-episodes", "24", "--rollout-batch-size", "8", "--response-length", "8",
                     "--num-eval-prompts", "8", "--learning-rate", "1e-2", "--use-peft", "--lora-r", "2", "--merge-lora", *flags,
                     "--output-dir", str(tmp_path / "model"), cwd=tmp_path, nproc=2 if "--fsdp" in flags else 1)
    assert ("--value-head-on-policy" in flags) != (f"value network initialized from {rm}" in out)
    logged = scalars(tmp_path / "runs")
    assert logged["objective/kl"][0] == 0.0 and logged["eval/kl"][0] == 0.0
    assert logged["objective/kl"][-1] != 0.0 and logged["eval/kl"][-1] != 0.0
    check_lora_save(tmp_path / "model", base, 2)
