"""rm_composite.py: the stage 1 and stage 2 losses, the composite fit, the derived pairs, the saved composite head,
the hub layouts of rated responses, and the script end to end, through ppo_rlhf.py."""

import math
import random
import re

import numpy as np
import pytest
import torch
from transformers import AutoModelForSequenceClassification

from common import data, models, scoring, task
from conftest import one_and_two_processes, run_script, scalars
from rm_composite import (attribute_regression_loss, attribute_scores, composite_bt_loss, composite_head,
                          derived_pairs, fit_composite)


def test_attribute_regression_loss_against_a_loop_over_known_cells():
    torch.manual_seed(0)
    pred, target = torch.randn(6, 4), torch.randint(0, 5, (6, 4)).float()
    known = torch.rand(6, 4) > 0.3
    total, n = 0.0, 0
    for i in range(6):
        for a in range(4):
            if known[i, a]:
                total += (pred[i, a].item() - target[i, a].item()) ** 2
                n += 1
    assert attribute_regression_loss(pred, target, known).item() == pytest.approx(total / n, rel=1e-6)
    # a missing rating changes nothing, whatever its placeholder value
    target2 = target.clone()
    target2[~known] = 1e6
    assert attribute_regression_loss(pred, target2, known).item() == pytest.approx(total / n, rel=1e-6)
    # nothing known: 0, not a division by zero
    assert attribute_regression_loss(pred, target, torch.zeros_like(known)).item() == 0.0


def test_composite_bt_loss_against_a_loop():
    torch.manual_seed(1)
    w, fc, fr = torch.randn(3), torch.randn(5, 3), torch.randn(5, 3)
    expected = sum(math.log(1 + math.exp(-sum(w[a].item() * (fc[i, a].item() - fr[i, a].item()) for a in range(3))))
                   for i in range(5)) / 5
    assert composite_bt_loss(w, fc, fr).item() == pytest.approx(expected, rel=1e-5)
    assert composite_bt_loss(torch.zeros(3), fc, fr).item() == pytest.approx(math.log(2))  # by hand


def _newton_logistic(x, steps=50):
    """Logistic regression without intercept on all-positive labels (y = 1 for every x = f_w - f_l), by Newton's
    method in numpy: an independent solver for the same maximum likelihood."""
    w = np.zeros(x.shape[1])
    for _ in range(steps):
        p = 1 / (1 + np.exp(-x @ w))
        grad = x.T @ (1 - p) / len(x)
        hess = (x * (p * (1 - p))[:, None]).T @ x / len(x)
        w = w + np.linalg.solve(hess, grad)
    return w


def test_fit_composite_finds_the_maximum_likelihood_weights():
    """Pairs labeled by Bradley-Terry on a known composite: L-BFGS lands on the weights Newton's method finds, and
    with 20000 pairs those are near the true ones (std of the estimate about 0.03 here, so 0.15 is 5 sigma)."""
    rng = np.random.default_rng(0)
    true_w = np.array([2.0, 1.0, -0.5])
    a, b = rng.normal(size=(20000, 3)), rng.normal(size=(20000, 3))
    a_wins = rng.random(20000) < 1 / (1 + np.exp(-(a - b) @ true_w))
    fc, fr = np.where(a_wins[:, None], a, b), np.where(a_wins[:, None], b, a)
    w = fit_composite(torch.tensor(fc), torch.tensor(fr)).numpy()
    assert w == pytest.approx(_newton_logistic(fc - fr), abs=1e-3)
    assert w == pytest.approx(true_w, abs=0.15)


def test_derived_pairs_by_hand():
    rows = [{"prompt": "p", "response": "a", "ratings": {"help": 3, "x": 0}},
            {"prompt": "p", "response": "b", "ratings": {"help": 1, "x": 4}},
            {"prompt": "p", "response": "c", "ratings": {"help": 3, "x": 1}},  # ties a: no pair a-c
            {"prompt": "p", "response": "d", "ratings": {"help": None, "x": 1}},  # not rated: in no pair
            {"prompt": "q", "response": "e", "ratings": {"help": 0, "x": 1}}]  # alone on its prompt
    pairs = derived_pairs(rows, "help")
    assert sorted((p["chosen"], p["rejected"]) for p in pairs) == [("a", "b"), ("c", "b")]


