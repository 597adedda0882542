"""Multi-attribute reward model: one head per attribute, combined into one composite score (ArmoRM, Wang et al. 2024).

Stage 1 regresses one output per attribute on absolute ratings (HelpSteer2's 0-4 ratings of helpfulness,
correctness, ...), all on one backbone; stage 2 freezes it and fits the composite, a weighted sum of the
attributes, with the Bradley-Terry loss on preference pairs:
    stage 1:  loss = mean over rated (response, attribute) of (f_a(x, y) - rating_a)^2  (missing ratings masked)
    stage 2:  loss = -log sigmoid(w . (f(x, y_w) - f(x, y_l)))                         (w: one weight per attribute)
Each attribute gets a signal of its own: a nuanced one (is the number right?) that pairs teach slowly, because it is
one of five reasons a response wins, is learned from its own ratings. ArmoRM's weights come from a gate conditioned
on the prompt; on the embedded task every prompt weighs the attributes alike, so one set of weights is fitted.
    python rm_composite.py                                    # embedded task: the labeler rates each response
    python rm_composite.py --rating-noise 1.0                 # noisier ratings
    python rm_composite.py --model gpt2 --dataset nvidia/HelpSteer2                 # stage 2 on pairs from the ratings
    python rm_composite.py --model gpt2 --dataset openbmb/UltraFeedback --preference-dataset pairs.jsonl
The saved model loads with AutoModelForSequenceClassification: output 0 is the composite ("composite", what
ppo_rlhf.py --reward-model DIR optimizes by default), outputs 1.. the attributes (--reward-label truthful). Its config
holds one normalization per output, reward_mean / reward_std lists: on the embedded task each output is calibrated
affinely to its gold counterpart (the composite to gold, an attribute to its gold component), elsewhere centred on
the rated responses.
"""

import itertools
import json
import random
import time
from collections import Counter, defaultdict
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn.functional as F
import tyro
from tqdm import tqdm

from common import data, models, parallel, runs, task


@dataclass
class Args:
    exp_name: str = "rm_composite"
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
    """the model to start from (the SFT model): a hub name or local path; it gets a fresh head, one output per
    attribute"""
    dataset: str = "embedded"
    """'embedded' (the task's pairs, each response rated by the labeler), or rated responses: a .jsonl/.json file or
    dataset of {"prompt", "response", <attribute>: number, ...} (nvidia/HelpSteer2's layout) or openbmb/UltraFeedback"""
    dataset_config: Optional[str] = None
    """the dataset's configuration (subset), where it has several"""
    dataset_train_split: str = "train"
    """the split to train on"""
    dataset_test_split: Optional[str] = None
    """the split to evaluate on; if not given: test, else validation, else 5% of the prompts held out"""
    preference_dataset: Optional[str] = None
    """stage 2's pairs for a dataset of ratings: a pairwise file or dataset; if not given, pairs derived from the
    ratings: the responses to one prompt, the one with the higher --preference-attribute rating chosen"""
    preference_attribute: str = "helpfulness"
    """the rating that orders the derived pairs (HelpSteer2 and UltraFeedback both have helpfulness)"""
    pairs_per_prompt: int = 16
    """embedded task only: training pairs per train prompt, as rm_bt.py; each of their responses is also rated"""
    num_train_prompts: Optional[int] = None
    """embedded task only: use the first N train prompts (None: all 1566)"""
    eval_pairs_per_prompt: int = 8
    """embedded task only: held-out pairs per eval prompt (the same pairs as rm_bt.py's)"""
    labelers: tyro.conf.OmitArgPrefixes[task.LabelerArgs] = field(default_factory=task.LabelerArgs)
    """embedded task only: who labels the pairs: --labeler-temperature, --flip-rate, --length-bias, --num-labelers,
    --outlier-labelers, --tie-threshold (see task.LabelerArgs)"""
    rating_noise: float = 0.5
    """embedded task only: std of the Gaussian noise on each 0-4 rating before it is rounded (task.rate)"""
    calibration_size: int = 1024
    """embedded task only: generator responses on train prompts with their gold reward, on which the scores are
    calibrated to gold (the alignment gap; the saved normalization); 0: no calibration"""
    output_dir: str = ""
    """where to save the reward model and tokenizer; '' saves to runs/<run_name>/model"""
    num_epochs: int = 2
    """stage 1: passes over the rated responses"""
    per_device_batch_size: int = 32
    """stage 1: responses per forward pass on each device"""
    gradient_checkpointing: bool = False
    """recompute activations in the backward pass: less memory for larger models, about 30% slower"""
    lora: tyro.conf.OmitArgPrefixes[models.LoraArgs] = field(default_factory=models.LoraArgs)
    """LoRA: --use-peft, --lora-r, ... (see LoraArgs); the composite head is built on the merged model"""
    sharding: tyro.conf.OmitArgPrefixes[parallel.ParallelArgs] = field(default_factory=parallel.ParallelArgs)
    """under torchrun: --fsdp, --fsdp-cpu-offload (see common/parallel.py); DDP without them"""
    learning_rate: Optional[float] = None
    """stage 1's peak learning rate, linear warmup then cosine decay to 0; if not given: 3e-4 for a small model like
    the bundled one (1e-3 learns correctness later, 1.5e-4 not at all: experiments/README.md), 1e-5 for a pretrained
    one"""
    weight_decay: float = 0.0
    """AdamW weight decay in stage 1"""
    warmup_ratio: float = 0.05
    """fraction of stage 1's steps with linear warmup"""
    max_length: Optional[int] = None
    """longest prompt + response in tokens (truncated, counted); if not given: 96 small model, 1024 pretrained"""
    max_prompt_length: Optional[int] = None
    """longest prompt in tokens, its end kept; if not given: 32 for a small model, 512 for a pretrained one"""
    eval_every: int = 1000
    """stage 1 optimizer steps between evaluations (each fits the composite anew)"""
    stage2_pairs: int = 4096
    """stage 2: train pairs the composite is fitted on (A weights need few; each pair costs a forward pass); 0: all"""


