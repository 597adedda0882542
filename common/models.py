"""Loading models and tokenizers (with a clear line when a name will not load), dropout off, gradient checkpointing,
the defaults a model's size picks, reading a scalar head, and LoRA (--use-peft): where the adapters go on, the
reference with them off, and saving."""

import copy
import logging
import os
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from huggingface_hub import get_hf_file_metadata, hf_hub_url, is_offline_mode, try_to_load_from_cache
from huggingface_hub.errors import HfHubHTTPError, HFValidationError
from huggingface_hub.utils import validate_repo_id
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from common import parallel
from common import runs
from common.runs import stop

REPO_ROOT = Path(__file__).resolve().parent.parent
# the task's small base policy, made by `python sft.py --output-dir common/bundled_model`
BUNDLED_MODEL = "common/bundled_model"


def resolve(name):
    """A hub name or a local path; a relative path into this repo also works from another directory."""
    if not Path(name).exists() and (REPO_ROOT / name).exists():
        return str(REPO_ROOT / name)
    return name


def offline_variable(name):
    """Whether an environment variable that turns huggingface_hub's offline mode on is set to a true value."""
    return os.environ.get(name, "").strip().upper() in ("1", "ON", "YES", "TRUE")


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
        names = " and ".join(v for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE") if offline_variable(v))
        return (f"{missing}; {names or 'offline mode'} is set, so the hub is not asked: download it first, "
                "or check the name")
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
        if parallel.sharded_run() and runs.rank_and_world()[0] != 0 and auto_class not in (AutoTokenizer, AutoConfig):
            return _on_meta(auto_class, name, **kwargs)  # --fsdp: rank 0 alone reads the weights
        return auto_class.from_pretrained(resolve(name), **kwargs)
    except OSError as e:  # a hub repository that does not exist or is gated, a model folder with missing files
        stop(f"{name}: {str(e).splitlines()[0]}")


def _on_meta(auto_class, name, dtype=None, trust_remote_code=False, output_loading_info=False, **config_kwargs):
    """The model from its config on the meta device (no memory, no weights): parallel.shard() broadcasts rank 0's."""
    config = AutoConfig.from_pretrained(resolve(name), trust_remote_code=trust_remote_code, **config_kwargs)
    with torch.device("meta"):
        model = auto_class.from_config(config, dtype=dtype, trust_remote_code=trust_remote_code)
    return (model, {"missing_keys": [], "unexpected_keys": []}) if output_loading_info else model


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


class PerTokenHead(torch.nn.Module):
    """A value network (or an attribute model) as one module whose forward gives output `label` of the head at every
    position, (B, T) (slice(None): (B, T, outputs)), so that DDP or FSDP can wrap it (ppo_rlhf.py, rm_composite.py)."""

    def __init__(self, model, label=0):
        super().__init__()
        self.model, self.label = model, label

    def forward(self, input_ids, attention_mask):
        return head_per_token(self.model, input_ids, attention_mask, self.label)


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
    adapters with --use-peft (its own weights frozen), on the device (--fsdp: in CPU memory, until it is sharded)."""
    if gradient_checkpointing:
        checkpoint_activations(model)
    model = add_lora(model, lora, dtype)
    return model if parallel.sharded_run() else model.to(device)  # sharded: parallel.shard() moves each shard


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
