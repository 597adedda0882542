"""expert_iteration.py: the best-of-n selection against a loop, and the rounds' bookkeeping on a tiny setting (what
each round samples, keeps, and fine-tunes from)."""

import json
import re

import pytest
import torch

import expert_iteration
from common import models, task
from conftest import run_script, scalars


def test_best_of_n_against_a_loop_first_of_equal_scores():
    scores = torch.tensor([0.1, 0.7, 0.7, -1.0, 2.0, 2.0, 1.0, 3.0, 0.0])  # 3 prompts x 3 samples, two with ties
    texts = [f"t{i}" for i in range(9)]
    rows, top, mean, empty = expert_iteration.select(["p0", "p1", "p2"], texts, scores, 3)
    for i in range(3):
        block = scores[3 * i : 3 * i + 3].tolist()
        first_best = block.index(max(block))
        assert rows[i] == {"prompt": f"p{i}", "completion": f"t{3 * i + first_best}"}
        assert top[i].item() == max(block) and abs(mean[i].item() - sum(block) / 3) < 1e-6
    assert [r["completion"] for r in rows] == ["t1", "t4", "t7"] and empty == 0
    texts[4] = ""  # the best of prompt 1 is an empty response: left out, counted
    rows, _, _, empty = expert_iteration.select(["p0", "p1", "p2"], texts, scores, 3)
    assert [r["completion"] for r in rows] == ["t1", "t7"] and empty == 1


def test_rounds_sample_keep_the_best_and_fine_tune_from_the_last_round(tmp_path):
    (tmp_path / "prompts").mkdir()
    train, evals = task.split_prompts()
    task.export_jsonl([{"prompt": p} for p in train[:12]], tmp_path / "prompts" / "train.jsonl")
    task.export_jsonl([{"prompt": p} for p in evals[:6]], tmp_path / "prompts" / "test.jsonl")
    out = run_script("expert_iteration.py", "--dataset", "prompts", "--rounds", "2", "--n", "3", "--prompts-per-round",
                     "8", "--sft-epochs", "1", "--response-length", "16", "--sampling-batch-size", "16",
                     "--output-dir", str(tmp_path / "final"), cwd=tmp_path)
    (run,) = (tmp_path / "runs").glob("expert_iteration__1__*")
    assert f"round 1: fine-tuning {models.BUNDLED_MODEL} on the 8 kept responses" in out
    assert f"round 2: fine-tuning {run.relative_to(tmp_path)}/round1/model on the 8 kept responses" in out
    for rnd in (1, 2):
        for split, count in (("train", 8), ("test", 6)):
            samples = [json.loads(line) for line in (run / f"round{rnd}" / f"{split}_samples.jsonl").open()]
            kept = [json.loads(line) for line in (run / f"round{rnd}" / "data" / f"{split}.jsonl").open()]
            assert len(samples) == len(kept) == count
            for s, k in zip(samples, kept):  # the judge (gold) scored all 3; the first best one was kept
                assert len(s["responses"]) == 3 and k["prompt"] == s["prompt"]
                gold = [task.gold_reward(s["prompt"], t) for t in s["responses"]]
                assert s["scores"] == pytest.approx(gold, abs=1e-6)  # float32 scores
                assert k["completion"] == s["responses"][s["scores"].index(max(s["scores"]))]
        mean_of_n, kept_score = map(float, re.search(rf"round {rnd}: best-of-3 on 8 train prompts, score (-?[\d.]+) "
                                                     r"\(mean of n\) -> (-?[\d.]+) \(kept\)", out).groups())
        assert kept_score >= mean_of_n
    train_prompts = [{json.loads(line)["prompt"] for line in (run / f"round{r}" / "data" / "train.jsonl").open()}
                     for r in (1, 2)]
    assert train_prompts[0] != train_prompts[1]  # a fresh subset of the 12 train prompts each round
    assert out.count("round 1: sft: eval loss") == 1 and "the last policy saved to " + str(tmp_path / "final") in out
    assert models.load_causal_lm(str(tmp_path / "final")).config.vocab_size == 189
    elapsed = scalars(run)["charts/elapsed_seconds"]
    assert len(elapsed) == 2 and 0 < elapsed[0] < elapsed[1]