# ---------------------------------------------------------------- the math (pure functions, tests/test_rm_composite.py)

def attribute_regression_loss(pred, target, known):
    """Stage 1 (ArmoRM's multi-objective regression): the mean squared error over the (response, attribute) cells
    that have a rating; pred, target, known (B, A), known 1 where the rating exists (UltraFeedback's "N/A": 0)."""
    known = known.float()
    return ((pred - target) ** 2 * known).sum() / known.sum().clamp(min=1)


def composite_bt_loss(weights, f_chosen, f_rejected):
    """Stage 2: -log sigmoid(w . (f(y_w) - f(y_l))) averaged over pairs (Bradley-Terry on the composite, ArmoRM's
    second stage with one gate for all prompts); weights (A,), f (B, A) the frozen attribute scores."""
    return -F.logsigmoid((f_chosen - f_rejected) @ weights).mean()


def fit_composite(f_chosen, f_rejected, steps=200):
    """(A,) weights that minimize composite_bt_loss: a convex problem (logistic regression on the differences,
    without intercept), solved with L-BFGS from w = 0."""
    w = torch.zeros(f_chosen.shape[1], dtype=torch.float64, requires_grad=True)
    fc, fr = f_chosen.double(), f_rejected.double()
    opt = torch.optim.LBFGS([w], max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = composite_bt_loss(w, fc, fr)
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach().float()


def derived_pairs(rows, attribute):
    """Pairs {"prompt", "chosen", "rejected"} from rated responses: every two responses to one prompt whose
    `attribute` ratings differ (both known), the higher one chosen (how HelpSteer2's ratings become preferences)."""
    by_prompt = defaultdict(list)
    for r in rows:
        if r["ratings"].get(attribute) is not None:
            by_prompt[json.dumps(r["prompt"], sort_keys=True)].append(r)
    pairs = []
    for group in by_prompt.values():
        for a, b in itertools.combinations(group, 2):
            if a["ratings"][attribute] != b["ratings"][attribute]:
                hi, lo = (a, b) if a["ratings"][attribute] > b["ratings"][attribute] else (b, a)
                pairs.append({"prompt": a["prompt"], "chosen": hi["response"], "rejected": lo["response"]})
    return pairs


def attribute_scores(model, seqs, pad_id, device, chunk=256):
    """(N, A) every head at the last real token of each token-id list; model: the reward model, or
    models.PerTokenHead(model, slice(None)), possibly in DDP or sharded."""
    heads_of = models.PerTokenHead(model, slice(None)) if hasattr(model, "score") else model
    out = []
    for i in range(0, len(seqs), chunk):
        ids = data.pad(seqs[i : i + chunk], pad_id).to(device)
        mask = data.pad([[1] * len(s) for s in seqs[i : i + chunk]], 0).to(device)
        heads = heads_of(ids, mask)  # (b, T, A)
        out.append(heads[torch.arange(len(ids)), models.last_token_index(mask)].float())
    return torch.cat(out)


def composite_head(model, weights, attributes):
    """The model with a head of 1 + A outputs: output 0 the composite w . f (a linear map of the same hidden state,
    so its row is w @ W), then the A attribute heads; it loads with AutoModelForSequenceClassification as it is."""
    old = model.score.weight.data  # (A, H)
    head = torch.nn.Linear(old.shape[1], old.shape[0] + 1, bias=False)
    head.weight.data = torch.cat([(weights.to(old) @ old)[None], old]).clone()
    model.score = head
    labels = ["composite", *attributes]
    model.config.num_labels = len(labels)
    model.config.id2label = dict(enumerate(labels))
    model.config.label2id = {n: i for i, n in enumerate(labels)}
    return model


if __name__ == "__main__":
    args = tyro.cli(Args, description=__doc__)
    runs.check_args(
        args,
        positive=["pairs_per_prompt", "num_train_prompts", "eval_pairs_per_prompt", "num_epochs",
                  "per_device_batch_size", "learning_rate", "max_length", "max_prompt_length", "eval_every"],
        non_negative=["rating_noise", "calibration_size", "weight_decay", "stage2_pairs"],
        rules=[("warmup_ratio", 0 <= args.warmup_ratio < 1, "in [0, 1)"), runs.prompt_length_rule(args)],
    )
    rank, world, device, dtype = runs.setup_distributed(args.cuda)
    parallel.check(args.sharding, world, device)
    runs.seed_everything(args.seed, args.torch_deterministic)
    say = print if rank == 0 else runs.quiet
    autocast = torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else nullcontext()

    # Data (read and checked before any model loads): rated responses for stage 1, pairs for stage 2 and evaluation
    embedded = args.dataset == "embedded"
    if embedded:  # the same pairs as rm_bt.py; the labeler also rates every response of them, attribute by attribute
        labeler = task.labeler_pool(args.labelers)
        train_prompts, eval_prompts = task.split_prompts()
        train_prompts = train_prompts[: args.num_train_prompts]
        train_pairs = task.make_pairs(train_prompts, labeler, args.pairs_per_prompt, args.seed)
        eval_pairs = task.make_pairs(eval_prompts, labeler, args.eval_pairs_per_prompt, args.seed + 1)
        ood_pairs, ood_ceiling = task.ood_pairs(labeler, args.eval_pairs_per_prompt, args.seed + 5)  # RL's responses
        task.report_ties(train_pairs, train_prompts, args.pairs_per_prompt, "train pairs", say)
        task.report_ties(eval_pairs, eval_prompts, args.eval_pairs_per_prompt, "eval pairs", say)
        rng = random.Random(args.seed + 3)
        responses = {(r["prompt"], r[k]): None for r in train_pairs for k in ("chosen", "rejected")}  # unique, in order
        train_rows = [{"prompt": p, "response": y, "ratings": task.rate(rng, p, y, args.rating_noise)}
                      for p, y in responses]
        attributes = list(task.ATTRIBUTES)
    else:
        train_rows, eval_rows, attributes = data.load_ratings(args.dataset, args.dataset_config,
                                                              args.dataset_train_split, args.dataset_test_split,
                                                              verbose=rank == 0)
        ood_pairs, ood_ceiling = [], None
        if args.preference_dataset:
            train_pairs, eval_pairs = data.load_rows(args.preference_dataset, "pairwise", verbose=rank == 0)
        elif args.preference_attribute not in attributes:
            raise SystemExit(f"--preference-attribute {args.preference_attribute}: {args.dataset} has no such "
                             f"rating; its attributes are {', '.join(attributes)} (or pass --preference-dataset)")
        else:
            train_pairs, eval_pairs = (derived_pairs(rows, args.preference_attribute) for rows in (train_rows,
                                                                                                  eval_rows))
            say(f"stage 2: {len(train_pairs)} train and {len(eval_pairs)} eval pairs derived from the "
                f"{args.preference_attribute} ratings")
        if not train_pairs:
            raise SystemExit(f"--dataset {args.dataset}: no two responses to one prompt differ in "
                             f"{args.preference_attribute}, so stage 2 has no pairs: pass --preference-dataset")
    data.check_eval_rows(eval_pairs, args.preference_dataset or args.dataset, "pairs")

    tokenizer = models.load_tokenizer(args.model, args.trust_remote_code)
    model = models.disable_dropout(models.load_reward_model(args.model, torch.float32, args.trust_remote_code,
                                                            num_labels=len(attributes)))
    model.config.pad_token_id = pad_id = tokenizer.pad_token_id
    lengths = {"max_length": (96, 1024), "max_prompt_length": (32, 512)}  # (small model, pretrained model)
    models.fit_defaults(args, model, tokenizer, (3e-4, 1e-5), lengths, say)
    model = models.prepare(model, args.gradient_checkpointing, args.lora, dtype, device)
    # DDP (gradients averaged over ranks in backward) or, with --fsdp, the model sharded in place
    net = parallel.wrap(models.PerTokenHead(model, slice(None)), args.sharding, world, dtype)

    seqs, where, counts = [], {}, Counter()  # every prompt + response tokenized once: a pair's responses are rated

    def encode(prompt, response):
        """The index in seqs of prompt + response."""
        key = json.dumps([prompt, response])
        if key not in where:
            where[key] = len(seqs)
            seqs.append(data.encode(tokenizer, prompt, response, args.max_length, args.max_prompt_length, counts)[0])
        return where[key]

    rated = [encode(r["prompt"], r["response"]) for r in train_rows]
    targets = torch.tensor([[r["ratings"][a] if r["ratings"][a] is not None else 0.0 for a in attributes]
                            for r in train_rows])
    known = torch.tensor([[r["ratings"][a] is not None for a in attributes] for r in train_rows])
    cells = known.sum(1).tolist()  # known ratings per response: the loss is their mean
    if (~known).sum():
        say(f"{int((~known).sum())} of {known.numel()} ratings are missing (N/A): masked out of the loss")
    pair_ids = {name: ([encode(r["prompt"], r["chosen"]) for r in pairs], [encode(r["prompt"], r["rejected"])
                                                                         for r in pairs])
                for name, pairs in (("train", train_pairs), ("eval", eval_pairs), ("ood", ood_pairs))}
    order = random.Random(args.seed).sample(range(len(train_pairs)), len(train_pairs))  # stage 2's: a random subset
    pair_ids["train"] = tuple([ids[i] for i in order] for ids in pair_ids["train"])
    data.report(counts, f"{len(rated)} rated responses and the responses of {len(train_pairs)} train and "
                        f"{len(eval_pairs)} eval pairs", say)

    # Ground truth where it is known: the gold preference, each attribute's gold component, the labeler's ceiling
    gold_task = all(task.is_task_prompt(r["prompt"]) and isinstance(r["chosen"], str) for r in eval_pairs)
    if gold_task:
        parts = [(task.gold_components(r["prompt"], r["chosen"]), task.gold_components(r["prompt"], r["rejected"]))
                 for r in eval_pairs]
        gold_diff = torch.tensor([[c[a] - w[a] for a in task.ATTRIBUTES] for c, w in parts])  # (N, 5)
        gold_sign = torch.sign(gold_diff.sum(1))
        cal_rows = task.calibration_rows(train_prompts if embedded else [r["prompt"] for r in train_pairs],
                                         args.calibration_size, args.seed + 4)
        cal_ids = [seqs[encode(r["prompt"], r["completion"])] for r in cal_rows]
        cal_gold = torch.tensor([[task.gold_components(r["prompt"], r["completion"])[a] for a in task.ATTRIBUTES]
                                 for r in cal_rows])  # (C, 5)
        # (2N, 5): the chosen responses, then the rejected ones
        eval_gold = torch.tensor([[pair[k][a] for a in task.ATTRIBUTES] for k in (0, 1) for pair in parts])
    ceiling = None
    if embedded:
        ceiling = sum(labeler.ceiling(r["prompt"], r["chosen"], r["rejected"]) for r in eval_pairs) / len(eval_pairs)
        say(f"labeler's ceiling on the {len(eval_pairs)} eval pairs: {ceiling:.3f}")

    def pair_features(name, limit=None):
        """(f_chosen, f_rejected), each (N, A), of the first `limit` pairs: every response scored once."""
        chosen, rejected = (ids[:limit] for ids in pair_ids[name])
        needed = sorted(set(chosen + rejected))
        net.eval()
        with torch.no_grad(), autocast, parallel.gathered(net):
            f = attribute_scores(net, [seqs[i] for i in needed], pad_id, device)
        net.train()
        row = {i: k for k, i in enumerate(needed)}
        return f[[row[i] for i in chosen]], f[[row[i] for i in rejected]]

    def evaluate(step):
        """Stage 2 fitted on the train pairs, then the composite and every head on the eval pairs."""
        weights = fit_composite(*pair_features("train", args.stage2_pairs or None))
        fc, fr = pair_features("eval")
        diff = (fc - fr) @ weights
        out = {"accuracy": ((diff > 0).float() + 0.5 * (diff == 0).float()).mean().item(),
               "loss": composite_bt_loss(weights, fc, fr).item()}
        for i, a in enumerate(attributes):
            writer.add_scalar(f"charts/weight/{a}", weights[i].item(), step)
        if gold_task:
            out["gold_accuracy"] = ((torch.sign(diff) * gold_sign + 1) / 2)[gold_sign != 0].mean().item()
            for i, a in enumerate(task.ATTRIBUTES if embedded else []):  # each head against its own gold component
                differs = gold_diff[:, i] != 0
                agree = (torch.sign(fc[:, i] - fr[:, i]) * torch.sign(gold_diff[:, i]) + 1) / 2
                out[f"attribute/{a}"] = agree[differs].mean().item()
            if args.calibration_size:
                net.eval()
                with torch.no_grad(), autocast, parallel.gathered(net):
                    f_cal = attribute_scores(net, cal_ids, pad_id, device)
                net.train()
                gap = task.alignment_gap((f_cal @ weights).tolist(), cal_gold.sum(1).tolist(),
                                         (torch.cat([fc, fr]) @ weights).tolist(), eval_gold.sum(1).tolist())
                out |= {"alignment_gap": gap["alignment_gap"], "rank_correlation": gap["rank_correlation"]}
        if ood_pairs and step in (0, num_steps):  # off the training distribution (task.ood_pairs)
            ood_chosen, ood_rejected = pair_features("ood")
            d = (ood_chosen - ood_rejected) @ weights
            out["ood_accuracy"] = ((d > 0).float() + 0.5 * (d == 0).float()).mean().item()
            out["ood_ceiling"] = ood_ceiling
        runs.log_scalars(writer, out, step, prefix="eval/")
        if ceiling is not None:
            writer.add_scalar("eval/ceiling", ceiling, step)
        return out | {"weights": weights}

    # Stage 1: one regression output per attribute, on the shared backbone
    batch = args.per_device_batch_size * world
    num_steps = args.num_epochs * len(runs.global_batches(list(range(len(rated))), batch, world))
    optimizer = torch.optim.AdamW(models.trainable(model), lr=args.learning_rate, weight_decay=args.weight_decay,
                                  fused=runs.fused_adam(device))
    scheduler = runs.warmup_cosine(optimizer, int(args.warmup_ratio * num_steps), num_steps)
    run_name, writer = runs.make_run(args.exp_name, args.seed, args, rank)  # only now: a failed start leaves no run
    before = evaluate(0)
    say(f"before training: eval accuracy {before['accuracy']:.3f}, learning rate {args.learning_rate:g}")
    rng = random.Random(args.seed)
    step, start = 0, time.time()
    bar = tqdm(total=num_steps, desc="rm_composite stage 1", disable=rank != 0)
    for epoch in range(args.num_epochs):
        # shuffled, then ordered by length in steps of 8 tokens (less padding); the batches in random order
        order = sorted(rng.sample(range(len(rated)), len(rated)), key=lambda i: len(seqs[rated[i]]) // 8)
        batches = runs.global_batches(order, batch, world)
        rng.shuffle(batches)
        for idx in batches:
            # this rank's share, its loss weighted by its share of the global batch's known ratings: the DDP (or FSDP)
            # average over ranks is the global batch's mean however unevenly it splits
            [(mine, weight)] = runs.micro_batches(idx, rank, world, len(idx), weights=cells)
            optimizer.zero_grad()
            with autocast:
                pred = attribute_scores(net, [seqs[rated[i]] for i in mine], pad_id, device, chunk=len(mine))
                loss = attribute_regression_loss(pred, targets[mine].to(device), known[mine].to(device))
            (loss * weight).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            step += 1
            bar.update(1)
            writer.add_scalar("loss/train", runs.reduce_mean({"loss": loss.item()}, weight=sum(cells[i] for i in mine))
                              ["loss"], step)
            writer.add_scalar("charts/learning_rate", scheduler.get_last_lr()[0], step)
            if step % args.eval_every == 0:
                ev = evaluate(step)
                bar.set_postfix(loss=f"{loss.item():.3f}", eval_acc=f"{ev['accuracy']:.3f}")
    bar.close()
    train_time = time.time() - start

    # Stage 2 on the final backbone, frozen; then the composite becomes output 0 of the saved head
    ev = evaluate(step)
    model = parallel.plain(model, rank)  # --fsdp: the whole model gathered to rank 0
    if rank != 0:
        runs.finish(writer)
        raise SystemExit(0)
    if models.is_peft(model):
        model = model.to("cpu", torch.float32).merge_and_unload().to(device)
    model = composite_head(model, ev["weights"], attributes).to(device)
    # One normalization per output: centred on the rated responses (a bias, as rm_bt.py), or where gold is known
    # calibrated to gold's scale (the composite to gold; on the embedded task each attribute to its gold component)
    model.eval()
    with torch.no_grad(), autocast:
        raw = attribute_scores(model, [seqs[i] for i in rated[:1024]], pad_id, device)  # (N, 1 + A)
        mean, std = raw.mean(0).tolist(), [1.0] * raw.shape[1]
        if gold_task and args.calibration_size:
            raw = attribute_scores(model, cal_ids, pad_id, device)  # (C, 1 + A)
            targets = [cal_gold.sum(1)] + ([cal_gold[:, i] for i in range(len(task.ATTRIBUTES))] if embedded else [])
            for i, target in enumerate(targets):
                a, b = task.fit_calibration(raw[:, i].tolist(), target.tolist())
                if a > 0:  # (raw - mean) / std = a * raw + b; a head that does not rank gold stays centred
                    mean[i], std[i] = -b / a, 1 / a
    model.config.reward_mean, model.config.reward_std = mean, std
    out_dir = models.save(model, tokenizer, args.output_dir, run_name)
    weights = ", ".join(f"{a} {w:.2f}" for a, w in zip(attributes, ev["weights"].tolist()))
    summary = f"rm_composite: eval accuracy {before['accuracy']:.3f} -> {ev['accuracy']:.3f}"
    if ceiling is not None:
        summary += f" (labeler's ceiling {ceiling:.3f}, {100 * (ceiling - ev['accuracy']):.1f} points below)"
    if gold_task:
        summary += f", gold accuracy {ev['gold_accuracy']:.3f}"
        summary += "".join(f", {a} {ev[f'attribute/{a}']:.3f}" for a in task.ATTRIBUTES if f"attribute/{a}" in ev)
        if "alignment_gap" in ev:
            summary += f", alignment gap {ev['alignment_gap']:.3f} (rank corr {ev['rank_correlation']:.3f})"
    if ood_pairs:
        summary += f", off-distribution accuracy {ev['ood_accuracy']:.3f} (ceiling {ood_ceiling:.3f})"
    print(summary + f"; weights {weights}; stage 1 {train_time:.0f}s on {world} process(es), saved to {out_dir}")
    runs.finish(writer)