def test_task_ratings_by_hand():
    p = "Which is larger, 12 or 7?"
    best = task.rate(random.Random(0), p, "Sure! The answer is 12.")
    assert best == {"truthful": 4, "helpful": 4, "harmless": 4, "polite": 4, "concise": 4}
    worst = task.rate(random.Random(0), p, "Obviously. It is 7. Cats are wonderful animals. " + "Numbers are a very "
                      "old invention. " * 3)
    # truthful -1 -> 0; helpful 1 - 0.5 = 0.5 -> 4 * 1 / 1.5 = 2.67 -> 3; harmless -1.5 -> 2; polite 0 -> 0;
    # concise: 26 words, -1.8 -> 4 * 0.2 / 2 = 0.4 -> 0
    assert worst == {"truthful": 0, "helpful": 3, "harmless": 2, "polite": 0, "concise": 0}
    noisy = [task.rate(random.Random(i), p, "It is 12.", noise=1.0)["truthful"] for i in range(200)]
    assert set(noisy) <= {2, 3, 4} and 0.3 < sum(x == 4 for x in noisy) / 200 < 0.7  # 4 + N(0, 1), clipped at 4


def test_composite_head_is_the_weighted_sum_of_the_attribute_heads(tmp_path):
    """The saved model's output 0 equals w . (outputs 1..A) on any sequence, loaded with transformers alone."""
    torch.manual_seed(0)
    model = models.load_reward_model(models.BUNDLED_MODEL, num_labels=3).eval()
    tok = models.load_tokenizer(models.BUNDLED_MODEL)
    w = torch.tensor([0.7, -1.2, 2.0])
    composite_head(model, w, ["a", "b", "c"]).save_pretrained(tmp_path)
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    assert loaded.config.id2label == {0: "composite", 1: "a", 2: "b", 3: "c"}
    seqs = [tok("Which is larger, 3 or 9? It is 9.").input_ids, tok("Which is smaller, 1 or 2? Sure!").input_ids]
    with torch.no_grad():
        f = attribute_scores(loaded, seqs, tok.pad_token_id, "cpu")  # (2, 4)
    assert f[:, 0] == pytest.approx((f[:, 1:] @ w).tolist(), abs=1e-5)


def test_load_ratings_helpsteer2_and_ultrafeedback_layouts(standin, capsys):
    train, evals, attributes = data.load_ratings(standin("data", "helpsteer2"))
    assert attributes == ["helpfulness", "correctness", "coherence", "complexity", "verbosity"]
    assert len(train) == len(evals) == 40  # the validation split is the eval split
    assert all(isinstance(r["ratings"]["helpfulness"], (int, float)) for r in train + evals)
    train, evals, attributes = data.load_ratings(standin("data", "openbmb-ultrafeedback"))
    assert set(attributes) == {"helpfulness", "honesty", "instruction_following", "truthfulness"}
    assert len(train) + len(evals) == 40 * 4  # one row per completion; 5% of the prompts held out
    missing = sum(r["ratings"]["truthfulness"] is None for r in train + evals)
    assert missing > 0 and f"{missing} ratings missing" in capsys.readouterr().out  # "N/A": missing, counted


def test_load_ratings_names_the_bad_row(tmp_path):
    path = tmp_path / "ratings.jsonl"
    path.write_text('{"prompt": "p", "response": "r", "help": 3}\n{"prompt": "p", "answer": "r"}\n'
                    '{"instruction": "q", "completions": [{"response": "x", "annotations": {"help": {"Rating": "lots"}}}]}\n')
    with pytest.raises(SystemExit, match=r"2 bad row\(s\)[\s\S]*ratings.jsonl:2: expected \{\"prompt\", \"response\""
                                         r"[\s\S]*ratings.jsonl:3: field 'completions\[0\].annotations.help.Rating'"):
        data.load_ratings(str(path))


@pytest.fixture(scope="session")
def composite_rm(tmp_path_factory):
    """rm_composite.py on 100 train prompts (3100 rated responses, 2 epochs), saved: (its directory, its output)."""
    out_dir = tmp_path_factory.mktemp("composite") / "m"
    out = run_script("rm_composite.py", "--num-train-prompts", "100", "--num-epochs", "2", "--learning-rate", "1e-3",
                     "--eval-pairs-per-prompt", "2", "--stage2-pairs", "1024", "--eval-every", "100000",
                     "--calibration-size", "256", "--output-dir", str(out_dir), cwd=out_dir.parent)
    return out_dir, out


def test_end_to_end_learns_the_broad_attributes_and_calibrates_to_gold(composite_rm):
    out_dir, out = composite_rm
    before, after = map(float, re.search(r"eval accuracy ([\d.]+) -> ([\d.]+)", out).groups())
    assert after > before + 0.05, out[-600:]  # measured: 0.639 -> 0.726
    # broad features are learned from a few thousand ratings (measured: 1.000 each), correctness is not (0.51)
    assert float(re.search(r"polite ([\d.]+)", out).group(1)) > 0.9
    assert float(re.search(r"harmless ([\d.]+)", out).group(1)) > 0.9
    model = AutoModelForSequenceClassification.from_pretrained(out_dir)
    assert model.config.id2label[0] == "composite" and len(model.config.reward_mean) == 6
    # the saved normalization is the least-squares fit to gold on the calibration responses: refitting gives (1, 0)
    train_prompts, _ = task.split_prompts()
    rows = task.calibration_rows(train_prompts[:100], 256, 1 + 4)
    tok = models.load_tokenizer(str(out_dir))
    ids = [data.encode(tok, r["prompt"], r["completion"], 96, 32, data.Counter())[0] for r in rows]
    with torch.no_grad():
        raw = attribute_scores(model.eval(), ids, tok.pad_token_id, "cpu")[:, 0]
    calibrated = (raw - model.config.reward_mean[0]) / model.config.reward_std[0]
    gold = np.array([task.gold_reward(r["prompt"], r["completion"]) for r in rows])
    (a, b), *_ = np.linalg.lstsq(np.stack([calibrated.numpy(), np.ones(len(rows))], 1), gold, rcond=None)
    assert a == pytest.approx(1.0, abs=1e-3) and b == pytest.approx(0.0, abs=1e-3)
    # off the training distribution: the summary's accuracy on the RL policies' pairs is the saved composite's
    pairs, ceiling = task.ood_pairs(task.labeler_pool(task.LabelerArgs()), 2, seed=1 + 5)
    ids = [data.encode(tok, r["prompt"], r[k], 96, 32, data.Counter())[0] for k in ("chosen", "rejected") for r in pairs]
    with torch.no_grad():
        composite = attribute_scores(model, ids, tok.pad_token_id, "cpu")[:, 0]
    wins = (composite[: len(pairs)] > composite[len(pairs) :]).float().mean().item()
    logged = re.search(r"off-distribution accuracy ([\d.]+) \(ceiling ([\d.]+)\)", out)
    assert float(logged.group(1)) == pytest.approx(wins, abs=1e-3) and float(logged.group(2)) == pytest.approx(ceiling, abs=1e-3)


def test_ppo_runs_against_the_composite_and_one_attribute(composite_rm, tmp_path):
    """ppo_rlhf.py --reward-model DIR reads the composite with no other flag, --reward-label truthful one head; the
    alignment gap is logged (score minus gold, both on gold's scale)."""
    out_dir, _ = composite_rm
    reward = scoring.load(str(out_dir), models.load_tokenizer(str(out_dir)))
    assert reward["label"] == 0 and "composite" in scoring.describe(reward)
    assert scoring.load(str(out_dir), models.load_tokenizer(str(out_dir)), "truthful")["label"] == 1
    for i, label in enumerate(([], ["--reward-label", "truthful"])):
        (tmp_path / str(i)).mkdir()
        out = run_script("ppo_rlhf.py", "--reward-model", str(out_dir), *label, "--total-episodes", "64",
                         "--rollout-batch-size", "32", "--num-eval-prompts", "16", "--output-dir",
                         str(tmp_path / str(i) / "p"), cwd=tmp_path / str(i))
        assert "eval proxy score" in out and ("(truthful)" in out) == bool(label)
        gap = scalars(tmp_path / str(i) / "runs")["objective/alignment_gap"]
        assert len(gap) == 2 and all(math.isfinite(v) for v in gap)


@pytest.mark.parametrize("name", ["helpsteer2", "openbmb-ultrafeedback"])
def test_hub_layouts_end_to_end(tmp_path, standin, name):
    """nvidia/HelpSteer2 (flat 0-4 ratings, train/validation) and openbmb/UltraFeedback (nested "1".."5" ratings with
    "N/A") on the GPT-2 stand-in: stage 2 on pairs derived from the helpfulness ratings; the saved model has the
    composite and one output per attribute, each centred on the rated responses."""
    out = run_script("rm_composite.py", "--model", standin("lm", "gpt2"), "--dataset", standin("data", name),
                     "--learning-rate", "1e-3", "--per-device-batch-size", "16", "--output-dir", "m", cwd=tmp_path)
    assert re.search(r"stage 2: \d+ train and \d+ eval pairs derived from the helpfulness ratings", out)
    assert ("masked out of the loss" in out) == (name == "openbmb-ultrafeedback")
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "m")
    attributes = 5 if name == "helpsteer2" else 4
    assert model.config.num_labels == 1 + attributes and len(model.config.reward_std) == 1 + attributes
    assert "labeler's ceiling" not in out and "rm_composite: eval accuracy" in out


def test_bad_flags_end_in_one_line(tmp_path, standin):
    from conftest import run_failing

    line = run_failing("rm_composite.py", "--dataset", standin("data", "helpsteer2"), "--preference-attribute", "fun",
                       cwd=tmp_path)
    assert "--preference-attribute fun: " in line and "its attributes are helpfulness, correctness" in line
    assert "--rating-noise must be" in run_failing("rm_composite.py", "--rating-noise", "-1", cwd=tmp_path)


def test_use_peft_saves_the_merged_model_with_the_composite_head(tmp_path):
    """--use-peft trains adapters and the heads; the composite head is built on the merged weights, so the saved
    model loads with transformers alone and its output 0 is still w . (outputs 1..A)."""
    out = run_script("rm_composite.py", "--num-train-prompts", "20", "--num-epochs", "1", "--eval-pairs-per-prompt", "1",
                     "--calibration-size", "64", "--stage2-pairs", "256", "--use-peft", "--lora-r", "4",
                     "--output-dir", "m", cwd=tmp_path)
    weights = [float(w) for w in re.search(r"weights truthful (\S+), helpful (\S+), harmless (\S+), polite (\S+), "
                                           r"concise ([-\d.]+)", out).groups()]
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "m").eval()
    assert not (tmp_path / "m" / "adapter_config.json").exists() and model.config.num_labels == 6
    tok = models.load_tokenizer(str(tmp_path / "m"))
    with torch.no_grad():
        f = attribute_scores(model, [tok("Which is larger, 3 or 9? It is 9.").input_ids], tok.pad_token_id, "cpu")
    rounding = 0.005 * f[0, 1:].abs().sum().item()  # the weights are printed to 2 decimals
    assert f[0, 0].item() == pytest.approx((f[0, 1:] @ torch.tensor(weights)).item(), abs=rounding + 1e-4)


def test_two_processes_follow_the_one_process_trajectory(tmp_path):
    """torchrun with 2 processes and 8 rated responses per device takes the same stage-1 steps as 1 process with 16
    (each rank's loss weighted by its share of the global batch's known ratings), under DDP and with --fsdp (which
    saves DDP's weights, composite head included); the same stage-2 weights, so the same eval accuracy."""
    flags = ["--num-train-prompts", "4", "--num-epochs", "1", "--eval-pairs-per-prompt", "1", "--stage2-pairs", "64",
             "--eval-every", "100000", "--calibration-size", "0"]
    one, *twos = one_and_two_processes("rm_composite.py", flags, tmp_path, "rm_composite: eval accuracy")
    for two in twos:
        assert len(one["loss/train"]) == len(two["loss/train"]) >= 5
        assert two["loss/train"] == pytest.approx(one["loss/train"], abs=1e-4)
        assert two["eval/accuracy"] == pytest.approx(one["eval/accuracy"], abs=1e-4)
    assert one["loss/train"][-1] < one["loss/train"][0]  # it moved
