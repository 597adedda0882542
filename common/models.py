"""Loading models and tokenizers, devices and torchrun, seeding, checking flags, run directories, reading a scalar
reward, and LoRA (--use-peft): where the adapters go on, the reference with them off, and saving."""

import copy
import logging
import math
import os
import random
import sys
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.distributed as dist
from huggingface_hub import get_hf_file_metadata, hf_hub_url, is_offline_mode, try_to_load_from_cache
from huggingface_hub.errors import HfHubHTTPError, HFValidationError
from huggingface_hub.utils import validate_repo_id
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer


REPO_ROOT = Path(__file__).resolve().parent.parent
# the task's small base policy, made by `python sft.py --output-dir common/bundled_model`
BUNDLED_MODEL = "common/bundled_model"


def resolve(name):
    """A hub name or a local path; a relative path into this repo also works from another directory."""
    if not Path(name).exists() and (REPO_ROOT / name).exists():
        return str(REPO_ROOT / name)
    return name


def stop(message):
    """End the run on a user's mistake: the message (once under torchrun: every process stops, rank 0 says why) and
    exit code 1, no traceback."""
    raise SystemExit(message if int(os.environ.get("RANK", 0)) == 0 else 1)


def model_problem(name):
    """Why name will not load, found before transformers tries (a traceback, or 48 s of retries without a network):
    a path that does not exist or holds no model, a hub name neither in the local cache nor reachable; None when
    it may load."""
    path = Path(resolve(name))
    if path.exists():
        return None if (path / "config.json").is_file() else f"{name}: not a model directory (no config.json in it)"
    try:
        validate_repo_id(name)
    except HFValidationError:
        return f"{name}: no such file or directory"
    if isinstance(try_to_load_from_cache(name, "config.json"), str):
        return None  # in the cache: it loads, online or not
    missing = f"{name}: no such local directory, and not a model in the Hugging Face cache"
    if is_offline_mode():
        return f"{missing}; HF_HUB_OFFLINE is set, so the hub is not asked: download it first, or check the name"
    try:  # one request, without retries: can the hub be reached at all?
        get_hf_file_metadata(hf_hub_url(name, "config.json"), timeout=10)
    except HfHubHTTPError:
        return None  # the hub answered (no such model, a gated one): from_pretrained says what it said
    except Exception as e:
        return f"{missing}, and the hub is not reachable ({type(e).__name__}: {e})"
    return None


def from_pretrained(auto_class, name, **kwargs):
    """auto_class.from_pretrained(name), or one line that says why it does not load, instead of a traceback."""
    problem = model_problem(name)
    if problem:
        stop(problem)
    try:
        return auto_class.from_pretrained(resolve(name), **kwargs)
    except OSError as e:  # a hub repository that does not exist or is gated, a model folder with missing files
        stop(f"{name}: {str(e).splitlines()[0]}")


def load_tokenizer(name, trust_remote_code=False):
    """The tokenizer, with a pad token set when it has none (GPT-2, Llama): padding is only ever read
    through the attention mask, so reusing EOS as pad is safe here."""
    tok = from_pretrained(AutoTokenizer, name, trust_remote_code=trust_remote_code)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token if tok.eos_token is not None else tok.unk_token
    return tok


def _not_an_adapter(name):
    if (Path(resolve(name)) / "adapter_config.json").exists():
        raise SystemExit(f"{name} holds LoRA adapters, not a model: save with --merge-lora to pass a model on")


def load_causal_lm(name, dtype=torch.float32, trust_remote_code=False):
    _not_an_adapter(name)
    return from_pretrained(AutoModelForCausalLM, name, dtype=dtype, trust_remote_code=trust_remote_code)


