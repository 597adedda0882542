r"""PPO for language models with a per-token KL penalty and GAE: the RL step of RLHF (InstructGPT, step 3).

Ziegler et al. 2019 (KL-shaped reward, adaptive KL), Stiennon et al. 2020 (value function from the reward model),
Ouyang et al. 2022 (InstructGPT, PPO-ptx), Schulman et al. 2017 (PPO) and 2015 (GAE), and the "N implementation
details of RLHF with PPO" (Huang et al.): each detail is a commented line below.
    python ppo_rlhf.py                                   # bundled base policy, the embedded task's gold reward
    python ppo_rlhf.py --reward-model runs/rm_bt__1__.../model   # a reward model from rm_bt.py or rm_kwise.py
    python ppo_rlhf.py --model gpt2 --reward-model lvwerra/distilbert-imdb --reward-label POSITIVE \
        --dataset imdb_prompts.jsonl
    python ppo_rlhf.py --model <SFT model> --reward-model my_rewards.py:reward --dataset trl-lib/tldr  # Python function
    torchrun --nproc_per_node 4 ppo_rlhf.py --model gpt2 ...  # data parallel: each process rolls out 1/4 of the prompts
    # one GPU (README):
    python ppo_rlhf.py --model <7B SFT model> --reward-model <RM> --use-peft --gradient-checkpointing

With --use-peft the policy and the value network train LoRA adapters (the value network's head too) and the reference
is the policy with its adapters off: no second copy. Frozen weights are bf16 on GPUs that support it.
"""

import random
import time
from collections import Counter, defaultdict
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Literal, Optional

import torch
import torch.nn.functional as F
import tyro
from tqdm import tqdm

from common import data, models, parallel, runs, sampling, scoring, task


