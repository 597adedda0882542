"""One training run's plumbing, the same in every script: devices and torchrun (data parallel, means over processes),
seeding, flag checks that stop before anything loads, the optimizer's settings, and the run directory with its
TensorBoard (and, with --track, Weights & Biases) logs."""

import math
import os
import random
import sys
import time

import numpy as np
import torch
import torch.distributed as dist


def stop(message):
    """End the run on a user's mistake: the message (once under torchrun: every process stops, rank 0 says why) and
    exit code 1, no traceback."""
    raise SystemExit(message if int(os.environ.get("RANK", 0)) == 0 else 1)


def device_and_dtype(cuda=True):
    """CUDA when asked for and present (bf16 where the GPU supports it), else CPU in fp32."""
    if cuda and torch.cuda.is_available():
        return torch.device("cuda"), torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    return torch.device("cpu"), torch.float32


def rank_and_world():
    """(rank, world_size) as torchrun sets them; (0, 1) in a plain process."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def setup_distributed(cuda=True):
    """(rank, world_size, device, dtype). Under `torchrun --nproc_per_node N` (WORLD_SIZE > 1) each process
    joins the process group, NCCL on GPUs and gloo on CPU, and takes the GPU of its LOCAL_RANK."""
    rank, world = rank_and_world()
    device, dtype = device_and_dtype(cuda)
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return rank, world, device, dtype


def sum_over_ranks(numbers):
    """The element-wise sum of a list of floats over all ranks, in float64
    (one all_reduce; the list without torchrun)."""
    if not (dist.is_available() and dist.is_initialized()):
        return list(numbers)
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    t = torch.tensor(numbers, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def reduce_mean(values, weight=1.0):
    """Average a dict of floats over all ranks, each rank's values weighted by `weight` (its number of
    examples, so the result is the mean over the global batch). One all_reduce; a no-op without torchrun."""
    if not (dist.is_available() and dist.is_initialized()):
        return dict(values)
    sums = sum_over_ranks([v * weight for v in values.values()] + [weight])
    return {k: sums[i] / sums[-1] if sums[-1] else math.nan for i, k in enumerate(values)}


def global_means(values):
    """{name: mean over every process's items} from {name: this process's list of per-item values}. A process with no
    items adds nothing (fewer eval prompts than processes); a name with no item anywhere gets NaN. One all_reduce."""
    n = len(values)
    sums = sum_over_ranks([float(sum(v)) for v in values.values()] + [float(len(v)) for v in values.values()])
    return {k: sums[i] / sums[n + i] if sums[n + i] else math.nan for i, k in enumerate(values)}


def global_batches(order, size, world=1):
    """Consecutive global batches of `size` items; a last batch too small to give each of the `world` processes an
    item joins the one before it, so nothing is dropped and no process is left without a backward pass (with gloo
    that is a collective mismatch, with NCCL a hang)."""
    if len(order) < world:
        raise ValueError(f"{len(order)} training examples cannot give each of {world} processes one")
    batches = [order[b : b + size] for b in range(0, len(order), size)]
    if len(batches) > 1 and len(batches[-1]) < world:
        # popped first: `batches[-2] = batches[-2] + batches.pop()` would overwrite the wrong batch
        last = batches.pop()
        batches[-1] = batches[-1] + last
    return batches


def micro_batches(batch, rank, world, size, weights=None):
    """[(items, loss_weight)]: this process's share of a global batch (items rank, rank + world, ...) cut into
    micro-batches of at most `size`, as many on every process (under --fsdp each forward is a collective): the largest
    share's count, every share cut into that many near-equal parts. The loss weight is the micro-batch's share of the
    global batch, counted in items (or in weights[item], e.g. tokens), times world: the weighted mean losses summed
    over micro-batches, then averaged over processes by DDP, are the mean over the global batch however unevenly it
    splits. A share with fewer items than parts (size 1, uneven shares) repeats its first item with weight 0."""
    def total(items):
        return sum(weights[i] for i in items) if weights is not None else len(items)
    mine = batch[rank::world]
    n = math.ceil(math.ceil(len(batch) / world) / size)
    parts = [mine[len(mine) * j // n : len(mine) * (j + 1) // n] for j in range(n)]
    return [(p, total(p) * world / total(batch)) if p else (mine[:1], 0.0) for p in parts]


def gather_in_order(values, rank, world):
    """(N,) from each rank's (n_rank,) share, rank r holding items r, r + world, ...: back in the items' order."""
    if world == 1:
        return values
    shares = [None] * world
    dist.all_gather_object(shares, values.cpu())
    out = torch.empty(sum(len(s) for s in shares))
    for r, s in enumerate(shares):
        out[r::world] = s
    return out


def identical_on_all_ranks(params):
    """Whether every process holds the same weights (a checksum of params gathered from all of them)."""
    checksums = [None] * dist.get_world_size()
    dist.all_gather_object(checksums, sum(p.double().sum().item() for p in params))
    return len(set(checksums)) == 1


def quiet(*args, **kwargs):
    """print for ranks other than 0: says nothing."""


def fused_adam(device):
    """Adam's fused kernel where torch has one: one pass over the weights per step instead of several (4.5x faster
    on this CPU for 100M parameters, where it was 14% of a PPO minibatch at 124M); HF's Trainer uses it too."""
    return device.type in ("cpu", "cuda")