def load_reward_model(name, dtype=torch.float32, trust_remote_code=False, num_labels=1):
    """A sequence-classification model. From a causal LM checkpoint the unembedding is replaced by a fresh scalar head
    (InstructGPT starts the RM from the SFT model): said in one line, in place of transformers' load report, which
    lists the head as MISSING (and an untied unembedding as UNEXPECTED). num_labels=None keeps a classifier's own
    labels and refuses a checkpoint that is not one (a reward model to read, not to train)."""
    _not_an_adapter(name)
    kwargs = {"num_labels": num_labels} if num_labels is not None else {}
    if num_labels is None:
        config = from_pretrained(AutoConfig, name, trust_remote_code=trust_remote_code)
        if not any(a.endswith("ForSequenceClassification") for a in config.architectures or []):
            raise SystemExit(f"--reward-model {name} is not a sequence classifier (its architectures: "
                             f"{config.architectures}): train one with rm_bt.py or pass a reward model")
    with without_log("LOAD REPORT"):
        model, info = from_pretrained(AutoModelForSequenceClassification, name, dtype=dtype,
                                      trust_remote_code=trust_remote_code, output_loading_info=True, **kwargs)
    new = sorted(k for k in info["missing_keys"] if not k.startswith("score."))
    unused = sorted(k for k in info["unexpected_keys"] if not k.startswith("lm_head."))
    if int(os.environ.get("RANK", 0)) == 0:  # once under torchrun, not once per process
        if any(k.startswith("score.") for k in info["missing_keys"]):
            print(f"a fresh scalar head on {name} (the checkpoint has none)")
        if new:
            print(f"warning: {name}: weights not in the checkpoint, initialized at random: {', '.join(new)}")
        if unused:
            print(f"warning: {name}: weights in the checkpoint that the model does not use: {', '.join(unused)}")
    return model


@contextmanager
def without_log(text, logger="transformers.modeling_utils"):
    """Inside the block, hold back the records of a logger whose message contains text (a warning known to be a
    false alarm here), and nothing else; if the block fails, they are let through after all: they may explain why."""
    held = []

    def keep(record):
        if text in record.getMessage():
            held.append(record)
            return False
        return True

    log = logging.getLogger(logger)
    log.addFilter(keep)
    try:
        yield
    except BaseException:
        log.removeFilter(keep)
        for record in held:
            log.handle(record)
        raise
    finally:
        log.removeFilter(keep)


def _is_dropout_rate(name, value):
    """A dropout-like rate: attention_dropout, hidden_dropout_prob, attn_pdrop, seq_classif_dropout, layerdrop..."""
    return "drop" in name.lower() and isinstance(value, (int, float)) and not isinstance(value, bool)


def disable_dropout(model):
    """Dropout off everywhere: RLHF's log-prob ratios and values must not be noisy (N implementation details).
    Three places hold it: nn.Dropout modules (GPT-2, encoders); rates that modules keep as plain floats and pass to the
    attention function (Llama, Qwen2, GPT-NeoX copy config.attention_dropout at init); and the config itself, so that
    a saved model, and any module built from its config later, has none either."""
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
        for name, value in list(vars(m).items()):
            if _is_dropout_rate(name, value):
                setattr(m, name, 0.0)
    for config in (model.config, model.config.get_text_config()):  # the same object for a text-only model
        for name, value in list(vars(config).items()):
            if _is_dropout_rate(name, value):
                setattr(config, name, 0.0)
    return model


def checkpoint_activations(model):
    """Gradient checkpointing: activations recomputed in the backward pass instead of stored (less memory, about 30%
    slower). It acts in training mode only, so the model is put in it (from_pretrained leaves eval mode); with dropout
    off nothing else changes. Non-reentrant, so it works with frozen inputs (LoRA)."""
    model.activation_checkpointing_enable({"use_reentrant": False})
    return model.train()


SMALL_MODEL = 10_000_000  # parameters: below this a model is tiny like the bundled one (0.83M) and gets its defaults


def is_small(model):
    return sum(p.numel() for p in model.parameters()) < SMALL_MODEL


def context_length(model, tokenizer=None):
    """The most tokens the model (and its tokenizer, where it says) takes in one sequence."""
    config = model.config.get_text_config()
    n = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None) or 10**9
    if tokenizer is not None and tokenizer.model_max_length < 10**9:  # tokenizers without a limit say 1e30
        n = min(n, tokenizer.model_max_length)
    return n


def fit_defaults(args, model, tokenizer, learning_rate, lengths, say=print):
    """Fill args.learning_rate and the length fields that were left at None from what the model is: `learning_rate`
    and `lengths` ({field: value}) are (small model, pretrained model) pairs; lengths are capped at the model's context.
    Small models (the bundled one) get the embedded task's values, pretrained ones the field's (TRL's)."""
    small = is_small(model)
    if args.learning_rate is None:
        args.learning_rate = learning_rate[0 if small else 1]
    context = context_length(model, tokenizer)
    for field, (small_value, pretrained_value) in lengths.items():
        if getattr(args, field) is None:
            setattr(args, field, min(small_value if small else pretrained_value, context))
    if "max_length" in lengths and getattr(args, "max_prompt_length", 0) >= args.max_length:  # --max-length given alone
        args.max_prompt_length = args.max_length // 2
    chosen = ", ".join(f"{field} {getattr(args, field)}" for field in lengths)
    kind = "small" if small else "pretrained"
    say(f"learning rate {args.learning_rate:g}, {chosen} (where not given: the defaults for a {kind} model; "
        f"its context is {context} tokens)")


