"""rm_kwise.py: the K-wise losses against independent formulations, masking, metrics, and end-to-end runs."""

import itertools
import math
import subprocess
import sys
from collections import Counter

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from common import data, models, task
from conftest import ROOT, calibration_refit, check_lora_save, run_script, scalars
from rm_kwise import (LOSSES, agreement, best_of_k_loss, pairwise_loss, plackett_luce_loss, ranking_metrics,
                      score_rankings, score_sequences)

PROMPT = "Which is larger, 12 or 7?"
BAD = "Obviously. It is 7. Numbers are a very old invention. Cats are wonderful animals. Let me think about this for a moment."


def ragged_batch(seed=0, ks=(4, 2, 9, 6), fill=0.0):
    """(P, Kmax) scores best first with K_i real slots per row; padded slots hold `fill`."""
    g = torch.Generator().manual_seed(seed)
    K = max(ks)
    mask = torch.arange(K)[None, :] < torch.tensor(ks)[:, None]
    scores = torch.where(mask, 2 * torch.randn(len(ks), K, generator=g, dtype=torch.float64), torch.tensor(fill, dtype=torch.float64))
    return scores, mask


# ---------------------------------------------------------------- the losses against independent formulations

def pl_nll_by_loop(r):
    """-log P(ranking) under Plackett-Luce as a product of softmax choices: the best from all, the next from the rest."""
    logp = 0.0
    for k in range(len(r) - 1):
        logp += math.log(math.exp(r[k]) / sum(math.exp(x) for x in r[k:]))
    return -logp


def test_plackett_luce_matches_product_of_choices():
    scores, mask = ragged_batch(1)
    expected = sum(pl_nll_by_loop(scores[p, mask[p]].tolist()) for p in range(len(scores))) / len(scores)
    assert plackett_luce_loss(scores, mask).item() == pytest.approx(expected, rel=1e-9)


def test_plackett_luce_is_a_distribution_over_all_rankings():
    """Summed over all K! orders of the same completions, exp(-loss) is 1, and the brute-force enumeration
    ranks the most likely order first: the one sorted by score."""
    r = torch.tensor([[0.3, -1.2, 2.0, 0.7, -0.1]], dtype=torch.float64)
    mask = torch.ones_like(r, dtype=torch.bool)
    probs = {perm: math.exp(-plackett_luce_loss(r[:, list(perm)], mask).item()) for perm in itertools.permutations(range(5))}
    assert sum(probs.values()) == pytest.approx(1.0, abs=1e-12)
    assert max(probs, key=probs.get) == tuple(sorted(range(5), key=lambda i: -r[0, i].item()))
    assert probs[(0, 1, 2, 3, 4)] == pytest.approx(math.exp(-pl_nll_by_loop(r[0].tolist())), rel=1e-9)


def test_pairwise_matches_a_loop_over_pairs():
    scores, mask = ragged_batch(2)
    per_prompt = []
    for p in range(len(scores)):
        r = scores[p, mask[p]].tolist()
        terms = [-math.log(1 / (1 + math.exp(-(r[i] - r[j])))) for i in range(len(r)) for j in range(i + 1, len(r))]
        assert len(terms) == math.comb(len(r), 2)
        per_prompt.append(sum(terms) / len(terms))  # averaged per prompt (InstructGPT's 1 / C(K,2))
    assert pairwise_loss(scores, mask).item() == pytest.approx(sum(per_prompt) / len(per_prompt), rel=1e-9)


def test_best_of_k_by_hand():
    scores = torch.tensor([[1.0, 2.0, 0.0, 5.0], [0.5, -0.5, 9.0, 9.0]], dtype=torch.float64)
    mask = torch.tensor([[True, True, True, False], [True, True, False, False]])
    first = -(1.0 - math.log(math.e + math.e**2 + 1))
    second = -(0.5 - math.log(math.exp(0.5) + math.exp(-0.5)))
    assert best_of_k_loss(scores, mask).item() == pytest.approx((first + second) / 2, rel=1e-12)


@pytest.mark.parametrize("loss", ["pairwise", "plackett-luce", "best-of-k"])
def test_k_equals_2_is_bradley_terry(loss):
    g = torch.Generator().manual_seed(3)
    scores = 3 * torch.randn(16, 2, generator=g, dtype=torch.float64)
    mask = torch.ones(16, 2, dtype=torch.bool)
    bt = -torch.log(1 / (1 + torch.exp(-(scores[:, 0] - scores[:, 1])))).mean()
    assert LOSSES[loss](scores, mask).item() == pytest.approx(bt.item(), rel=1e-9)


# ---------------------------------------------------------------- masking and gradients

@pytest.mark.parametrize("loss", ["pairwise", "plackett-luce", "best-of-k"])
def test_padded_slots_change_neither_loss_nor_gradient(loss):
    fn = LOSSES[loss]
    results = []
    for fill in [0.0, 1e4, -1e4, math.inf, -math.inf, math.nan]:
        scores, mask = ragged_batch(4, fill=fill)
        scores.requires_grad_(True)
        value = fn(scores, mask)
        value.backward()
        assert torch.isfinite(value) and torch.isfinite(scores.grad).all(), fill
        assert (scores.grad[~mask] == 0).all(), fill  # a padded slot gets no gradient
        results.append((value.item(), scores.grad[mask].clone()))
    for value, grad in results[1:]:
        assert value == results[0][0]
        assert torch.equal(grad, results[0][1])
    # and the padded batch equals each ranking on its own, averaged over prompts
    scores, mask = ragged_batch(4)
    alone = [fn(scores[p : p + 1, : int(mask[p].sum())], mask[p : p + 1, : int(mask[p].sum())]) for p in range(len(scores))]
    assert results[0][0] == pytest.approx(torch.stack(alone).mean().item(), rel=1e-12)


@pytest.mark.parametrize("loss", ["pairwise", "plackett-luce", "best-of-k"])
@pytest.mark.parametrize("value", [0.0, 30.0, -1e4])
def test_gradients_finite_when_all_scores_are_equal(loss, value):
    scores, mask = ragged_batch(5, fill=-math.inf)
    scores = torch.where(mask, value, scores).float().requires_grad_(True)
    out = LOSSES[loss](scores, mask)
    out.backward()
    assert torch.isfinite(out) and torch.isfinite(scores.grad).all()
    assert scores.grad[mask].abs().sum() > 0  # equal scores are not a minimum: the gradient pushes the best up
    assert scores.grad[:, 0].lt(0).all()


# ---------------------------------------------------------------- metrics

def test_ranking_metrics_by_hand():
    scores = torch.tensor([[3.0, 1.0, 2.0, 0.0], [0.0, 1.0, 7.0, 7.0]])
    mask = torch.tensor([[True, True, True, False], [True, True, False, False]])
    m = ranking_metrics(scores, mask)
    # pairs: row 0 (0>1 yes, 0>2 yes, 1>2 no), row 1 (0>1 no) -> 2 of 4 pooled
    assert m["accuracy"] == pytest.approx(2 / 4)
    assert m["top1_accuracy"] == pytest.approx(1 / 2)
    assert m["kendall_tau"] == pytest.approx(((2 - 1) / 3 + (-1) / 1) / 2)
    # a tie for the top score is shared among the tied slots: the best completion tied with another gets 1/2, with
    # two others 1/3; a completion other than the best alone at the top gets 0 (padding never counts)
    ties = torch.tensor([[2.0, 2.0, 1.0, 9.0], [1.0, 1.0, 1.0, 9.0], [1.0, 3.0, 3.0, 9.0]])
    three = torch.tensor([[True, True, True, False]] * 3)
    assert ranking_metrics(ties, three)["top1_accuracy"] == pytest.approx((1 / 2 + 1 / 3 + 0) / 3)
    # gold agreement leaves out gold ties; a tie in the scores counts half
    gold = torch.tensor([[2.0, 2.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0]])
    scores = torch.tensor([[3.0, 1.0, 1.0, 0.0], [5.0, 1.0, 0.0, 0.0]])
    assert agreement(scores, gold, mask) == pytest.approx((1 + 0.5 + 1) / 3)


def test_one_forward_scatters_each_completion_to_its_slot(gpt2_no_pad):
    """The flattened ragged batch gives every completion the reward it gets when scored alone."""
    tok = models.load_tokenizer(gpt2_no_pad)
    model = models.load_reward_model(gpt2_no_pad).eval()
    rows = task.make_rankings(task.all_prompts()[:5], task.Labeler(), 2, 6, seed=0)
    counts = Counter()
    ids = [[data.encode(tok, r["prompt"], c, 96, 32, counts)[0] for c in r["completions"]] for r in rows]
    with torch.no_grad():
        scores, mask = score_rankings(model, ids, tok.pad_token_id, torch.device("cpu"))
        for p, r in enumerate(ids):
            assert mask[p].sum() == len(r) and not mask[p, len(r) :].any()
            for k, seq in enumerate(r):
                alone = models.reward_at_last_token(model, torch.tensor([seq]), torch.ones(1, len(seq), dtype=torch.long))
                assert scores[p, k].item() == pytest.approx(alone.item(), abs=1e-5)


# ---------------------------------------------------------------- end to end

def reward(model, tok, prompt, completion):
    counts = Counter()
    ids, _ = data.encode(tok, prompt, completion, 96, 32, counts)
    with torch.no_grad():
        return models.reward_at_last_token(model, torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long)).item()


def test_default_layout_learns_and_saves_a_loadable_reward_model(tmp_path):
    out = run_script("rm_kwise.py", "--num-train-prompts", "240", "--num-epochs", "2", "--learning-rate", "3e-3",
                     "--eval-every", "1000", "--reference-size", "128", "--normalize-std", "--output-dir", "rm", cwd=tmp_path)
    summary = out.strip().splitlines()[-1]
    assert "labeler's ceiling" in summary and "gold agreement" in summary, summary
    acc = float(summary.split("eval pairwise accuracy ")[1].split(" -> ")[1].split(" ")[0])
    assert acc > 0.65, summary
    assert list(tmp_path.glob("runs/rm_kwise__1__*"))  # TensorBoard run lands in the working directory
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm").eval()
    tok = models.load_tokenizer(str(tmp_path / "rm"))
    assert isinstance(model.config.reward_mean, float) and model.config.reward_std > 0
    # off the training distribution, at the first and the last evaluation: the saved model's accuracy on the RL
    # policies' pairs (task.ood_pairs), each pair scored here as a ranking of two
    pairs, ceiling = task.ood_pairs(task.labeler_pool(task.LabelerArgs()), 8, seed=1 + 5)
    ids = [data.encode(tok, r["prompt"], r[k], 96, 32, Counter())[0] for k in ("chosen", "rejected") for r in pairs]
    with torch.no_grad():
        r = score_sequences(model, ids, tok.pad_token_id, "cpu")
    logged = scalars(tmp_path / "runs")
    assert len(logged["eval/ood_accuracy"]) == 2 and logged["eval/ood_ceiling"][-1] == pytest.approx(ceiling, abs=1e-6)
    assert logged["eval/ood_accuracy"][-1] == pytest.approx((r[: len(pairs)] > r[len(pairs) :]).float().mean().item(),
                                                            abs=1e-3)
    # the saved normalization is the calibration to gold (it overrides --normalize-std on the embedded task)
    assert "alignment gap" in summary
    rows = task.calibration_rows(task.split_prompts()[0][:240], 1024, 1 + 4)
    a, b = calibration_refit(tmp_path / "rm", rows, score_sequences)
    assert a == pytest.approx(1.0, abs=1e-3) and b == pytest.approx(0.0, abs=1e-3)
    prompts = task.split_prompts()[1][:10]
    wins = [reward(model, tok, p, task.best_response(p)) > reward(model, tok, p, BAD.replace("7", str(task.correct_answer(p) + 1))) for p in prompts]
    assert all(wins), wins


def test_shuffled_pairs_on_a_user_file_and_normalization_on_given_references(tmp_path, gpt2_no_pad):
    prompts = task.all_prompts()[::8]
    task.export_jsonl(task.make_rankings(prompts, task.Labeler(), 2, 5, seed=0), tmp_path / "rankings.jsonl")
    demos = task.make_sft(prompts[:40], 1, seed=0)
    task.export_jsonl(demos, tmp_path / "demos.jsonl")
    out = run_script("rm_kwise.py", "--model", gpt2_no_pad, "--dataset", "rankings.jsonl", "--loss", "pairwise", "--shuffle-pairs",
                     "--num-epochs", "1", "--prompts-per-batch", "32", "--reference", "demos.jsonl", "--normalize-std",
                     "--output-dir", "rm", cwd=tmp_path)
    train, _ = data.load_rows(str(tmp_path / "rankings.jsonl"), "kwise")
    n_pairs = sum(math.comb(len(r["completions"]), 2) for r in train)
    assert f"shuffled pairs: {n_pairs} pairs from {len(train)} rankings" in out
    assert "shuffled pairs" in out.strip().splitlines()[-1]
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm").eval()
    tok = models.load_tokenizer(str(tmp_path / "rm"))
    raw = torch.tensor([reward(model, tok, d["prompt"], d["completion"]) for d in demos])
    normalized = (raw - model.config.reward_mean) / model.config.reward_std
    assert normalized.mean().item() == pytest.approx(0.0, abs=1e-4)
    # the population std, as rm_bt.py sets it (the unbiased one would leave sqrt(39/40) = 0.987 here)
    assert normalized.std(correction=0).item() == pytest.approx(1.0, abs=1e-3)


def test_shuffled_pairs_needs_the_pairwise_loss(tmp_path):
    p = subprocess.run([sys.executable, str(ROOT / "rm_kwise.py"), "--shuffle-pairs"], capture_output=True, text=True, cwd=tmp_path)
    assert p.returncode != 0 and "--loss pairwise" in p.stderr


@pytest.mark.parametrize("layout", [[], ["--loss", "pairwise", "--shuffle-pairs"]], ids=["per-prompt", "shuffled-pairs"])
def test_two_processes_follow_the_one_process_trajectory(tmp_path, layout):
    """torchrun with 2 processes, each taking half of every global batch of 16 prompts (or of the pairs), logs the
    same train loss and accuracy at every step as 1 process, within 1e-4, under DDP (per prompt) and with --fsdp
    (shuffled pairs); rank 0 alone prints and saves. 35 prompts:
    the last batch of 3 prompts is split 2 + 1, where an unweighted average over ranks is not the batch mean."""
    flags = ["--num-train-prompts", "35", "--num-epochs", "1", "--eval-every", "1000", "--reference-size", "64",
             "--calibration-size", "64", *layout]
    runs = {}
    variants = [("one", 1, []), ("two", 2, ["--fsdp"] if layout else [])]  # shuffled pairs: with --fsdp
    for name, nproc, extra in variants:
        cwd = tmp_path / name
        cwd.mkdir()
        out = run_script("rm_kwise.py", *flags, *extra, "--output-dir", str(cwd / "rm"), cwd=cwd, nproc=nproc)
        assert out.count("rm_kwise (") == 1 and f"on {nproc} process(es)" in out
        runs[name] = scalars(cwd / "runs")
    one, two = runs["one"], runs["two"]
    assert len(one["loss/train"]) == len(two["loss/train"]) >= 3
    assert two["loss/train"] == pytest.approx(one["loss/train"], abs=1e-4)
    assert two["rewards/accuracies"] == pytest.approx(one["rewards/accuracies"], abs=1e-4)
    assert two["eval/accuracy"] == pytest.approx(one["eval/accuracy"], abs=1e-4)
    assert one["eval/accuracy"][-1] > one["eval/accuracy"][0] + 0.1  # it moved (measured: 0.51 -> 0.71 in both layouts)


@pytest.mark.parametrize("kind", ["llama"])  # rm_bt.py runs the same reward-model LoRA path on all three
def test_use_peft_on_nectar_trains_adapters_and_head(tmp_path, standin, kind):
    """--use-peft on the Llama stand-in (rm_bt.py's tests run all three through the same models.prepare,
    LastTokenReward and save) with Nectar's 7-wise rankings: adapters and the scalar
    head trained, nothing else; the merged save loads with transformers and scores as the adapters did."""
    base = standin("lm", kind)
    out = run_script("rm_kwise.py", "--model", base, "--dataset", standin("data", "nectar"), "--num-epochs", "2",
                     "--learning-rate", "1e-2", "--use-peft", "--lora-r", "2", "--merge-lora", "--output-dir", "rm",
                     cwd=tmp_path)
    assert "rm_kwise (plackett-luce)" in out
    check_lora_save(tmp_path / "rm", base, 2, head=True)