def warmup_cosine(optimizer, warmup, num_steps):
    """The learning rate times min(1, (s + 1) / warmup) (linear warmup) times 0.5 (1 + cos(pi s / num_steps)) (cosine
    decay to 0) at step s."""

    def factor(s):
        return min(1.0, (s + 1) / max(1, warmup)) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / num_steps)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class SilentWriter:
    """The TensorBoard writer of ranks other than 0: only rank 0 logs."""

    def __getattr__(self, name):
        return lambda *args, **kwargs: None


def seed_everything(seed, deterministic=True):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.backends.cudnn.deterministic = deterministic


def check_args(args, positive=(), non_negative=(), rules=()):
    """Stop before anything loads when flags are out of range, with one line per bad flag, named as it is typed:
    `--per-device-batch-size must be a positive integer, got 0`. positive, non_negative: field names (an unset
    Optional, None, passes); rules: (field, ok, requirement) for the rest, e.g.
    ("warmup_ratio", 0 <= args.warmup_ratio < 1, "in [0, 1)")."""
    checks = []
    for name in positive:
        value = getattr(args, name)
        kind = "integer" if isinstance(value, int) else "number"
        checks.append((name, value is None or value > 0, f"a positive {kind}"))
    for name in non_negative:
        value = getattr(args, name)
        checks.append((name, value is None or value >= 0, "non-negative"))
    errors = [f"--{name.replace('_', '-')} must be {requirement}, got {getattr(args, name)}"
              for name, ok, requirement in checks + list(rules) if not ok]
    if getattr(args, "track", False):
        try:
            import wandb  # noqa: F401
        except ImportError:
            errors.append("--track logs to Weights & Biases, which is not installed: pip install wandb")
    if errors:
        stop("\n".join(errors))


def launcher(nproc_per_node=1):
    """How a driver (expert_iteration.py, rm_ensemble.py) starts a script: python, or torchrun with N processes."""
    if nproc_per_node == 1:
        return [sys.executable]
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc_per_node)]


def check_script_flags(args_class, flags, option, script):
    """Stop with one line when `script` would refuse the flags a driver passes it (tyro's own message, its frame
    taken off): expert_iteration.py's --sft-flags, rm_ensemble.py's --rm-flags, before any work is done."""
    import contextlib
    import io
    import shlex

    import tyro

    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            tyro.cli(args_class, args=shlex.split(flags))
    except SystemExit as e:
        if e.code:
            lines = [line.strip(" |│╭╮╰╯─-") for line in err.getvalue().splitlines()]
            lines = [line for line in lines if line]  # the box's title, then what is wrong, then hints
            why = lines[1] if len(lines) > 1 else "".join(lines)
            raise SystemExit(f"{option} {flags!r}: {script} refuses it: {why}") from None

def prompt_length_rule(args):
    """The check_args rule that --max-prompt-length, where both lengths are given, leaves room for a completion."""
    fits = None in (args.max_length, args.max_prompt_length) or args.max_prompt_length < args.max_length
    return ("max_prompt_length", fits, f"below --max-length ({args.max_length})")


def make_run(exp_name, seed, args, rank=0):
    """run_name and a TensorBoard writer logging to runs/<run_name>, with the hyperparameters as a table
    (on rank 0; other ranks get a writer that writes nothing)."""
    from torch.utils.tensorboard import SummaryWriter

    run_name = f"{exp_name}__{seed}__{int(time.time())}"
    if rank != 0:
        return run_name, SilentWriter()
    if getattr(args, "track", False):  # W&B mirrors every TensorBoard scalar (CleanRL's --track)
        import wandb

        wandb.init(project=args.wandb_project_name, entity=args.wandb_entity, sync_tensorboard=True, config=vars(args),
                   name=run_name, save_code=True)
    writer = SummaryWriter(os.path.join("runs", run_name))
    table = "\n".join(f"|{k}|{v}|" for k, v in vars(args).items())
    writer.add_text("hyperparameters", f"|param|value|\n|-|-|\n{table}")
    return run_name, writer


def log_scalars(writer, values, step, prefix=""):
    """Every number in a dict to TensorBoard, tagged prefix + key; the rest (None, samples) is skipped."""
    for key, value in values.items():
        if isinstance(value, (int, float)):
            writer.add_scalar(prefix + key, value, step)


def finish(writer):
    """The end of a run: close the TensorBoard writer; under torchrun, wait for rank 0 (which saves), then all
    processes leave the group together and exit (code 0)."""
    writer.close()
    if getattr(sys.modules.get("wandb"), "run", None) is not None:
        sys.modules["wandb"].finish()
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
        # then out, skipping the interpreter's teardown: there the C++ threads behind DDP and gloo, destroyed in no set
        # order, aborted a finished worker once in five suite runs ("terminate called without an active exception")
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
