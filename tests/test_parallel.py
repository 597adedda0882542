"""common/parallel.py under torchrun (2 processes, gloo): generation with FSDP2 gathers each unit once per call,
not once per token, and samples what the unsharded model samples; the gathered save loads in a plain process and
computes what the sharded model computed."""

import json
import subprocess
import sys

import torch
from transformers import AutoModelForCausalLM

from common import models
from conftest import ROOT

CHILD = r'''
import json, sys, torch
import torch.distributed.fsdp._fully_shard._fsdp_param_group as group
from common import models, parallel, runs, sampling
rank, world, device, dtype = runs.setup_distributed(cuda=False)
gathers = {"n": 0}
real = group.foreach_all_gather
def counted(*args, **kwargs):
    gathers["n"] += 1
    return real(*args, **kwargs)
group.foreach_all_gather = counted
torch.manual_seed(0)
model = models.load_causal_lm(models.BUNDLED_MODEL)
plain_copy = models.load_causal_lm(models.BUNDLED_MODEL)
parallel.wrap(model, parallel.ParallelArgs(fsdp=True), world)
units = len(parallel.fsdp_units(model))
tok = models.load_tokenizer(models.BUNDLED_MODEL)
query = torch.tensor([tok("Which is larger, 3 or 9?").input_ids] * 2)
def greedy(m):
    return m.generate(input_ids=query, attention_mask=torch.ones_like(query), max_new_tokens=12, do_sample=False,
                      min_new_tokens=12, pad_token_id=tok.pad_token_id, synced_gpus=False)
out = {}
with torch.no_grad():
    before = gathers["n"]
    with parallel.gathered(model):
        sharded = greedy(model)
    out["gathered"] = gathers["n"] - before
    before = gathers["n"]
    per_token = greedy(model)  # FSDP's default: every forward gathers every unit
    out["per_token"] = gathers["n"] - before
    out["same"] = torch.equal(sharded, greedy(plain_copy)) and torch.equal(per_token, sharded)
    with parallel.gathered(model):
        out["logits"] = model(input_ids=query).logits[0, -1, :5].tolist()
saved = parallel.plain(model, rank)
if rank == 0:
    saved.save_pretrained(sys.argv[1])
# an --fsdp run: rank 0 alone reads the checkpoint (the Llama stand-in: rotary tables are buffers, not saved)
parallel.check(parallel.ParallelArgs(fsdp=True), world, device)
llama = models.load_causal_lm(sys.argv[2])
out["meta"] = all(p.is_meta for p in llama.parameters())
parallel.wrap(llama, parallel.ParallelArgs(fsdp=True), world)
ids = torch.tensor([[1, 5, 9, 13, 2, 7]])
with torch.no_grad(), parallel.gathered(llama):
    sharded = llama(input_ids=ids).logits
from transformers import AutoModelForCausalLM
whole = AutoModelForCausalLM.from_pretrained(sys.argv[2])(input_ids=ids).logits
out["llama_diff"] = (sharded - whole).abs().max().item()
# one file per rank: two processes printing to one pipe can interleave their lines
with open(f"{sys.argv[1]}.rank{rank}.json", "w") as f:
    json.dump({"rank": rank, "units": units, **out}, f)
'''


def test_generation_gathers_once_per_call_and_the_gathered_save_loads_plainly(tmp_path, standin):
    """Also: under --fsdp only rank 0 reads a checkpoint (rank 1 builds on the meta device, holding nothing), and
    after sharding every rank computes what the whole model computes (weights and buffers broadcast from rank 0)."""
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", str(script),
                        str(tmp_path / "saved"), standin("lm", "llama")], capture_output=True, text=True, timeout=300, cwd=ROOT,
                       env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})
    assert p.returncode == 0, p.stderr[-3000:]
    rows = [json.loads((tmp_path / f"saved.rank{r}.json").read_text()) for r in range(2)]
    for r in rows:
        assert r["units"] == 5  # 4 blocks and the whole model (embeddings, final norm, tied output layer)
        assert r["gathered"] == r["units"]  # once per unit for the whole generate call
        assert r["per_token"] >= 12 * r["units"]  # without it: every unit at each of the 12 forwards
        assert r["same"]  # the tokens the unsharded model generates
        assert r["meta"] == (r["rank"] == 1)  # rank 1 never held the weights
        assert r["llama_diff"] < 1e-5  # fp32: the same weights (a random or missing one would be off by 1e-2 or more)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "saved").eval()
    tok = models.load_tokenizer(models.BUNDLED_MODEL)
    query = torch.tensor([tok("Which is larger, 3 or 9?").input_ids] * 2)
    with torch.no_grad():
        logits = loaded(input_ids=query).logits[0, -1, :5]
    assert logits.tolist() == rows[0]["logits"]  # bit for bit: the same weights, the same computation
