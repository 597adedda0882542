r"""Critic-free RL from k samples per prompt: GRPO, Dr. GRPO and RLOO. No value network: each response's advantage
comes from the other responses to the same prompt.

Shao et al. 2024 (DeepSeekMath, GRPO: group-normalized advantages, KL to the reference as a k3 loss term),
Liu et al. 2025 (Dr. GRPO: no division by the group's std, no division by each response's length),
Ahmadian et al. 2024 ("Back to Basics", RLOO: the leave-one-out baseline, KL shaped into the reward),
Schulman et al. 2017 (the clipped ratio, when a rollout is reused for more than one step).
    python grpo.py                                       # GRPO on the embedded task's gold reward, bundled policy
    python grpo.py --advantage rloo                      # RLOO: leave-one-out baseline, KL in the reward
    python grpo.py --no-scale-rewards --loss-averaging constant   # Dr. GRPO
    python grpo.py --reward-model runs/rm_composite__1__.../model # any reward model ppo_rlhf.py takes
    torchrun --nproc_per_node 4 grpo.py --model gpt2 ...  # data parallel: each process samples 1/4 of the groups

--reward-model, --dataset, LoRA and the logged names are those of ppo_rlhf.py. An episode is one response.
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
    exp_name: str = "grpo"
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
    """'gold' (the embedded task's gold reward), a sequence classifier (rm_bt.py, rm_kwise.py, rm_composite.py output,
    a hub reward model), or file.py:fn (see common/scoring.py)"""
    reward_label: Optional[str] = None
    """the output to maximize of a classifier with several labels: a name from config.id2label or an index"""
    ensemble: tyro.conf.OmitArgPrefixes[scoring.EnsembleArgs] = field(default_factory=scoring.EnsembleArgs)
    """--reward-model an ensemble (rm_ensemble.py): --ensemble-aggregate mean|min|mean_minus_std, --uncertainty-coef"""
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

    advantage: Literal["grpo", "rloo"] = "grpo"
    """grpo: (R - group mean) / group std (Shao et al.); rloo: R - mean of the other k - 1 rewards (Ahmadian et al.)"""
    scale_rewards: bool = True
    """grpo: divide by the group's std; --no-scale-rewards drops it (Dr. GRPO: it favours groups of near-equal
    rewards, too easy or too hard prompts)"""
    num_generations: int = 8
    """k, responses sampled per prompt (a group); at least 2, there is no baseline otherwise"""
    kl_in: Optional[Literal["reward", "loss"]] = None
    """where the KL to the reference goes: 'reward' shapes the sequence reward R = score - beta * sum_t k1_t (RLOO,
    as ppo_rlhf.py); 'loss' adds beta * k3_t per token to the loss (GRPO); if not given: as the --advantage's paper"""
    kl_coef: Optional[float] = None
    """beta; if not given: 0.04 with the KL in the loss (DeepSeekMath), 0.05 in the reward (as ppo_rlhf.py)"""
    loss_averaging: Literal["sequence", "token", "constant"] = "sequence"
    """how per-token losses become one number: 'sequence' means over each response's tokens, then over responses
    (GRPO); 'token' one mean over all tokens of the minibatch (DAPO; under torchrun each process's, then averaged);
    'constant' their sum / (responses x --response-length) (Dr. GRPO: no length normalization)"""

    total_episodes: int = 16000
    """responses to train on in all (prompts x num_generations); updates = total_episodes // rollout_batch_size (the
    default takes the wall time of ppo_rlhf.py's 6400 episodes on 2 CPU cores: no value network to train)"""
    rollout_batch_size: int = 64
    """responses sampled per update, all processes together: rollout_batch_size / num_generations prompts"""
    num_mini_batches: int = 2
    """minibatches each rollout is split into (whole groups), per epoch"""
    num_ppo_epochs: int = 1
    """passes over each rollout; 1 with 1 minibatch is plain REINFORCE with a baseline (the ratio is always 1)"""
    learning_rate: Optional[float] = None
    """Adam learning rate, decayed linearly to 0; if not given: 3e-4 for a small model like the bundled one, 1e-6 for
    a pretrained one (TRL's GRPO)"""
    max_grad_norm: float = 1.0
    """gradient norm clipping"""
    cliprange: float = 0.2
    """PPO clip range of the policy ratio"""
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
    seed_per_group: bool = False
    """sample each group with its own seed (seed, update, group): the same samples on any number of processes, to
    compare runs across process counts (one generate call per group: slower)"""
    log_samples_every: int = 20
    """updates between tables of prompts, responses and scores in TensorBoard (and evaluations on the eval prompts)"""
    gradient_checkpointing: bool = False
    """recompute activations in the backward pass: less memory, about 30% slower"""
    lora: tyro.conf.OmitArgPrefixes[models.LoraArgs] = field(default_factory=models.LoraArgs)
    """LoRA: --use-peft, --lora-r, --lora-alpha, --lora-dropout, --lora-target-modules, --merge-lora (see LoraArgs)"""
    sharding: tyro.conf.OmitArgPrefixes[parallel.ParallelArgs] = field(default_factory=parallel.ParallelArgs)
    """under torchrun: --fsdp, --fsdp-cpu-offload (see common/parallel.py); DDP without them"""


# ---------------------------------------------------------------- the math (pure functions, tests/test_grpo.py)

def grpo_advantages(rewards, k, scale=True, eps=1e-4):
    """(B,) advantages of B = groups x k rewards, each group's k consecutive: A_i = (R_i - mean(R)) / (std(R) + eps)
    over its group (Shao et al. 2024; std with Bessel's correction, as TRL); scale=False: A_i = R_i - mean(R)
    (Liu et al. 2025, Dr. GRPO). A group of equal rewards gets 0 (eps keeps the division finite)."""
    groups = rewards.view(-1, k)
    centered = groups - groups.mean(1, keepdim=True)
    if scale:
        centered = centered / (groups.std(1, keepdim=True) + eps)
    return centered.flatten()


def rloo_advantages(rewards, k):
    """(B,) A_i = R_i - (1 / (k - 1)) sum_{j != i} R_j within each group of k (Ahmadian et al. 2024, the
    leave-one-out baseline: unbiased, since R_i never enters its own baseline). Equal to k / (k - 1) (R_i - mean)."""
    groups = rewards.view(-1, k)
    others_mean = (groups.sum(1, keepdim=True) - groups) / (k - 1)
    return (groups - others_mean).flatten()


def k3_kl(logprobs, ref_logprobs):
    """(B, T) k3 = exp(ref - logp) - (ref - logp) - 1 per token (Schulman's note; GRPO's KL term): never negative,
    with its gradient kept. Sampled from pi, its expected gradient is that of KL(ref || pi) (tests/test_grpo.py)."""
    log_ratio = ref_logprobs - logprobs
    return torch.expm1(log_ratio) - log_ratio


def average_tokens(per_token, mask, how, max_length):
    """One number from (B, T) per-token losses over valid tokens: 'sequence' mean over each response, then over
    responses (GRPO); 'token' sum / number of tokens (DAPO); 'constant' sum / (B x max_length) (Dr. GRPO)."""
    total = (per_token * mask).sum(1)
    if how == "sequence":
        return (total / mask.sum(1).clamp(min=1)).mean()
    if how == "token":
        return total.sum() / mask.sum().clamp(min=1)
    return total.sum() / (mask.shape[0] * max_length)


def policy_loss(logprobs, old_logprobs, advantages, mask, cliprange, how, max_length):
    """(loss, stats): PPO's clipped objective max(-A ratio, -A clip(ratio, 1 - eps, 1 + eps)) per token, averaged as
    `how` says (Schulman et al. 2017; GRPO uses it with the sequence's advantage on every token)."""
    ratio = torch.exp(logprobs - old_logprobs)  # (B, T)
    pg1 = -advantages[:, None] * ratio  # the sequence's advantage on each of its tokens
    pg2 = -advantages[:, None] * ratio.clamp(1.0 - cliprange, 1.0 + cliprange)
    loss = average_tokens(torch.maximum(pg1, pg2), mask, how, max_length)
    with torch.no_grad():
        valid = mask.sum().clamp(min=1)
        log_ratio = (logprobs - old_logprobs) * mask
        stats = {"clipfrac": ((pg2 > pg1).float() * mask).sum().item() / valid.item(),
                 "approxkl": (0.5 * log_ratio**2).sum().item() / valid.item()}
    return loss, stats


def merge_rollouts(parts, pad_id):
    """One rollout from several sampled separately (sampling.rollout dicts): queries left-padded and responses
    right-padded to the longest of all, masks 0 on the new padding (position ids come from the mask)."""
    P = max(r["context_length"] for r in parts)
    T = max(r["resp_mask"].shape[1] for r in parts)
    out = defaultdict(list)
    for r in parts:
        L, t = r["context_length"], r["resp_mask"].shape[1]
        right = (0, T - t)

        def both(x, value):  # (B, L + t) -> (B, P + T): query padded on the left, response on the right
            return torch.cat([F.pad(x[:, :L], (P - L, 0), value=value), F.pad(x[:, L:], right, value=value)], 1)

        out["seq"].append(both(r["seq"], pad_id))
        out["mask"].append(both(r["mask"], 0))
        for key in ("resp_mask", "logprobs", "ref_logprobs"):
            out[key].append(F.pad(r[key], right, value=0.0))
        for key in ("stopped", "with_eos", "texts"):
            out[key].append(r[key])
    merged = {k: torch.cat(v) for k, v in out.items() if k != "texts"}
    return merged | {"texts": sum(out["texts"], []), "context_length": P,
                     "generation_seconds": sum(r["generation_seconds"] for r in parts),
                     "sampled_tokens": sum(r["sampled_tokens"] for r in parts)}


if __name__ == "__main__":
    args = tyro.cli(Args, description=__doc__)
    rank, world, device, dtype = runs.setup_distributed(args.cuda)  # first: the groups are shared among processes
    parallel.check(args.sharding, world, device)
    k = max(args.num_generations, 1)  # checked just below; 1 here keeps the other rules' arithmetic defined
    runs.check_args(
        args,
        positive=["num_eval_prompts", "total_episodes", "rollout_batch_size", "num_mini_batches", "num_ppo_epochs",
                  "learning_rate", "max_grad_norm", "response_length", "max_prompt_length", "temperature",
                  "cliprange", "log_samples_every"],
        non_negative=["missing_eos_penalty", "kl_coef"],
        rules=[("num_generations", args.num_generations >= 2, "at least 2 (a group of one response has no baseline)"),
               ("rollout_batch_size", args.rollout_batch_size % (k * world) == 0,
                f"a multiple of --num-generations x processes ({k} x {world}): whole groups on each process"),
               ("rollout_batch_size", args.rollout_batch_size >= k * world * args.num_mini_batches,
                f"at least --num-mini-batches ({args.num_mini_batches}) groups of {k} per process"),
               ("total_episodes", args.total_episodes >= args.rollout_batch_size, "at least --rollout-batch-size")],
    )
    kl_in = args.kl_in or ("loss" if args.advantage == "grpo" else "reward")  # as each paper has it
    beta = args.kl_coef if args.kl_coef is not None else (0.04 if kl_in == "loss" else 0.05)
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

    # Models: policy, frozen reference, reward; no value network. Dropout off (log-probs must match the sampler's)
    scoring.check(args.reward_model)
    tokenizer = models.load_tokenizer(args.model, args.trust_remote_code)
    stop_ids = sampling.stop_token_ids(tokenizer, args.stop_token, args.model)
    policy = models.disable_dropout(models.load_causal_lm(args.model, torch.float32, args.trust_remote_code))
    models.fit_defaults(args, policy, tokenizer, (3e-4, 1e-6), {"max_prompt_length": (64, 512)}, say)
    policy = models.prepare(policy, args.gradient_checkpointing, args.lora, dtype, device)  # --use-peft: adapters
    ref_policy = models.reference_of(policy, dtype)  # a frozen copy, or the policy with adapters off
    reward = scoring.load(args.reward_model, tokenizer, args.reward_label, device, args.trust_remote_code, dtype,
                          args.ensemble)
    say(f"scoring with {scoring.describe(reward)}; advantage {args.advantage}"
        + (" (std-scaled)" if args.advantage == "grpo" and args.scale_rewards else "")
        + f", KL in the {kl_in} (beta {beta}), {args.loss_averaging} averaging, {k} responses per prompt")
    # DDP (gradients averaged over ranks in backward) or, with --fsdp, every model sharded in place (frozen ones too)
    train_policy = parallel.wrap(policy, args.sharding, world, dtype)
    frozen = [ref_policy] + scoring.models_of(reward)  # gathered with the policy for rollouts
    for m in frozen:
        parallel.frozen(m, args.sharding, world, dtype)
    params = models.trainable(policy)
    optimizer = torch.optim.Adam(params, lr=args.learning_rate, eps=1e-5, fused=runs.fused_adam(device))
    torch.manual_seed(args.seed + rank)  # every process samples different responses

    train_queries = data.encode_prompts(tokenizer, train_prompts, args.max_prompt_length, "train prompts", rank == 0)
    eval_queries = data.encode_prompts(tokenizer, eval_prompts, args.max_prompt_length, "eval prompts", rank == 0)
    gen_config = sampling.generation_config(tokenizer, stop_ids, args.response_length, args.temperature)
    num_updates = args.total_episodes // args.rollout_batch_size
    groups_per_rollout = args.rollout_batch_size // k  # prompts per update, all processes together
    local_groups = groups_per_rollout // world
    groups_per_minibatch = local_groups // args.num_mini_batches

    def evaluate(episodes):
        """One sample per held-out prompt (common/sampling.py): means of score, sequence KL, gold; the first samples."""
        out = sampling.evaluate_policy(policy, ref_policy, tokenizer, reward, eval_prompts, eval_queries, gen_config,
                                       stop_ids, args.temperature, args.rollout_batch_size, task_prompts, autocast)
        runs.log_scalars(writer, {k: v for k, v in out.items() if k != "samples"}, episodes, prefix="eval/")
        return out

    def sample(queries, update, first_group):
        """Responses to the queries (each k times in a row), with the log-probs of policy and reference."""
        if not args.seed_per_group:
            return sampling.rollout(policy, ref_policy, tokenizer, queries, gen_config, stop_ids, args.temperature)
        parts = []
        for g in range(0, len(queries), k):
            torch.manual_seed(hash((args.seed, update, first_group + g // k)) % 2**62)  # ints hash alike everywhere
            parts.append(sampling.rollout(policy, ref_policy, tokenizer, queries[g : g + k], gen_config, stop_ids,
                                          args.temperature))
        return merge_rollouts(parts, tokenizer.pad_token_id)

    sampling.sample_references(reward, policy, tokenizer, train_prompts + eval_prompts, train_queries + eval_queries,
                               gen_config, stop_ids, autocast)  # a pairwise judge's baseline responses
    run_name, writer = runs.make_run(args.exp_name, args.seed, args, rank)  # only now: a failed start leaves no run
    before = evaluate(0)  # step 0: the curves start at the base policy
    say(f"before training: eval score {before['score']:.3f}" + (f", gold {before['gold']:.3f}" if task_prompts else ""))
    rng = random.Random(args.seed)
    order, episodes, start = [], 0, time.time()
    rm_counts, clock, sampled_tokens = Counter(), Counter(), 0
    for update in tqdm(range(1, num_updates + 1), desc=args.advantage, disable=rank != 0):
        lr = args.learning_rate * (1.0 - (update - 1) / num_updates)  # linear LR decay
        for group in optimizer.param_groups:
            group["lr"] = lr
        while len(order) < groups_per_rollout:  # reshuffled passes over the train prompts, as many as it takes
            order += rng.sample(range(len(train_prompts)), len(train_prompts))
        # this process's groups of the next rollout: contiguous, so that group g is the same prompt on any world size
        idx = order[:groups_per_rollout][rank * local_groups : (rank + 1) * local_groups]
        order = order[groups_per_rollout:]
        prompts = [train_prompts[i] for i in idx for _ in range(k)]  # each prompt k times in a row: a group

        # 1. Rollout: k responses per prompt, log-probs of policy and reference, scores
        tic = time.time()
        with torch.no_grad(), autocast, parallel.gathered(policy, *frozen):
            r = sample([train_queries[i] for i in idx for _ in range(k)], update, rank * local_groups)
            seq, mask, L, resp_mask = r["seq"], r["mask"], r["context_length"], r["resp_mask"]
            scores = scoring.score(reward, prompts, r["texts"], r["with_eos"], seq, mask, rm_counts).to(device)
        scores = scores - args.missing_eos_penalty * (~r["stopped"]).float()  # responses that never stopped
        clock["generation"] += r["generation_seconds"]
        clock["scoring"] += time.time() - tic - r["generation_seconds"]
        sampled_tokens += r["sampled_tokens"]

        # 2. Sequence rewards and advantages within each group; no critic, no GAE: every token gets its sequence's A
        kl = (r["logprobs"] - r["ref_logprobs"]) * resp_mask  # k1 per token, for the reward and the logs
        non_score = -beta * kl.sum(1) if kl_in == "reward" else torch.zeros_like(scores)
        rewards = scores + non_score  # RLOO: R = score - beta * KL(sequence), as ppo_rlhf.py shapes it
        if args.advantage == "grpo":
            advantages = grpo_advantages(rewards, k, args.scale_rewards)
        else:
            advantages = rloo_advantages(rewards, k)

        # 3. Policy updates over the rollout in minibatches of whole groups (the old log-probs are the sampler's)
        tic = time.time()
        stats = defaultdict(list)
        for epoch in range(args.num_ppo_epochs):
            for groups in torch.randperm(local_groups)[: groups_per_minibatch * args.num_mini_batches].split(
                    groups_per_minibatch):
                mb = (groups[:, None] * k + torch.arange(k)).flatten()  # the responses of these groups
                optimizer.zero_grad()
                with autocast:
                    logprobs, entropy, _ = sampling.response_logprobs(train_policy, seq[mb], mask[mb], L,
                                                                      args.temperature)
                    loss, s = policy_loss(logprobs, r["logprobs"][mb], advantages[mb], resp_mask[mb], args.cliprange,
                                          args.loss_averaging, args.response_length)
                    s["pg_loss"] = loss.item()
                    if kl_in == "loss":  # GRPO: + beta * k3 per token, averaged as the policy loss
                        kl_loss = average_tokens(k3_kl(logprobs, r["ref_logprobs"][mb]), resp_mask[mb],
                                                 args.loss_averaging, args.response_length)
                        loss = loss + beta * kl_loss
                        s["kl_loss"] = kl_loss.item()
                loss.backward()  # DDP: the gradients averaged over processes here; FSDP: reduce-scattered
                torch.nn.utils.clip_grad_norm_(params, args.max_grad_norm)
                optimizer.step()
                s["entropy"] = ((entropy * resp_mask[mb]).sum() / resp_mask[mb].sum()).item()
                for name, v in s.items():
                    stats[name].append(v)
        clock["update"] += time.time() - tic

        # 4. Logging (the names of ppo_rlhf.py and TRL)
        episodes += args.rollout_batch_size
        avg = {name: sum(v) / len(v) for name, v in stats.items()}
        group_std = scores.view(-1, k).std(1)
        scalars = {
            "objective/scores": scores.mean().item(), "objective/kl": kl.sum(1).mean().item(),
            "objective/kl_coef": beta, "objective/entropy": (-r["logprobs"] * resp_mask).sum(1).mean().item(),
            "objective/non_score_reward": non_score.mean().item(), "objective/rlhf_reward": rewards.mean().item(),
            "objective/scores_std_in_group": group_std.mean().item(),
            "objective/frac_groups_equal_scores": (group_std < 1e-6).float().mean().item(),  # no signal from them
            "policy/approxkl_avg": avg["approxkl"], "policy/clipfrac_avg": avg["clipfrac"],
            "policy/entropy_avg": avg["entropy"], "loss/policy_avg": avg["pg_loss"],
            "val/num_eos_tokens": r["stopped"].sum().item() * world,  # a count: x world, since averaged below
            "val/response_length": resp_mask.sum(1).mean().item(),
            "charts/learning_rate": lr, "charts/SPS": episodes / (time.time() - start),
            "charts/generated_tokens_per_second": sampled_tokens / clock["generation"],
        }
        if "kl_loss" in avg:
            scalars["loss/kl_avg"] = avg["kl_loss"]
        if task_prompts:  # the gold reward that the score stands in for
            gold = torch.tensor([task.gold_reward(p, t) for p, t in zip(prompts, r["texts"])])
            scalars["objective/gold"] = gold.mean().item()
            if reward["kind"] != "gold":  # rising: the policy finds the reward model's errors (seed 000)
                scalars["objective/alignment_gap"] = (scores.cpu() - gold).mean().item()
        scalars |= reward.get("stats", {})  # an ensemble: its members' mean, min and spread on this rollout
        runs.log_scalars(writer, runs.reduce_mean(scalars), episodes)  # averaged over processes (equal shares)
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
        summary = f"grpo ({args.advantage}):"
        if task_prompts:
            summary += f" eval gold {before['gold']:.3f} -> {after['gold']:.3f} (best {task.BEST_GOLD}),"
        if reward["kind"] != "gold":
            summary += f" eval proxy score {before['score']:.3f} -> {after['score']:.3f},"
        print(f"time: generation {clock['generation']:.1f}s ({sampled_tokens / clock['generation']:.0f} tokens/s), "
              f"scoring (log-probs, reward) {clock['scoring']:.1f}s, update {clock['update']:.1f}s, "
              f"evaluation {clock['evaluation']:.1f}s")
        print(summary + f" KL to the reference {after['kl']:.2f} nats, {episodes} episodes ({episodes // k} prompts x "
                        f"{k}) in {time.time() - start:.0f}s on {world} process(es), saved to {out_dir}")
    runs.finish(writer)
