"""Several processes on PyTorch's own engines (torchrun starts them; runs.setup_distributed joins them):
DistributedDataParallel by default, each process holding a full copy and gradients averaged in backward (bucketed,
overlapped with the backward pass); with --fsdp, FSDP2 (`fully_shard`): parameters, gradients and optimizer state
split over the processes, each transformer block gathered just before it runs and freed after (Zhao et al. 2023,
"PyTorch FSDP"; the per-parameter sharding of torchtitan)."""

import sys
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from common import runs


@dataclass
class ParallelArgs:
    """The flags of multi-process training, the same in every script."""

    fsdp: bool = False
    """under torchrun: shard every model of the run (trained and frozen) over the processes with FSDP2, each
    transformer block a unit, instead of a full copy on each (DDP). For models whose weights, gradients and Adam state
    do not fit one device"""
    fsdp_cpu_offload: bool = False
    """with --fsdp on GPUs: keep the shards, their gradients and the optimizer step in CPU memory, each block moved
    to the GPU as it runs: for models larger than the GPUs together (slower: every step crosses PCIe)"""

    def __post_init__(self):
        if self.fsdp_cpu_offload and not self.fsdp:
            raise SystemExit("--fsdp-cpu-offload offloads FSDP's shards: it needs --fsdp")


SHARDED_RUN = False  # set by check() for an --fsdp run (see sharded_run)


def sharded_run():
    """Whether this run shards its models (--fsdp under torchrun): models.from_pretrained then reads the weights on
    rank 0 only (the other ranks build the model on the meta device, no memory), every model stays in CPU memory
    until shard() moves its shards to the device and broadcasts rank 0's weights into them."""
    return SHARDED_RUN


def check(parallel, world, device):
    """Stop with one line per problem where --fsdp means nothing or cannot be honoured (before any model loads)."""
    global SHARDED_RUN
    SHARDED_RUN = parallel.fsdp and world > 1
    problems = []
    if parallel.fsdp and world == 1:
        problems.append("--fsdp shards the models over processes: start the script with torchrun --nproc-per-node N "
                        "(N >= 2); one process has nothing to shard with")
    if parallel.fsdp_cpu_offload and device.type == "cpu":
        problems.append("--fsdp-cpu-offload moves the shards from the GPU to CPU memory: this run is on the CPU "
                        "already (no GPU), drop the flag")
    if problems:
        runs.stop("\n".join(problems))


def blocks(model):
    """The transformer blocks: the modules of the ModuleList that holds most of the parameters (GPT-2's
    transformer.h, Llama's and Qwen's model.layers, with or without LoRA around them); none in a plain head."""
    lists = [m for m in model.modules() if isinstance(m, torch.nn.ModuleList) and len(m) > 0]
    return list(max(lists, key=lambda m: sum(p.numel() for p in m.parameters()))) if lists else []


def fsdp_units(model):
    """The FSDP2 units among the model's modules. torch.distributed.fsdp is imported by shard() alone (it loads
    DTensor, about a second per process): a run that never imported it has none."""
    fsdp = sys.modules.get("torch.distributed.fsdp")
    if fsdp is None or not isinstance(model, torch.nn.Module):
        return []
    return [m for m in model.modules() if isinstance(m, fsdp.FSDPModule)]


def _policies(dtype, cpu_offload):
    """bf16 parameters in forward and backward with gradients reduced in fp32 where the run computes in bf16 (the
    mixed precision of torchtitan); shards in CPU memory with cpu_offload."""
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy

    mp = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32) if dtype != torch.float32 else \
        MixedPrecisionPolicy()
    return {"mp_policy": mp, "offload_policy": CPUOffloadPolicy() if cpu_offload else OffloadPolicy()}