@dataclass
class Args:
    exp_name: str = "ppo_rlhf"
    """the name of this experiment (the run is logged to runs/<exp_name>__<seed>__<time>)"""
    seed: int = 1
    """seed of the experiment"""
    torch_deterministic: bool = True
    """sets torch.backends.cudnn.deterministic"""
    cuda: bool = True
    """use CUDA when available (bf16 autocast where supported)"""
    trust_remote_code: bool = False
    """allow model code from the hub (off unless you trust it)"""
    track: bool = False
    """also log the run to Weights & Biases (pip install wandb; WANDB_MODE=offline keeps it on this machine)"""
    wandb_project_name: str = "rlhf-from-code"
    """the W&B project of the run (with --track)"""
    wandb_entity: Optional[str] = None
    """the W&B team or user (with --track); None: your default entity"""

    model: str = models.BUNDLED_MODEL
    """the policy to start from (an SFT model), a hub name or local path; its frozen start is the KL reference"""
    reward_model: str = "gold"
    """'gold' (the embedded task's gold reward), a sequence classifier (rm_bt.py / rm_kwise.py output, a hub reward
    model or sentiment classifier, decoder or encoder), or file.py:fn (see common/scoring.py)"""
    reward_label: Optional[str] = None
    """the output to maximize of a classifier with several labels: a name from config.id2label (POSITIVE) or an index"""
    ensemble: tyro.conf.OmitArgPrefixes[scoring.EnsembleArgs] = field(default_factory=scoring.EnsembleArgs)
    """--reward-model an ensemble (rm_ensemble.py): --ensemble-aggregate mean|min|mean_minus_std, --uncertainty-coef"""
    value_head_on_policy: bool = False
    """a scalar value head on the policy's last hidden state (lm-human-preferences), not a separate value network"""
    dataset: str = "embedded"
    """prompts: 'embedded' (the task's train prompts; its eval prompts for evaluation), a .jsonl/.json file, a local
    dataset folder or a hub dataset: the prompts of its rows, whatever their kind (common/data.py)"""
    dataset_config: Optional[str] = None
    """the dataset's configuration (subset), where it has several"""
    dataset_train_split: str = "train"
    """the split to train on"""
    dataset_test_split: Optional[str] = None
    """the split to evaluate on; if not given: test, else validation, else 5% of the prompts held out"""
    num_eval_prompts: Optional[int] = None
    """evaluate on the first N held-out prompts only (None: all of them)"""
    output_dir: str = ""
    """where to save the trained policy and tokenizer; '' saves to runs/<run_name>/model"""

    total_episodes: int = 6400
    """prompts (and responses) to train on in all; updates = total_episodes // rollout_batch_size"""
    rollout_batch_size: int = 64
    """prompts sampled per rollout (one PPO update), all processes together (under torchrun each samples its share)"""
    num_mini_batches: int = 2
    """minibatches each rollout is split into, per PPO epoch"""
    num_ppo_epochs: int = 4
    """passes over each rollout"""
    learning_rate: Optional[float] = None
    """Adam learning rate of the policy and the value function, decayed linearly to 0; if not given: 3e-4 for a small
    model like the bundled one, 3e-6 for a pretrained one (TRL)"""
    max_grad_norm: float = 1.0
    """gradient norm clipping"""
    response_length: int = 64
    """longest response in tokens; a response that has not stopped by then is cut (and gets the missing-EOS penalty)"""
    max_prompt_length: Optional[int] = None
    """longest prompt in tokens, its end kept (counted); if not given: 64 for a small model, 512 for a pretrained one"""
    temperature: float = 1.0
    """sampling temperature; log-probs of policy, reference and old policy all come from logits / temperature"""
    stop_token: str = ""
    """a token that also ends a response (besides EOS); everything after it is masked"""
    missing_eos_penalty: float = 1.0
    """subtracted from the score of a response that never stopped (0 to disable)"""

    kl_coef: float = 0.05
    """beta, the per-token KL penalty coefficient (the initial value when target_kl is set)"""
    kl_estimator: Literal["k1", "k3"] = "k1"
    """per-token KL estimator in the reward: k1 = log(pi/ref) or k3 = (r - 1) - log r, r = ref/pi (per_token_kl)"""
    kl_clamp: bool = False
    """clamp the per-token KL at 0 (AlpacaFarm)"""
    target_kl: Optional[float] = None
    """when set, the adaptive KL controller (Ziegler et al. 2019) steers the sequence KL towards this many nats"""
    kl_horizon: int = 10000
    """horizon of the adaptive KL controller, in episodes"""
    whiten_rewards: bool = False
    """whiten the shaped rewards over valid tokens, without shifting their mean"""
    gamma: float = 1.0
    """discount factor"""
    lam: float = 0.95
    """GAE lambda"""
    cliprange: float = 0.2
    """PPO clip range of the policy ratio"""
    cliprange_value: float = 0.2
    """clip range of the value prediction around the rollout's value"""
    vf_coef: float = 0.1
    """value loss coefficient"""
    ptx_coef: float = 0.0
    """PPO-ptx (InstructGPT): coefficient of the demonstrations' log-likelihood added to the objective (0: off)"""
    ptx_dataset: str = "embedded"
    """demonstrations for PPO-ptx (InstructGPT mixed in pretraining text): 'embedded' (task.make_sft on the train
    prompts) or a {"prompt", "completion"} file / hub dataset"""
    log_samples_every: int = 20
    """updates between tables of prompts, responses and scores in TensorBoard (and evaluations on the eval prompts)"""
    gradient_checkpointing: bool = False
    """recompute activations in the backward pass of the policy and the value network: less memory, about 30% slower"""
    lora: tyro.conf.OmitArgPrefixes[models.LoraArgs] = field(default_factory=models.LoraArgs)
    """LoRA: --use-peft, --lora-r, --lora-alpha, --lora-dropout, --lora-target-modules, --merge-lora (see LoraArgs)"""
    sharding: tyro.conf.OmitArgPrefixes[parallel.ParallelArgs] = field(default_factory=parallel.ParallelArgs)
    """under torchrun: --fsdp, --fsdp-cpu-offload (see common/parallel.py); DDP without them"""


# ---------------------------------------------------------------- the math (pure functions, tests/test_ppo_rlhf.py)

def per_token_kl(logprobs, ref_logprobs, estimator="k1", clamp=False):
    """(B, T) KL(pi || ref) estimate per sampled token, with log r = ref_logprobs - logprobs (Schulman's note):
    k1 = -log r (can be negative), k3 = (exp(log r) - 1) - log r (never negative). Both values are unbiased, but as a
    detached reward only k1 has the KL's expected policy gradient; k3's is that of KL(pi || ref) - KL(ref || pi) (GRPO
    puts k3 in the loss, where its expected gradient is that of KL(ref || pi): grpo.py). clamp: max(kl, 0), as
    AlpacaFarm does with k1."""
    log_ratio = ref_logprobs - logprobs
    kl = -log_ratio if estimator == "k1" else torch.expm1(log_ratio) - log_ratio
    return kl.clamp(min=0.0) if clamp else kl