def last_token_index(attention_mask):
    """(B,) index of the last real token of each row, from the mask alone (left or right padding)."""
    T = attention_mask.shape[1]
    positions = torch.arange(T, device=attention_mask.device).expand_as(attention_mask)
    return torch.where(attention_mask.bool(), positions, -1).max(dim=1).values


def position_ids_from_mask(attention_mask):
    """Positions that count real tokens only, so left padding does not shift them."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def head_per_token(model, input_ids, attention_mask, label=0):
    """(B, T) output `label` of a sequence classifier's head at every position (adapters on, where it has them).
    The head is applied to the hidden states ourselves: the HF pooling looks for pad ids, which is wrong when
    pad == EOS or there is no pad."""
    if is_peft(model):  # the transformers model inside, its LoRA layers in place
        model = model.get_base_model()
    out = model.base_model(
        input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids_from_mask(attention_mask)
    )
    return model.score(out.last_hidden_state)[..., label]


def reward_at_last_token(model, input_ids, attention_mask, label=0):
    """(B,) reward (output `label` of the head) read at the last real token of each sequence."""
    values = head_per_token(model, input_ids, attention_mask, label)  # (B, T)
    return values.gather(1, last_token_index(attention_mask)[:, None]).squeeze(1).float()


class LastTokenReward(torch.nn.Module):
    """The reward model as one module whose forward gives (B,) rewards at the last real token, so that DDP, which
    does its bookkeeping in forward(), can wrap it (rm_bt.py and rm_kwise.py under torchrun)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        return reward_at_last_token(self.model, input_ids, attention_mask)


def device_and_dtype(cuda=True):
    """CUDA when asked for and present (bf16 where the GPU supports it), else CPU in fp32."""
    if cuda and torch.cuda.is_available():
        return torch.device("cuda"), torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    return torch.device("cpu"), torch.float32


def setup_distributed(cuda=True):
    """(rank, world_size, device, dtype). Under `torchrun --nproc_per_node N` (WORLD_SIZE > 1) each process
    joins the process group, NCCL on GPUs and gloo on CPU, and takes the GPU of its LOCAL_RANK."""
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
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
    micro-batches of at most `size`. The loss weight is the micro-batch's share of the global batch, counted in items
    (or in weights[item], e.g. tokens), times world: the weighted mean losses summed over micro-batches, then averaged
    over processes by DDP, are the mean over the global batch however unevenly it splits."""
    def total(items):
        return sum(weights[i] for i in items) if weights is not None else len(items)
    mine = batch[rank::world]
    return [(mine[i : i + size], total(mine[i : i + size]) * world / total(batch)) for i in range(0, len(mine), size)]


def average_gradients(params):
    """Data parallel by hand (ppo_rlhf.py: generate() and a value head on the policy run outside one module's forward,
    so there is no DDP wrapper): each gradient is averaged over the processes. A no-op without torchrun."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    for p in params:
        p.grad = torch.zeros_like(p) if p.grad is None else p.grad
        dist.all_reduce(p.grad)
        p.grad /= dist.get_world_size()


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
    processes leave the group together."""
    writer.close()
    if getattr(sys.modules.get("wandb"), "run", None) is not None:
        sys.modules["wandb"].finish()
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


# ---------------------------------------------------------------- LoRA (Hu et al. 2021): --use-peft in every script

@dataclass
class LoraArgs:
    """The LoRA flags, the same in every script, with TRL's names (--use-peft, --lora-r, ...)."""

    use_peft: bool = False
    """train LoRA adapters (and a reward or value model's scalar head) on frozen weights instead of all weights; the
    reference of dpo.py and ppo_rlhf.py is then the same network with its adapters off, not a copy"""
    lora_r: int = 16
    """rank of the adapters"""
    lora_alpha: int = 32
    """the adapters' update is scaled by lora_alpha / lora_r"""
    lora_dropout: float = 0.0
    """dropout on the adapters' input (0: RLHF wants no dropout, its log-prob ratios must not be noisy)"""
    lora_target_modules: Optional[list[str]] = None
    """names of the modules that get adapters (q_proj v_proj ...); default: every linear layer but the output layer"""
    merge_lora: bool = False
    """save the weights with the adapters merged in (they load with transformers alone, and as the next script's
    --model or --reward-model) and the adapters in <output-dir>/adapter"""

    def __post_init__(self):  # bad combinations end here, before any data or model loads
        if self.merge_lora and not self.use_peft:
            raise SystemExit("--merge-lora merges LoRA adapters: it needs --use-peft")
        if self.lora_r < 1 or not 0 <= self.lora_dropout < 1:
            raise SystemExit(f"--lora-r must be >= 1 (got {self.lora_r}), "
                             f"--lora-dropout in [0, 1) (got {self.lora_dropout})")