def shard(model, parallel, dtype=torch.float32):
    """FSDP2 in place: fully_shard on each transformer block, then on the whole (its embeddings, final norm, head),
    which must be the module that training calls (e.g. models.LastTokenReward around a reward model: a part called on
    its own would find the whole's weights sharded). Generation and evaluation run inside parallel.gathered."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
    from torch.distributed.fsdp import fully_shard

    kw = _policies(dtype, parallel.fsdp_cpu_offload)
    rank0 = dist.get_rank() == 0
    full = model.state_dict() if rank0 else {}  # rank 0's weights (the others: meta)
    for block in blocks(model):
        fully_shard(block, **kw)
    fully_shard(model, **kw)  # each process keeps its shard, moved to its device
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    if any(p.is_meta for p in model.parameters()) or any(b.is_meta for b in model.buffers()):
        model.to_empty(device=device)  # storage for the shards, filled below
    # rank 0's weights into every process's shards, one tensor at a time (no process holds a second full copy)
    set_model_state_dict(model, full, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
    for b in model.buffers():  # buffers are not sharded (rotary tables, some not saved): rank 0's everywhere
        dist.broadcast(b, 0)
    del full
    model._get_fsdp_state()._lazy_init()  # the whole is the root now, whichever part runs first (evaluation may)
    return model


def sharded(model):
    """Whether the model (or a part of it) is sharded with FSDP2, gathered at the moment or not."""
    return bool(fsdp_units(model))


def wrap(model, parallel, world, dtype=torch.float32):
    """The module that training calls: the model itself in one process, DDP around it under torchrun, or the model
    sharded in place with --fsdp (its gradients are then reduce-scattered in backward, as DDP's are all-reduced)."""
    if world == 1:
        return model
    if parallel.fsdp:
        return shard(model, parallel, dtype)
    return DDP(model, broadcast_buffers=False)  # constant buffers (masks, rotary tables): a forward has no collective


def frozen(model, parallel, world, dtype=torch.float32):
    """A frozen model of the run (reference, reward): sharded too with --fsdp, else as it was."""
    if world > 1 and parallel.fsdp and isinstance(model, torch.nn.Module):
        return shard(model, parallel, dtype)
    return model


@contextmanager
def accumulating(model, sync):
    """Gradient accumulation: the gradients of micro-batches before the last stay local (DDP's no_sync, FSDP's
    requires_gradient_sync off); sync=True on the last one, whose backward reduces the sum over every micro-batch."""
    if isinstance(model, DDP) and not sync:
        with model.no_sync():
            yield
    elif model in fsdp_units(model):  # the root unit: it sets every unit below it
        model.set_requires_gradient_sync(sync)
        yield
    else:
        yield


@contextmanager
def gathered(*models):
    """Every FSDP unit of the models gathered once (one all-gather each, on every rank together), kept through any
    number of forward passes, freed at the end: generation (hundreds of forwards, one per token) and evaluation, where
    ranks may run different numbers of forwards. Nothing happens for models that are not sharded."""
    units = [u for m in models for u in fsdp_units(m)]
    for u in units:
        u.set_reshard_after_forward(False, recurse=False)
        u.unshard()
    try:
        yield
    finally:
        for u in units:
            u.reshard()
            u.set_reshard_after_forward(True, recurse=False)


def full_state_dict(model):
    """The whole model's weights gathered to rank 0 in CPU memory (every rank must call it; the others get {}); the
    model's own state dict when it is not sharded. The model may be a part of the sharded root (a reward model inside
    models.LastTokenReward)."""
    if not sharded(model):
        return (model.module if isinstance(model, DDP) else model).state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def plain(model, rank=0):
    """A model that saves with save_pretrained and loads anywhere: the model itself (DDP's inner module), or for a
    sharded one, on rank 0, an unsharded copy built from its config with the gathered weights (None elsewhere).
    Every rank must call it."""
    if isinstance(model, DDP):
        return model.module
    if not sharded(model):
        return model
    weights = full_state_dict(model)
    if rank != 0:
        return None
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    auto = AutoModelForSequenceClassification if hasattr(inner, "score") else AutoModelForCausalLM
    copy = auto.from_config(inner.config, dtype=torch.float32)
    if hasattr(model, "get_base_model"):  # the same adapters around it
        from peft import get_peft_model

        copy = get_peft_model(copy, model.peft_config["default"])
    copy.load_state_dict(weights)
    return copy


def memory_per_rank(params, optimizer):
    """Bytes this process holds for the trained model: parameters, gradients, optimizer state (its shards under
    FSDP; everything under DDP)."""
    def local(t):
        t = t.to_local() if hasattr(t, "to_local") else t
        return t.numel() * t.element_size()

    grads = sum(local(p.grad) for p in params if p.grad is not None)
    state = sum(local(v) for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v) and v.dim() > 0)
    return {"parameters": sum(local(p) for p in params), "gradients": grads, "optimizer": state}