def adaptive_kl_update(beta, kl, target, n_steps, horizon):
    """Ziegler et al. 2019: e = clip(KL / target - 1, -0.2, 0.2); beta <- beta * (1 + e * n_steps / horizon)."""
    error = min(max(kl / target - 1.0, -0.2), 0.2)
    return beta * (1.0 + error * n_steps / horizon)


def shape_rewards(kl, scores, mask, beta):
    """(rewards, non_score_rewards), each (B, T): r_t = -beta * kl_t on every response token, plus the score on the
    last response token, EOS included (TRL once put it one slot later, on padding), never on padding."""
    non_score = -beta * kl * mask
    rewards = non_score.clone()
    last = models.last_token_index(mask)  # the stop token when there is one, else the last sampled token
    rewards[torch.arange(len(scores)), last] += scores
    return rewards, non_score


def masked_mean(x, mask):
    return (x * mask).sum() / mask.sum()


def masked_whiten(x, mask, shift_mean=True, eps=1e-8):
    """(x - mean) / std over the valid tokens only (padding does not count); shift_mean=False keeps the mean
    (reward whitening in lm-human-preferences / AlpacaFarm). Padding positions are set to 0."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask) * mask.sum() / (mask.sum() - 1).clamp(min=1)  # unbiased
    white = (x - mean) * torch.rsqrt(var + eps)
    return (white if shift_mean else white + mean) * mask


def compute_gae(rewards, values, mask, gamma=1.0, lam=0.95):
    """(advantages, returns), each (B, T), over response tokens (Schulman et al. 2015):
    delta_t = r_t + gamma * V_{t+1} - V_t (V after the last valid token is 0), A_t = delta_t + gamma * lam * A_{t+1},
    returns = A + V. Padding holds r = V = 0, so it adds nothing and its advantage is 0."""
    rewards, values = rewards * mask, values * mask
    advantages = torch.zeros_like(rewards)
    next_adv = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):
        next_value = values[:, t + 1] if t + 1 < rewards.shape[1] else torch.zeros_like(next_adv)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        next_adv = (delta + gamma * lam * next_adv) * mask[:, t]
        advantages[:, t] = next_adv
    return advantages, advantages + values


def ppo_losses(logprobs, old_logprobs, advantages, vpred, old_values, returns, mask,
               cliprange=0.2, cliprange_value=0.2):
    """(policy_loss, value_loss, stats) of PPO (Schulman et al. 2017), means over valid tokens:
    policy: max(-A * ratio, -A * clip(ratio, 1 - eps, 1 + eps)) with ratio = exp(logp - logp_old);
    value: 0.5 * max((V - R)^2, (V_old + clip(V - V_old, -eps_v, eps_v) - R)^2)."""
    log_ratio = (logprobs - old_logprobs) * mask
    ratio = torch.exp(log_ratio)
    pg_losses = -advantages * ratio
    pg_losses2 = -advantages * ratio.clamp(1.0 - cliprange, 1.0 + cliprange)
    policy_loss = masked_mean(torch.maximum(pg_losses, pg_losses2), mask)
    vpred_clipped = old_values + (vpred - old_values).clamp(-cliprange_value, cliprange_value)
    vf_losses = torch.maximum((vpred - returns) ** 2, (vpred_clipped - returns) ** 2)
    value_loss = 0.5 * masked_mean(vf_losses, mask)
    with torch.no_grad():
        stats = {
            "ratio": masked_mean(ratio, mask).item(),
            "clipfrac": masked_mean((pg_losses2 > pg_losses).float(), mask).item(),
            "approxkl": masked_mean(0.5 * log_ratio**2, mask).item(),  # k2, the usual diagnostic
            "vf_clipfrac": masked_mean(((vpred - returns) ** 2 < (vpred_clipped - returns) ** 2).float(), mask).item(),
        }
    return policy_loss, value_loss, stats


def explained_variance(values, returns, mask):
    """1 - Var(returns - values) / Var(returns) over valid tokens: 1 is a perfect value function, <= 0 a useless one."""
    residual = returns - values
    var_residual = masked_mean((residual - masked_mean(residual, mask)) ** 2, mask)
    var_returns = masked_mean((returns - masked_mean(returns, mask)) ** 2, mask)
    return (1 - var_residual / (var_returns + 1e-8)).item()


def demonstration_nll(policy, demos, pad_id):
    """PPO-ptx (InstructGPT): mean -log pi(completion token) over demonstrations [(ids, completion_mask)]."""
    ids, attention_mask, completion_mask = data.collate(demos, pad_id, next(policy.parameters()).device)
    logits = policy(input_ids=ids, attention_mask=attention_mask).logits[:, :-1]
    logp = F.log_softmax(logits.float(), -1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    return -masked_mean(logp, completion_mask[:, 1:].float())


if __name__ == "__main__":
    args = tyro.cli(Args, description=__doc__)
    rank, world, device, dtype = runs.setup_distributed(args.cuda)  # first: the rollout is shared among the processes
    parallel.check(args.sharding, world, device)
    runs.check_args(
        args,
        positive=["num_eval_prompts", "total_episodes", "rollout_batch_size", "num_mini_batches", "num_ppo_epochs",
                  "learning_rate", "max_grad_norm", "response_length", "max_prompt_length", "temperature", "target_kl",
                  "kl_horizon", "cliprange", "cliprange_value", "log_samples_every"],
        non_negative=["missing_eos_penalty", "kl_coef", "vf_coef", "ptx_coef"],
        rules=[("gamma", 0 <= args.gamma <= 1, "in [0, 1]"), ("lam", 0 <= args.lam <= 1, "in [0, 1]"),
               ("total_episodes", args.total_episodes >= args.rollout_batch_size, "at least --rollout-batch-size"),
               ("rollout_batch_size", args.rollout_batch_size % world == 0, f"a multiple of the {world} process(es)"),
               ("rollout_batch_size", args.rollout_batch_size >= world * args.num_mini_batches,
                f"at least --num-mini-batches ({args.num_mini_batches}) per process")],
    )
    runs.seed_everything(args.seed, args.torch_deterministic)
    say = print if rank == 0 else runs.quiet
    autocast = torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else nullcontext()

    # Prompts (read and checked before any model loads): train prompts for rollouts, held-out ones for evaluation
    train_prompts, eval_prompts = data.load_prompts(args.dataset, args.dataset_config, args.dataset_train_split,
                                                    args.dataset_test_split, args.num_eval_prompts, rank == 0)
    task_prompts = all(task.is_task_prompt(p) for p in train_prompts + eval_prompts)  # responses with a gold reward
    if args.reward_model == "gold" and not task_prompts:
        raise SystemExit("--reward-model gold scores the embedded task's prompts only: "
                         "pass a reward model for other prompts")
    if args.ptx_coef > 0:  # PPO-ptx: demonstrations whose log-likelihood is added to the objective
        ptx_rows = task.make_sft(train_prompts, 1, args.seed) if args.ptx_dataset == "embedded" else \
            data.load_rows(args.ptx_dataset, "sft", verbose=rank == 0)[0]

    # Models: policy, frozen reference, reward, value; dropout off in all of them (N details); frozen weights in `dtype`
    scoring.check(args.reward_model)
    tokenizer = models.load_tokenizer(args.model, args.trust_remote_code)
    stop_ids = sampling.stop_token_ids(tokenizer, args.stop_token, args.model)
    policy = models.disable_dropout(models.load_causal_lm(args.model, torch.float32, args.trust_remote_code))
    models.fit_defaults(args, policy, tokenizer, (3e-4, 3e-6), {"max_prompt_length": (64, 512)}, say)
    # --use-peft: adapters on, the model's own weights frozen
    policy = models.prepare(policy, args.gradient_checkpointing, args.lora, dtype, device)
    # the starting policy: a frozen copy, or the policy with adapters off
    ref_policy = models.reference_of(policy, dtype)
    reward = scoring.load(args.reward_model, tokenizer, args.reward_label, device, args.trust_remote_code, dtype,
                          args.ensemble)
    say("scoring with " + scoring.describe(reward))
    if args.value_head_on_policy:  # lm-human-preferences: a scalar head on the policy's trunk, zero-initialized
        value_net = torch.nn.Linear(policy.config.get_text_config().hidden_size, 1).to(device)
        for p in value_net.parameters():
            torch.nn.init.zeros_(p)
    else:  # a separate network (Stiennon): from the reward model if it reads the policy's tokens, else from the policy
        from_rm = reward["kind"] == "decoder" and reward["same_vocab"] and reward["model"].config.num_labels == 1
        value_init = args.reward_model if from_rm else args.model
        value_model = models.load_reward_model(value_init, torch.float32, args.trust_remote_code)
        value_model = models.disable_dropout(value_model)  # --use-peft: adapters and head trained
        value_model = models.prepare(value_model, args.gradient_checkpointing, args.lora, dtype, device)
        say(f"value network initialized from {value_init}" + ("" if from_rm else " (fresh scalar head)"))
        value_net = models.PerTokenHead(value_model)  # one module: its forward is what DDP and FSDP wrap
    # DDP (gradients averaged over ranks in backward) or, with --fsdp, every model sharded in place (frozen ones too)
    train_policy = parallel.wrap(policy, args.sharding, world, dtype)
    value_net = parallel.wrap(value_net, args.sharding, world, dtype)
    frozen = [ref_policy] + scoring.models_of(reward)  # sharded in place with --fsdp, gathered with the policy
    for m in frozen:
        parallel.frozen(m, args.sharding, world, dtype)
    params = models.trainable(policy, value_net)
    optimizer = torch.optim.Adam(params, lr=args.learning_rate, eps=1e-5, fused=runs.fused_adam(device))
    torch.manual_seed(args.seed + rank)  # every process samples different responses

    def values_of(seq, mask, L, hidden=None):
        """(B, T) V(s_t) for the state before each response token (the hidden state at t - 1): the head of the
        separate value network, or the head on the policy's last hidden states."""
        if not args.value_head_on_policy:
            return value_net(seq, mask)[:, L - 1 : -1].float()
        if hidden is None:
            hidden = sampling.response_logprobs(train_policy, seq, mask, L, args.temperature, hidden=True)[2]
        return value_net(hidden).squeeze(-1).float()

    train_queries = data.encode_prompts(tokenizer, train_prompts, args.max_prompt_length, "train prompts", rank == 0)
    eval_queries = data.encode_prompts(tokenizer, eval_prompts, args.max_prompt_length, "eval prompts", rank == 0)
    if args.ptx_coef > 0:
        ptx_data = data.encode_demonstrations(tokenizer, ptx_rows, args.max_prompt_length + args.response_length,
                                              args.max_prompt_length, "ptx demonstrations", rank == 0)
    gen_config = sampling.generation_config(tokenizer, stop_ids, args.response_length, args.temperature)
    num_updates = args.total_episodes // args.rollout_batch_size
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda u: 1.0 - u / num_updates)  # linear decay to 0
    local_batch = args.rollout_batch_size // world  # this process's share of each rollout
    minibatch_size = local_batch // args.num_mini_batches

    def evaluate(episodes):
        """Samples on held-out prompts (common/sampling.py): means of score, sequence KL, gold; the first samples."""
        out = sampling.evaluate_policy(policy, ref_policy, tokenizer, reward, eval_prompts, eval_queries, gen_config,
                                       stop_ids, args.temperature, args.rollout_batch_size, task_prompts, autocast)
        runs.log_scalars(writer, {k: v for k, v in out.items() if k != "samples"}, episodes, prefix="eval/")
        return out

    sampling.sample_references(reward, policy, tokenizer, train_prompts + eval_prompts, train_queries + eval_queries,
                               gen_config, stop_ids, autocast)  # a pairwise judge's baseline responses
    run_name, writer = runs.make_run(args.exp_name, args.seed, args, rank)  # only now: a failed start leaves no run
    before = evaluate(0)  # step 0: the curves start at the base policy
    gold = f", gold {before['gold']:.3f}" if task_prompts else ""
    say(f"before training: eval score {before['score']:.3f}" + gold)
    rng = random.Random(args.seed)
    order, beta, episodes, start = [], args.kl_coef, 0, time.time()
    rm_counts = Counter()  # responses whose prompt was cut to fit the reward model's context
    clock, sampled_tokens = Counter(), 0  # seconds in each part of an update; tokens generated (for tokens/s)
    for update in tqdm(range(1, num_updates + 1), desc="ppo", disable=rank != 0):
        while len(order) < args.rollout_batch_size:  # reshuffled passes over the train prompts, as many as it takes
            order += rng.sample(range(len(train_prompts)), len(train_prompts))
        idx, order = order[: args.rollout_batch_size][rank::world], order[args.rollout_batch_size :]  # rank's share
        prompts, queries = [train_prompts[i] for i in idx], [train_queries[i] for i in idx]

        # 1. Rollout: sample, then log-probs of policy and reference, values, scores
        tic = time.time()
        with torch.no_grad(), autocast, parallel.gathered(policy, value_net, *frozen):
            r = sampling.rollout(policy, ref_policy, tokenizer, queries, gen_config, stop_ids, args.temperature)
            seq, mask, L, resp_mask = r["seq"], r["mask"], r["context_length"], r["resp_mask"]
            values = values_of(seq, mask, L) * resp_mask
            scores = scoring.score(reward, prompts, r["texts"], r["with_eos"], seq, mask, rm_counts).to(device)
        scores = scores - args.missing_eos_penalty * (~r["stopped"]).float()  # responses that never stopped
        clock["generation"] += r["generation_seconds"]
        clock["scoring"] += time.time() - tic - r["generation_seconds"]
        sampled_tokens += r["sampled_tokens"]

        # 2. Rewards and advantages: per-token KL penalty, the score on the last token, GAE
        kl = per_token_kl(r["logprobs"], r["ref_logprobs"], args.kl_estimator, args.kl_clamp) * resp_mask
        rewards, non_score = shape_rewards(kl, scores, resp_mask, beta)
        if args.whiten_rewards:
            rewards = masked_whiten(rewards, resp_mask, shift_mean=False)
        advantages, returns = compute_gae(rewards, values, resp_mask, args.gamma, args.lam)
        advantages = masked_whiten(advantages, resp_mask)  # advantages whitened over valid tokens only

        # 3. PPO epochs over the rollout in minibatches
        tic = time.time()
        stats = defaultdict(list)
        for epoch in range(args.num_ppo_epochs):
            for mb in torch.randperm(local_batch)[: minibatch_size * args.num_mini_batches].split(minibatch_size):
                optimizer.zero_grad()  # before the forward: the last step's gradients are freed before activations grow
                with autocast:
                    logprobs, entropy, hidden = sampling.response_logprobs(
                        train_policy, seq[mb], mask[mb], L, args.temperature, hidden=args.value_head_on_policy)
                    vpred = values_of(seq[mb], mask[mb], L, hidden)
                    pg_loss, vf_loss, s = ppo_losses(logprobs, r["logprobs"][mb], advantages[mb], vpred, values[mb],
                                                     returns[mb], resp_mask[mb], args.cliprange, args.cliprange_value)
                    loss = pg_loss + args.vf_coef * vf_loss
                    if args.ptx_coef > 0:  # PPO-ptx: objective + gamma * log pi(demonstration)
                        demos = rng.sample(ptx_data, minibatch_size)
                        ptx_nll = demonstration_nll(train_policy, demos, tokenizer.pad_token_id)
                        loss = loss + args.ptx_coef * ptx_nll
                        s["ptx"] = ptx_nll.item()
                loss.backward()  # DDP: the gradients averaged over processes here; FSDP: reduce-scattered
                torch.nn.utils.clip_grad_norm_(params, args.max_grad_norm)
                optimizer.step()
                s |= {"pg_loss": pg_loss.item(), "vf_loss": vf_loss.item(),
                      "entropy": masked_mean(entropy, resp_mask[mb]).item()}
                for k, v in s.items():
                    stats[k].append(v)
        clock["update"] += time.time() - tic

        # 4. Logging (names as in TRL / lm-human-preference-details), then the adaptive KL coefficient
        episodes += args.rollout_batch_size
        avg = {k: sum(v) / len(v) for k, v in stats.items()}
        scalars = {
            "objective/scores": scores.mean().item(), "objective/kl": kl.sum(1).mean().item(),
            "objective/kl_coef": beta,
            "objective/entropy": (-r["logprobs"] * resp_mask).sum(1).mean().item(),  # sampled sequence entropy
            "objective/non_score_reward": non_score.sum(1).mean().item(),
            "objective/rlhf_reward": (scores + non_score.sum(1)).mean().item(),
            "policy/approxkl_avg": avg["approxkl"], "policy/clipfrac_avg": avg["clipfrac"],
            "policy/entropy_avg": avg["entropy"],
            "loss/policy_avg": avg["pg_loss"], "loss/value_avg": avg["vf_loss"], "val/clipfrac_avg": avg["vf_clipfrac"],
            "val/ratio": avg["ratio"], "val/explained_variance": explained_variance(values, returns, resp_mask),
            "val/num_eos_tokens": r["stopped"].sum().item() * world,  # a count: x world, since averaged below
            "val/response_length": resp_mask.sum(1).mean().item(),
            "charts/learning_rate": scheduler.get_last_lr()[0], "charts/SPS": episodes / (time.time() - start),
            "charts/generated_tokens_per_second": sampled_tokens / clock["generation"],
        }
        if task_prompts:  # the gold reward that the score stands in for
            gold = torch.tensor([task.gold_reward(p, t) for p, t in zip(prompts, r["texts"])])
            scalars["objective/gold"] = gold.mean().item()
            if reward["kind"] != "gold":  # rising: the policy finds the reward model's errors (seed 000)
                scalars["objective/alignment_gap"] = (scores.cpu() - gold).mean().item()
        if "ptx" in avg:
            scalars["loss/ptx_avg"] = avg["ptx"]
        scalars |= reward.get("stats", {})  # an ensemble: its members' mean, min and spread on this rollout
        scalars = runs.reduce_mean(scalars)  # averaged over processes (equal shares): beta moves alike everywhere
        runs.log_scalars(writer, scalars, episodes)
        scheduler.step()  # the learning rate decays linearly to 0 over the updates
        if args.target_kl is not None:
            beta = adaptive_kl_update(beta, scalars["objective/kl"], args.target_kl, args.rollout_batch_size,
                                      args.kl_horizon)
        if update % args.log_samples_every == 0 or update == num_updates:
            tic = time.time()
            after = evaluate(episodes)
            rows = "\n".join(f"|{p}|{t}|{s:.2f}|" for p, t, s in after["samples"])
            writer.add_text("samples", f"|prompt|response|score|\n|-|-|-|\n{rows}", episodes)
            clock["evaluation"] += time.time() - tic

    cut_for_rm = runs.sum_over_ranks([rm_counts["truncated for the reward model"]])[0]  # counted on every process
    if world > 1 and not args.sharding.fsdp:  # the copies must have stayed identical (same gradients, same steps)
        say(f"weights identical on the {world} processes: {runs.identical_on_all_ranks(params)}")
    policy = parallel.plain(policy, rank)  # --fsdp: the whole policy gathered to rank 0
    if rank == 0:  # rank 0 alone saves and reports
        for p, t, s in after["samples"][:4]:
            print(f"  {p} -> {t}  (score {s:.2f})")
        out_dir = models.save(policy, tokenizer, args.output_dir, run_name, args.lora.merge_lora)
        if cut_for_rm:
            print(f"{cut_for_rm:.0f} rollout sequences were cut at their start to fit the reward model")
        summary = "ppo_rlhf:"
        if task_prompts:
            summary += f" eval gold {before['gold']:.3f} -> {after['gold']:.3f} (best {task.BEST_GOLD}),"
        if reward["kind"] != "gold":
            summary += f" eval proxy score {before['score']:.3f} -> {after['score']:.3f},"
        print(f"time: generation {clock['generation']:.1f}s ({sampled_tokens / clock['generation']:.0f} tokens/s), "
              f"scoring (log-probs, values, reward) {clock['scoring']:.1f}s, update {clock['update']:.1f}s, "
              f"evaluation {clock['evaluation']:.1f}s")
        print(summary + f" KL to the reference {after['kl']:.2f} nats, {episodes} episodes in "
                        f"{time.time() - start:.0f}s on {world} process(es), saved to {out_dir}")
    runs.finish(writer)