def is_peft(model):
    """Whether the model carries LoRA adapters: a PeftModel (without importing peft, which only LoRA runs load)."""
    return hasattr(model, "get_base_model")


def add_lora(model, lora, dtype=torch.float32):
    """With --use-peft: the model with LoRA adapters (a PeftModel). Its own weights are frozen and stored in `dtype`
    (bf16 on GPUs that support it: they only ever run under autocast); the adapters, and the scalar head `score` of a
    reward or value model, are trained and kept in fp32 for Adam. Without --use-peft: the model as it was."""
    if not lora.use_peft:
        return model
    from peft import LoraConfig, get_peft_model  # imported only by runs that use it

    head = ["score"] if hasattr(model, "score") else None  # a fresh head must be trained whole, not adapted
    targets = lora.lora_target_modules
    config = LoraConfig(r=lora.lora_r, lora_alpha=lora.lora_alpha, lora_dropout=lora.lora_dropout,
                        target_modules="all-linear" if targets in (None, ["all-linear"]) else targets,
                        modules_to_save=head, task_type="SEQ_CLS" if head else "CAUSAL_LM")
    try:
        with warnings.catch_warnings():  # peft's notes on GPT-2's Conv1D layout and a transformers rename
            warnings.filterwarnings("ignore", message="fan_in_fan_out|`is_gradient_checkpointing`")
            model = get_peft_model(model.to(dtype), config)
    except ValueError as e:  # target modules that the model does not have
        raise SystemExit(f"--lora-target-modules: {e}") from None
    for p in model.parameters():
        if p.requires_grad:
            p.data = p.data.float()
    return model


def prepare(model, gradient_checkpointing, lora, dtype, device):
    """The model as it trains: activations recomputed in the backward pass with --gradient-checkpointing, LoRA
    adapters with --use-peft (its own weights frozen), on the device."""
    if gradient_checkpointing:
        checkpoint_activations(model)
    return add_lora(model, lora, dtype).to(device)


class AdaptersOff:
    """The reference without a second copy: the same network called with its adapters disabled, which computes
    exactly the starting model (its own weights are frozen). It holds no weights, so there is nothing to move."""

    def __init__(self, model):
        self.model = model

    def __call__(self, *args, **kwargs):
        with self.model.disable_adapter():
            return self.model(*args, **kwargs)

    def to(self, *args, **kwargs):
        return self


def reference_of(model, dtype=torch.float32):
    """The frozen reference, the starting model: with adapters, the same network with them off (AdaptersOff); without,
    a frozen copy in `dtype` (bf16 on GPUs that support it: it only runs under autocast)."""
    if is_peft(model):
        return AdaptersOff(model)
    return copy.deepcopy(model).to(dtype).eval().requires_grad_(False)


def trainable(*modules):
    """The parameters the optimizer updates: all of them, or with --use-peft the adapters and heads."""
    return [p for m in modules for p in m.parameters() if p.requires_grad]


def save(model, tokenizer, output_dir, run_name="", merge_lora=False):
    """The trained model and its tokenizer in output_dir, or runs/<run_name>/model when it is ''; returns the directory.
    With adapters: the adapter directory (adapter_config.json and the adapters' weights, a reward model's head
    included); with merge_lora the merged weights instead, which load with transformers alone, and the adapter
    directory in <output_dir>/adapter."""
    out_dir = output_dir or os.path.join("runs", run_name, "model")
    if is_peft(model) and merge_lora:
        model.save_pretrained(os.path.join(out_dir, "adapter"))
        tokenizer.save_pretrained(os.path.join(out_dir, "adapter"))
        model = model.to("cpu", torch.float32).merge_and_unload()  # in fp32: small updates not lost to bf16 rounding
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir
