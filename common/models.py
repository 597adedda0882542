"""Loading models and tokenizers, devices and torchrun, seeding, checking flags, run directories, and reading a
scalar reward."""

import logging
import os
import random
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from huggingface_hub import get_hf_file_metadata, hf_hub_url, is_offline_mode, try_to_load_from_cache
from huggingface_hub.errors import HfHubHTTPError, HFValidationError
from huggingface_hub.utils import validate_repo_id
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

REPO_ROOT = Path(__file__).resolve().parent.parent
BUNDLED_MODEL = "common/bundled_model"  # the task's small base policy, made by `python sft.py --output-dir common/bundled_model`


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


def load_causal_lm(name, dtype=torch.float32, trust_remote_code=False):
    return from_pretrained(AutoModelForCausalLM, name, dtype=dtype, trust_remote_code=trust_remote_code)


def load_reward_model(name, dtype=torch.float32, trust_remote_code=False):
    """A sequence-classification model with one output. From a causal LM checkpoint the unembedding is
    replaced by a fresh scalar head (InstructGPT starts the RM from the SFT model): said in one line, in place of
    transformers' load report, which lists the head as MISSING (and an untied unembedding as UNEXPECTED)."""
    with without_log("LOAD REPORT"):
        model, info = from_pretrained(AutoModelForSequenceClassification, name, num_labels=1, dtype=dtype,
                                      trust_remote_code=trust_remote_code, output_loading_info=True)
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


def disable_dropout(model):
    """Dropout off everywhere: RLHF's log-prob ratios and values must not be noisy (N implementation details)."""
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    return model


def last_token_index(attention_mask):
    """(B,) index of the last real token of each row, from the mask alone (left or right padding)."""
    T = attention_mask.shape[1]
    positions = torch.arange(T, device=attention_mask.device).expand_as(attention_mask)
    return torch.where(attention_mask.bool(), positions, -1).max(dim=1).values


def position_ids_from_mask(attention_mask):
    """Positions that count real tokens only, so left padding does not shift them."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def reward_at_last_token(model, input_ids, attention_mask):
    """(B,) scalar reward read at the last real token of each sequence. The head is applied to the hidden
    states ourselves: the HF pooling looks for pad ids, which is wrong when pad == EOS or there is no pad."""
    out = model.base_model(
        input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids_from_mask(attention_mask)
    )
    values = model.score(out.last_hidden_state).squeeze(-1)  # (B, T)
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
    if errors:
        stop("\n".join(errors))


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


def save(model, tokenizer, output_dir, run_name):
    """Save model and tokenizer to output_dir, or runs/<run_name>/model when it is ''; returns the directory."""
    out_dir = output_dir or os.path.join("runs", run_name, "model")
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def log_scalars(writer, values, step, prefix=""):
    """Every number in a dict to TensorBoard, tagged prefix + key; the rest (None, samples) is skipped."""
    for key, value in values.items():
        if isinstance(value, (int, float)):
            writer.add_scalar(prefix + key, value, step)


def finish(writer):
    """The end of a run: close the TensorBoard writer; under torchrun, wait for rank 0 (which saves), then all
    processes leave the group together."""
    writer.close()
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def generate(model, **kwargs):
    """model.generate(**kwargs) without a false alarm of transformers: generate() drops an attention mask of all ones
    (prompts without padding) itself, then, once a finished row emits pad tokens, the model warns that a padded input
    came without a mask. Only that warning, only here."""
    with without_log("We strongly recommend passing in an `attention_mask`"):
        return model.generate(**kwargs)


@torch.no_grad()
def sample_completions(model, tokenizer, prompts, max_new_tokens=64, temperature=1.0, batch_size=64):
    """Sample one completion per prompt (left-padded prompts, KV cache, pure sampling: no top-k, no top-p)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    tokenizer.padding_side = "left"
    out = []
    for i in range(0, len(prompts), batch_size):
        enc = tokenizer(prompts[i : i + batch_size], return_tensors="pt", padding=True).to(device)
        gen = generate(
            model, **enc, max_new_tokens=max_new_tokens, do_sample=True, temperature=temperature, top_k=0, top_p=1.0,
            pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        )
        out += tokenizer.batch_decode(gen[:, enc.input_ids.shape[1] :], skip_special_tokens=True)
    tokenizer.padding_side = "right"
    model.train(was_training)
    return [s.strip() for s in out]
