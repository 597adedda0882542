"""Loading models and tokenizers, devices and torchrun, seeding, run directories, reading a scalar reward, and LoRA
(--use-peft): where the adapters go on, the reference with them off, and saving."""

import copy
import os
import random
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.distributed as dist
from transformers import (AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer,
                          GenerationConfig)

from common import data

REPO_ROOT = Path(__file__).resolve().parent.parent
BUNDLED_MODEL = "common/bundled_model"  # the task's small base policy, made by `python sft.py --output-dir common/bundled_model`


def resolve(name):
    """A hub name or a local path; a relative path into this repo also works from another directory."""
    if not Path(name).exists() and (REPO_ROOT / name).exists():
        return str(REPO_ROOT / name)
    return name


def load_tokenizer(name, trust_remote_code=False):
    """The tokenizer, with a pad token set when it has none (GPT-2, Llama): padding is only ever read
    through the attention mask, so reusing EOS as pad is safe here."""
    tok = AutoTokenizer.from_pretrained(resolve(name), trust_remote_code=trust_remote_code)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token if tok.eos_token is not None else tok.unk_token
    return tok


def _not_an_adapter(name):
    if (Path(resolve(name)) / "adapter_config.json").exists():
        raise SystemExit(f"{name} holds LoRA adapters, not a model: save with --merge-lora to pass a model on")


def load_causal_lm(name, dtype=torch.float32, trust_remote_code=False):
    _not_an_adapter(name)
    return AutoModelForCausalLM.from_pretrained(resolve(name), dtype=dtype, trust_remote_code=trust_remote_code)


def load_reward_model(name, dtype=torch.float32, trust_remote_code=False, num_labels=1):
    """A sequence-classification model. From a causal LM checkpoint the unembedding is replaced by a fresh scalar
    head (InstructGPT starts the RM from the SFT model). num_labels=None keeps a classifier's own labels and refuses
    a checkpoint that is not one (a reward model to read, not to train)."""
    _not_an_adapter(name)
    kwargs = {"num_labels": num_labels} if num_labels is not None else {}
    if num_labels is None:
        config = AutoConfig.from_pretrained(resolve(name), trust_remote_code=trust_remote_code)
        if not any(a.endswith("ForSequenceClassification") for a in config.architectures or []):
            raise SystemExit(f"--reward-model {name} is not a sequence classifier (its architectures: "
                             f"{config.architectures}): train one with rm_bt.py or pass a reward model")
    return AutoModelForSequenceClassification.from_pretrained(
        resolve(name), dtype=dtype, trust_remote_code=trust_remote_code, **kwargs
    )


def disable_dropout(model):
    """Dropout off everywhere: RLHF's log-prob ratios and values must not be noisy (N implementation details)."""
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
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


def reduce_mean(values, weight=1.0):
    """Average a dict of floats over all ranks, each rank's values weighted by `weight` (its number of
    examples, so the result is the mean over the global batch). One all_reduce; a no-op without torchrun."""
    if not (dist.is_available() and dist.is_initialized()):
        return dict(values)
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    t = torch.tensor([v * weight for v in values.values()] + [weight], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return {k: (t[i] / t[-1]).item() for i, k in enumerate(values)}


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


def leave_distributed():
    """At the end of a torchrun run: wait for rank 0 (which saves), then all processes leave the group together."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def quiet(*args, **kwargs):
    """print for ranks other than 0: says nothing."""


class SilentWriter:
    """The TensorBoard writer of ranks other than 0: only rank 0 logs."""

    def __getattr__(self, name):
        return lambda *args, **kwargs: None


def seed_everything(seed, deterministic=True):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.backends.cudnn.deterministic = deterministic


def make_run(exp_name, seed, args, rank=0):
    """run_name and a TensorBoard writer logging to runs/<run_name>, with the hyperparameters as a table
    (on rank 0; other ranks get a writer that writes nothing)."""
    from torch.utils.tensorboard import SummaryWriter

    run_name = f"{exp_name}__{seed}__{int(time.time())}"
    if rank != 0:
        return run_name, SilentWriter()
    writer = SummaryWriter(os.path.join("runs", run_name))
    table = "\n".join(f"|{k}|{v}|" for k, v in vars(args).items())
    writer.add_text("hyperparameters", f"|param|value|\n|-|-|\n{table}")
    return run_name, writer


def stop_token_ids(tokenizer, stop_token=""):
    """The ids that end a response: EOS, and --stop-token when given: a token of the vocabulary, or a text that encodes
    to one token (not found by comparing with unk: GPT-2's unk is its EOS)."""
    if not stop_token:
        return [tokenizer.eos_token_id]
    vocab = tokenizer.get_vocab()
    stop = [vocab[stop_token]] if stop_token in vocab else tokenizer(stop_token, add_special_tokens=False).input_ids
    if len(stop) != 1:
        raise SystemExit(f"--stop-token {stop_token!r} is {len(stop)} tokens for this tokenizer, not one")
    return [tokenizer.eos_token_id] + stop


def generation_config(tokenizer, stop_ids, max_new_tokens, temperature):
    """Pure sampling at temperature with the KV cache: every other logits processor set to neutral explicitly, so a
    model's own generation_config.json (top-k, top-p, repetition penalty) cannot change what is sampled."""
    return GenerationConfig(do_sample=True, temperature=temperature, top_k=0, top_p=1.0, min_p=None, typical_p=1.0,
                            repetition_penalty=1.0, no_repeat_ngram_size=0, min_new_tokens=0,
                            max_new_tokens=max_new_tokens, eos_token_id=stop_ids, pad_token_id=tokenizer.pad_token_id,
                            suppress_tokens=None, begin_suppress_tokens=None)


@torch.no_grad()
def sample_completions(model, tokenizer, queries, max_new_tokens=64, temperature=1.0, batch_size=64):
    """Sample one completion per query (lists of prompt ids, left-padded here; KV cache; pure sampling: no top-k, no
    top-p, whatever the model's generation_config says). Returns the texts, special tokens left out."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = []
    for i in range(0, len(queries), batch_size):
        batch = queries[i : i + batch_size]
        ids = data.pad(batch, tokenizer.pad_token_id, side="left").to(device)
        mask = data.pad([[1] * len(q) for q in batch], 0, side="left").to(device)
        gen = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=True,
                             temperature=temperature, top_k=0, top_p=1.0, pad_token_id=tokenizer.pad_token_id,
                             eos_token_id=tokenizer.eos_token_id)
        out += tokenizer.batch_decode(gen[:, ids.shape[1] :], skip_special_tokens=True)
    model.train(was_training)
    return [s.strip() for s in out]


# ---------------------------------------------------------------- LoRA (Hu et al. 2021): --use-peft in every script

@dataclass
class LoraArgs:
    """The LoRA flags, the same in every script, with TRL's names (--use-peft, --lora-r, ...)."""

    use_peft: bool = False
    """train LoRA adapters (and a reward or value model's scalar head) on frozen weights instead of all weights; the reference of dpo.py and ppo_rlhf.py is then the same network with its adapters off, not a copy"""
    lora_r: int = 16
    """rank of the adapters"""
    lora_alpha: int = 32
    """the adapters' update is scaled by lora_alpha / lora_r"""
    lora_dropout: float = 0.0
    """dropout on the adapters' input (0: RLHF wants no dropout, its log-prob ratios must not be noisy)"""
    lora_target_modules: Optional[list[str]] = None
    """names of the modules that get adapters (q_proj v_proj ...); default: every linear layer but the output layer"""
    merge_lora: bool = False
    """save the weights with the adapters merged in (they load with transformers alone, and as the next script's --model or --reward-model) and the adapters in <output-dir>/adapter"""

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


def save(model, tokenizer, out_dir, merge_lora=False):
    """The trained model and its tokenizer in out_dir. With adapters: the adapter directory (adapter_config.json and
    the adapters' weights, a reward model's head included); with merge_lora the merged weights instead, which load
    with transformers alone, and the adapter directory in out_dir/adapter."""
    if is_peft(model) and merge_lora:
        model.save_pretrained(os.path.join(out_dir, "adapter"))
        tokenizer.save_pretrained(os.path.join(out_dir, "adapter"))
        model = model.to("cpu", torch.float32).merge_and_unload()  # in fp32: small updates not lost to bf16 rounding
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
