"""Sampling responses and reading their log-probs: PPO's rollouts, and the samples that SFT and DPO evaluate. Pure
sampling at a temperature with the KV cache, each response cut after its first stop token, and the log-probs of its
tokens recomputed in one forward pass exactly as the sampler saw them."""

import time

import torch.distributed as dist

import torch
import torch.nn.functional as F
from transformers import GenerationConfig

from common import data, judge, models, parallel, runs, scoring, task


def generate(model, **kwargs):
    """model.generate(**kwargs) without a false alarm of transformers: generate() drops an attention mask of all ones
    (prompts without padding) itself, then, once a finished row emits pad tokens, the model warns that a padded input
    came without a mask. Only that warning, only here."""
    with models.without_log("We strongly recommend passing in an `attention_mask`"):
        return model.generate(synced_gpus=False, **kwargs)  # --fsdp: each rank on its own (parallel.gathered)


def stop_token_ids(tokenizer, stop_token="", model_name=""):
    """The ids that end a response: EOS, and --stop-token when given: a token of the vocabulary, or a text that encodes
    to one token (not found by comparing with unk: GPT-2's unk is its EOS)."""
    if not stop_token:
        return [tokenizer.eos_token_id]
    vocab = tokenizer.get_vocab()
    ids = [vocab[stop_token]] if stop_token in vocab else tokenizer(stop_token, add_special_tokens=False).input_ids
    if len(ids) != 1:
        runs.stop(f"--stop-token {stop_token!r} is not one token of the tokenizer of {model_name} (it is {len(ids)})")
    return [tokenizer.eos_token_id] + ids


def generation_config(tokenizer, stop_ids, max_new_tokens, temperature):
    """Pure sampling at temperature with the KV cache: every other logits processor set to neutral explicitly, so a
    model's own generation_config.json (top-k, top-p, repetition penalty) cannot change what is sampled."""
    return GenerationConfig(do_sample=True, temperature=temperature, top_k=0, top_p=1.0, min_p=None, typical_p=1.0,
                            repetition_penalty=1.0, no_repeat_ngram_size=0, min_new_tokens=0,
                            max_new_tokens=max_new_tokens, eos_token_id=stop_ids, pad_token_id=tokenizer.pad_token_id,
                            suppress_tokens=None, begin_suppress_tokens=None)


def truncate_after_stop(responses, stop_ids, pad_id):
    """(responses, mask, stopped): keep each response up to and including its first stop token; after it, pad ids
    and mask 0. `stopped` says which responses ended with a stop token (the others ran out of length)."""
    is_stop = torch.isin(responses, torch.tensor(stop_ids, device=responses.device))
    stops_before = torch.cumsum(is_stop, dim=1) - is_stop.long()  # stop tokens strictly before position t
    mask = (stops_before == 0).long()
    return torch.where(mask.bool(), responses, pad_id), mask, is_stop.any(dim=1)


@torch.no_grad()
def sample_responses(model, tokenizer, queries, gen_config, stop_ids):
    """One response per query (lists of prompt ids, left-padded here), sampled with the KV cache and cut after its
    first stop token. A dict: seq and mask (B, P + T) of query and response, context_length P, resp_mask (B, T),
    stopped (ended with a stop token), with_eos (holds the EOS), texts (as sampled, a stop token such as "."
    included, special tokens left out), generation_seconds and sampled_tokens."""
    device = next(model.parameters()).device
    query = data.pad(queries, tokenizer.pad_token_id, side="left").to(device)
    query_mask = data.pad([[1] * len(q) for q in queries], 0, side="left").to(device)
    training = model.training
    model.eval()  # generate() with the KV cache: gradient checkpointing turns it off in training mode (no dropout)
    start = time.time()
    seq = generate(model, input_ids=query, attention_mask=query_mask, generation_config=gen_config)
    generation_seconds = time.time() - start
    model.train(training)
    context_length = query.shape[1]
    responses, resp_mask, stopped = truncate_after_stop(seq[:, context_length:], stop_ids, tokenizer.pad_token_id)
    texts = [tokenizer.decode(r[m.bool()], skip_special_tokens=True).strip() for r, m in zip(responses, resp_mask)]
    return dict(seq=torch.cat([query, responses], dim=1), mask=torch.cat([query_mask, resp_mask], dim=1),
                context_length=context_length, resp_mask=resp_mask.float(), stopped=stopped, texts=texts,
                with_eos=((responses == tokenizer.eos_token_id) & resp_mask.bool()).any(1),
                generation_seconds=generation_seconds, sampled_tokens=responses.numel())


def sample_completions(model, tokenizer, queries, max_new_tokens=64, temperature=1.0, batch_size=64):
    """The texts of one completion per query (lists of prompt ids), sampled in batches up to EOS (pure sampling)."""
    stop_ids = [tokenizer.eos_token_id]
    config = generation_config(tokenizer, stop_ids, max_new_tokens, temperature)
    texts = []
    for i in range(0, len(queries), batch_size):
        texts += sample_responses(model, tokenizer, queries[i : i + batch_size], config, stop_ids)["texts"]
    return texts


def response_logprobs(model, seq, mask, context_length, temperature, hidden=False):
    """(logprobs, entropy, last_hidden) of the response tokens seq[:, context_length:], each (B, T): the same code
    for policy, reference and old policy, logits / temperature (else KL and ratios are wrong), position ids
    from the attention mask (queries are left-padded)."""
    position_ids = models.position_ids_from_mask(mask)
    out = model(input_ids=seq, attention_mask=mask, position_ids=position_ids, output_hidden_states=hidden)
    logits = out.logits[:, context_length - 1 : -1].float() / temperature  # the logits at t - 1 predict token t
    logp_all = F.log_softmax(logits, dim=-1)
    logprobs = logp_all.gather(-1, seq[:, context_length:, None]).squeeze(-1)
    with torch.no_grad():
        entropy = -(logp_all.exp() * logp_all).sum(-1)
    return logprobs, entropy, out.hidden_states[-1][:, context_length - 1 : -1] if hidden else None


@torch.no_grad()
def rollout(policy, ref_policy, tokenizer, queries, gen_config, stop_ids, temperature):
    """Sample one response per query (lists of ids), cut after its first stop token, and read its tokens' log-probs
    under policy and reference at the sampling temperature."""
    r = sample_responses(policy, tokenizer, queries, gen_config, stop_ids)
    seq, mask, L = r["seq"], r["mask"], r["context_length"]
    r["logprobs"] = response_logprobs(policy, seq, mask, L, temperature)[0]
    r["ref_logprobs"] = response_logprobs(ref_policy, seq, mask, L, temperature)[0]
    return r


@torch.no_grad()
def evaluate_policy(policy, ref_policy, tokenizer, reward, prompts, queries, gen_config, stop_ids, temperature,
                    batch_size, with_gold, autocast):
    """Samples on held-out prompts, a share per process (perhaps none): the means over all processes of the score,
    the sequence KL to the reference (k1) and, with_gold, the gold reward; and "samples", this process's first 8
    (prompt, response, score)."""
    rank, world = runs.rank_and_world()
    prompts, queries = prompts[rank::world], queries[rank::world]
    scores, kls, texts = [], [], []
    with parallel.gathered(policy, ref_policy, *scoring.models_of(reward)):  # --fsdp: then each rank on its own
        for i in range(0, len(queries), batch_size):
            with autocast:
                r = rollout(policy, ref_policy, tokenizer, queries[i : i + batch_size], gen_config, stop_ids,
                            temperature)
                scores += scoring.score(reward, prompts[i : i + batch_size], r["texts"], r["with_eos"], r["seq"],
                                        r["mask"]).tolist()
            kls += ((r["logprobs"] - r["ref_logprobs"]) * r["resp_mask"]).sum(1).tolist()
            texts += r["texts"]
    means = {"score": scores, "kl": kls}
    if with_gold:
        means["gold"] = [task.gold_reward(p, t) for p, t in zip(prompts, texts)]
    return runs.global_means(means) | {"samples": list(zip(prompts[:8], texts[:8], scores[:8]))}


@torch.no_grad()
def sample_references(reward, policy, tokenizer, prompts, queries, gen_config, stop_ids, autocast, batch_size=64):
    """A pairwise generative judge scores each response against a reference response to the same prompt: the starting
    policy's, sampled once here for every distinct prompt (AlpacaFarm's and online DPO's judges compare with a fixed
    baseline). Each process samples its share; every process keeps them all. Nothing to do for any other reward."""
    if reward["kind"] != "generative" or reward["judge"]["mode"] != "pairwise":
        return
    rank, world = runs.rank_and_world()
    distinct = list({judge.prompt_key(p): q for p, q in zip(prompts, queries)}.items())  # (key, query ids)
    mine, texts, start = distinct[rank::world], [], time.time()
    with parallel.gathered(policy):
        for i in range(0, len(mine), batch_size):
            with autocast:
                part = [q for _, q in mine[i : i + batch_size]]
                texts += sample_responses(policy, tokenizer, part, gen_config, stop_ids)["texts"]
    shares = [[(key, t) for (key, _), t in zip(mine, texts)]]
    if world > 1:
        shares = [None] * world
        dist.all_gather_object(shares, [(key, t) for (key, _), t in zip(mine, texts)])
    reward["references"] = dict(pair for share in shares for pair in share)
    if rank == 0:
        print(f"{len(distinct)} reference responses for the pairwise judge, sampled from the starting policy in "
              f"{time.time() - start:.0f}s")
