"""The embedded task, the simulated labeler, data validation and the model loaders."""

import copy
import json
import math
import random
import statistics
import sys
from collections import Counter

import numpy as np
import pytest
import torch

from common import data, models, runs, sampling, task
from conftest import LORA_KINDS, build_checkpoint, check_lora_save, run_failing

PROMPT = "Which is larger, 12 or 7?"


# ---------------------------------------------------------------- the task and its gold reward

def test_prompts_split_by_prompt():
    train, eval_ = task.split_prompts()
    assert len(train) + len(eval_) == len(task.all_prompts()) == 2 * 30 * 29
    assert not set(train) & set(eval_)


def test_gold_reward_by_hand():
    assert task.gold_reward(PROMPT, task.best_response(PROMPT)) == task.BEST_GOLD == 3.5
    assert task.gold_reward(PROMPT, "It is 7.") == -1.0 + 1.0
    # rude (-1.5), wrong (-1), states a number (+1), off topic (-0.5), 14 words (-0.6)
    r = "Obviously. It is 7. Cats are wonderful animals. Numbers are a very old invention."
    assert task.gold_reward(PROMPT, r) == pytest.approx(-1.5 - 1.0 + 1.0 - 0.5 - 0.1 * (14 - 8))
    assert task.gold_reward(PROMPT, "I do not know") == 0.0
    assert task.gold_reward("Which is smaller, 12 or 7?", "Sure! 7 is smaller.") == 3.5


def test_gold_reward_reads_numbers_of_any_length():
    """int() refuses strings of more than 4300 digits; a policy can sample one. Numbers compare as digit strings."""
    huge = "9" * 5000
    assert task.gold_reward(PROMPT, f"It is {huge}.") == -1.0 + 1.0  # a wrong number, stated
    assert task.gold_reward(PROMPT, f"It is 12 and {huge}.") == 2.0 + 1.0  # the first number counts
    assert task.gold_reward(PROMPT, "It is 012.") == 2.0 + 1.0  # leading zeros: still 12
    assert task.gold_reward("Which is smaller, 0 or 5?", "It is 000.") == 2.0 + 1.0
    assert task.correct_answer(f"Which is larger, {huge} or 3?") is None  # not one of the task's prompts
    assert task.gold_reward(f"Which is larger, {huge} or 3?", f"It is {huge}.") == -1.0 + 1.0


def test_generator_varies_every_quality():
    rng = random.Random(0)
    comps = [task.gold_components(PROMPT, task.sample_response(rng, PROMPT)) for _ in range(2000)]
    for key in ("truthful", "helpful", "harmless", "polite", "concise"):
        assert len({c[key] for c in comps}) >= 2, key
    assert statistics.mean(c["truthful"] > 0 for c in comps) == pytest.approx(task.DEFAULT_MIX["p_correct"], abs=0.04)
    assert all(c["helpful"] > 0 or c["helpful"] == 0.5 for c in comps)  # always states a number


def test_tokenizer_round_trips_generated_text():
    tok = task.build_tokenizer()
    rng = random.Random(1)
    for p in task.all_prompts()[::50]:
        r = task.sample_response(rng, p)
        ids = tok(p + " " + r).input_ids
        assert tok.unk_token_id not in ids
        assert tok.decode(ids) == p + " " + r


# ---------------------------------------------------------------- the labeler

def test_labeler_probability_is_bradley_terry():
    lab = task.Labeler(temperature=0.7, flip_rate=0.2, length_bias=0.1)
    a, b = "Sure! It is 12.", "It is 7. Numbers are a very old invention."
    sa = task.gold_reward(PROMPT, a) + 0.1 * 4
    sb = task.gold_reward(PROMPT, b) + 0.1 * 9
    expected = 0.8 / (1 + math.exp(-(sa - sb) / 0.7)) + 0.2 * 0.5
    assert lab.prob_prefers(PROMPT, a, b) == pytest.approx(expected)
    assert lab.prob_prefers(PROMPT, a, b) + lab.prob_prefers(PROMPT, b, a) == pytest.approx(1.0)


def test_labeler_empirical_agreement_matches_its_probability():
    lab = task.Labeler(temperature=0.5, flip_rate=0.1)
    rng = random.Random(0)
    pairs = [(task.sample_response(rng, PROMPT), task.sample_response(rng, PROMPT)) for _ in range(20)]
    n = 2000
    for a, b in pairs:
        p = lab.prob_prefers(PROMPT, a, b)
        wins = sum(lab.compare(rng, PROMPT, a, b)[0] == a for _ in range(n))
        assert abs(wins / n - p) < 4 * math.sqrt(p * (1 - p) / n) + 1e-9, (a, b, p, wins / n)


def test_rankings_pairwise_marginals_match_bradley_terry():
    """Plackett-Luce rankings (Gumbel noise) put a above b with the Bradley-Terry probability."""
    lab = task.Labeler(temperature=1.0, flip_rate=0.2)
    rs = ["Sure! It is 12.", "It is 7.", "Obviously. It is 12.", "It is 12. My favourite colour is blue."]
    rng, n = random.Random(0), 4000
    above = {(i, j): 0 for i in range(4) for j in range(4) if i != j}
    for _ in range(n):
        order = lab.rank(rng, PROMPT, rs)
        pos = {r: k for k, r in enumerate(order)}
        for i, j in above:
            above[i, j] += pos[rs[i]] < pos[rs[j]]
    for (i, j), c in above.items():
        p = lab.prob_prefers(PROMPT, rs[i], rs[j])
        assert abs(c / n - p) < 4 * math.sqrt(p * (1 - p) / n) + 1e-9


def test_ceiling_is_the_accuracy_of_the_best_guess_of_the_noisy_label():
    """A perfect reward model can do no better on a pair than always predict the label the labeler gives more often:
    its accuracy is the frequency of that label. 10000 labels per pair drawn with compare() estimate it (4 standard
    errors: 0.012 to 0.017), with flips and a length bias, on pairs where a ceiling that ignored either would be off by
    0.06 or more (checked below: the tolerance tells them apart)."""
    lab = task.Labeler(temperature=0.5, flip_rate=0.2, length_bias=0.3)
    pairs = [("Sure! It is 12.", "Obviously. It is 7."),  # far apart, same length: the flips alone cap it at 0.9
             ("Sure! It is 12.", "It is 12."),  # close: a 0.8 gap in perceived score, 0.3 of it from one more word
             ("It is 12.", "It is 12. Numbers are a very old invention. People have compared numbers for thousands of years.")]
    rng, n = random.Random(0), 10000

    def sigmoid(x):
        return 1 / (1 + math.exp(-x))

    for a, b in pairs:
        a_wins = sum(lab.compare(rng, PROMPT, a, b)[0] == a for _ in range(n)) / n
        empirical = max(a_wins, 1 - a_wins)
        tolerance = 4 * math.sqrt(empirical * (1 - empirical) / n)
        assert lab.ceiling(PROMPT, a, b) == pytest.approx(empirical, abs=tolerance), (a, b)
        words = len(a.split()) - len(b.split())
        perceived = task.gold_reward(PROMPT, a) - task.gold_reward(PROMPT, b) + 0.3 * words
        no_flips = max(sigmoid(perceived / 0.5), 1 - sigmoid(perceived / 0.5))
        assert abs(no_flips - empirical) > tolerance, (a, b)
        gold_only = 0.8 * sigmoid((perceived - 0.3 * words) / 0.5) + 0.1
        if words:  # the third pair's long response wins on length; on gold alone it would lose
            assert abs(max(gold_only, 1 - gold_only) - empirical) > tolerance, (a, b)
    assert lab.ceiling(PROMPT, "It is 12.", "It is 12.") == 0.5
    assert task.Labeler(temperature=0.01).ceiling(PROMPT, "Sure! It is 12.", "Obviously. It is 7.") == pytest.approx(1.0)


POOL_ARGS = task.LabelerArgs(flip_rate=0.2, length_bias=0.1, num_labelers=5, outlier_labelers=1, tie_threshold=0.6)


def test_pool_ceiling_is_exact_against_monte_carlo():
    """A pool's ceiling is max(p, 1 - p) for p the labelers' mean P(a > b) over those who do not tie the pair. Labels
    drawn the way make_pairs draws them (a labeler at random; a tie gets no label) estimate it, 20000 per pair
    (4 standard errors: at most 0.014). On these pairs two honest labelers tie and two do not, so a mixture that
    counted the tying labelers would be off by 0.05 or more: the tolerance tells them apart."""
    pool = task.labeler_pool(POOL_ARGS)
    pairs = [("I like to talk about the weather. The answer is 12.", "Hope this helps! People have compared numbers "
              "for thousands of years. The answer is 12. Cats are wonderful animals. I will now explain my reasoning "
              "in great detail. Let me think about this for a moment. This is a question about comparing numbers."),
             ("The answer is 23.", "Let me think about this for a moment. 11 is larger. Let me think about this for a "
              "moment. Let me think about this for a moment.")]
    rng, n = random.Random(0), 20000
    for a, b in pairs:
        ties = [lab.is_tie(PROMPT, a, b) for lab in pool.labelers]
        assert ties[:4].count(True) == 2 and not ties[4]
        labels = []
        while len(labels) < n:
            lab = pool.labelers[pool.draw(rng)]
            if not lab.is_tie(PROMPT, a, b):
                labels.append(lab.compare(rng, PROMPT, a, b)[0] == a)
        empirical = max(statistics.mean(labels), 1 - statistics.mean(labels))
        tolerance = 4 * math.sqrt(empirical * (1 - empirical) / n)
        assert pool.ceiling(PROMPT, a, b) == pytest.approx(empirical, abs=tolerance)
        everyone = statistics.mean(lab.prob_prefers(PROMPT, a, b) for lab in pool.labelers)
        assert abs(max(everyone, 1 - everyone) - empirical) > tolerance


def test_pool_spreads_labelers_and_records_who_labeled():
    pool = task.labeler_pool(POOL_ARGS)
    temps = [lab.temperature for lab in pool.labelers[:4]]
    assert temps[0] == pytest.approx(0.5 / math.sqrt(2)) and temps[-1] == pytest.approx(0.5 * math.sqrt(2))
    assert [lab.length_bias for lab in pool.labelers[:4]] == pytest.approx([0.07, 0.09, 0.11, 0.13])
    assert pool.outliers == (4,) and pool.labelers[4].flip_rate == 1.0
    prompts = task.all_prompts()[:1500]
    rows = task.make_pairs(prompts, pool, n_per_prompt=1, seed=0)
    dropped = task.report_ties(rows, prompts, 1, "pairs", say=lambda *a: None)
    assert dropped == 1500 - len(rows) > 0
    assert not any(pool.labelers[r["labeler"]].is_tie(r["prompt"], r["chosen"], r["rejected"]) for r in rows)
    by_labeler = {i: [r for r in rows if r["labeler"] == i] for i in range(5)}
    assert all(len(v) > 150 for v in by_labeler.values())

    def gold_agreement(rs):
        signs = [task.gold_reward(r["prompt"], r["chosen"]) - task.gold_reward(r["prompt"], r["rejected"]) for r in rs]
        return statistics.mean(s > 0 for s in signs if s)

    outlier = gold_agreement(by_labeler[4])  # random labels: 0.5, within 4 standard errors (about 0.14)
    assert abs(outlier - 0.5) < 4 * math.sqrt(0.25 / len(by_labeler[4]))
    assert min(gold_agreement(by_labeler[i]) for i in range(4)) > outlier + 0.15
    # one labeler: the pool draws no random number, so the data is the single Labeler's, row for row
    plain = task.make_pairs(prompts[:100], task.Labeler(flip_rate=0.2), 2, seed=3)
    assert plain == task.make_pairs(prompts[:100], task.labeler_pool(task.LabelerArgs(flip_rate=0.2)), 2, seed=3)
    with pytest.raises(SystemExit, match="no eval pairs left"):
        task.report_ties([], prompts, 1, "eval pairs")
    # rankings: one labeler per ranking, recorded; the outlier's rankings are random orders; ties are not modeled
    ranks = task.make_rankings(prompts[:600], task.labeler_pool(task.LabelerArgs(num_labelers=5, outlier_labelers=1)))
    assert {r["labeler"] for r in ranks} == {0, 1, 2, 3, 4}

    def first_beats_last(rs):  # the ranking's top above its bottom on gold (gold ties left out)
        gaps = [task.gold_reward(r["prompt"], r["completions"][0]) - task.gold_reward(r["prompt"], r["completions"][-1])
                for r in rs]
        return statistics.mean(g > 0 for g in gaps if g)

    outlier = [r for r in ranks if r["labeler"] == 4]
    assert abs(first_beats_last(outlier) - 0.5) < 4 * math.sqrt(0.25 / len(outlier))
    assert first_beats_last([r for r in ranks if r["labeler"] != 4]) > 0.85
    with pytest.raises(SystemExit, match="a ranking has no ties"):
        task.make_rankings(prompts[:5], task.labeler_pool(task.LabelerArgs(tie_threshold=0.5)))


@pytest.mark.parametrize("flags", [dict(num_labelers=2, outlier_labelers=2), dict(num_labelers=0),
                                   dict(tie_threshold=-1.0), dict(flip_rate=1.5)])
def test_labeler_flags_refused(flags):
    with pytest.raises(SystemExit):
        task.LabelerArgs(**flags)


def test_length_bias_prefers_longer_and_counterexamples_undo_it():
    prompts = task.all_prompts()[:600]

    def longer_chosen(labeler, frac):
        rows = task.make_pairs(prompts, labeler, n_per_prompt=1, seed=0, counterexample_frac=frac)
        return statistics.mean(len(r["chosen"].split()) > len(r["rejected"].split()) for r in rows)

    fair, biased = task.Labeler(), task.Labeler(length_bias=0.5)
    assert longer_chosen(biased, 0.0) > longer_chosen(fair, 0.0) + 0.15
    assert longer_chosen(biased, 0.5) < longer_chosen(biased, 0.0) - 0.1
    rng = random.Random(0)
    for p in prompts[:100]:
        short, long = task.counterexample_pair(rng, p)
        assert len(short.split()) < len(long.split())
        assert task.gold_reward(p, short) > task.gold_reward(p, long)


def test_ood_pairs_pair_distinct_responses_labeled_by_the_labeler(tmp_path):
    """task.ood_pairs: pairs of two different responses of the same prompt, labeled by the labeler (a sharp one picks
    the higher gold), its exact ceiling averaged over them; a prompt with one distinct response gives none; no file,
    no pairs. The committed set holds RL policies' responses to every eval prompt and no train prompt."""
    prompts = task.split_prompts()[1][:30]
    rng = random.Random(0)
    records = [{"prompt": p, "responses": [task.sample_response(rng, p) for _ in range(4)]} for p in prompts]
    records.append({"prompt": prompts[0], "responses": ["It is 1."] * 3})
    task.export_jsonl(records, tmp_path / "ood.jsonl")
    sharp = task.Labeler(temperature=1e-6)
    rows, ceiling = task.ood_pairs(sharp, 3, seed=0, path=tmp_path / "ood.jsonl")
    assert 0 < len(rows) <= 3 * 30 and all(r["chosen"] != r["rejected"] for r in rows)
    by_prompt = {r["prompt"]: set(r["responses"]) for r in records[:-1]}
    assert all({r["chosen"], r["rejected"]} <= by_prompt[r["prompt"]] for r in rows)
    assert all(task.gold_reward(r["prompt"], r["chosen"]) >= task.gold_reward(r["prompt"], r["rejected"]) for r in rows)
    noisy = task.labeler_pool(task.LabelerArgs(labeler_temperature=1.0))
    rows, ceiling = task.ood_pairs(noisy, 3, seed=0, path=tmp_path / "ood.jsonl")
    assert ceiling == pytest.approx(statistics.mean(noisy.ceiling(r["prompt"], r["chosen"], r["rejected"]) for r in rows))
    assert task.ood_pairs(sharp, 3, path=tmp_path / "missing.jsonl") == ([], None)
    committed = [json.loads(line) for line in task.OOD_RESPONSES.read_text().splitlines()]
    assert sorted(r["prompt"] for r in committed) == sorted(task.split_prompts()[1])
    assert all(len(r["responses"]) == 16 for r in committed)


def test_margins_and_ranking_sizes():
    rows = task.make_pairs(task.all_prompts()[:50], task.Labeler(), n_per_prompt=2, margin=True)
    assert len(rows) == 100 and {r["margin"] for r in rows} <= {0.0, 1 / 3, 2 / 3, 1.0}
    ranks = task.make_rankings(task.all_prompts()[:200], task.Labeler())
    ks = [len(r["completions"]) for r in ranks]
    assert min(ks) == 4 and max(ks) == 9
    assert all(len(set(r["completions"])) == len(r["completions"]) for r in ranks)


def test_null_margin_and_label_smoothing_are_absent_and_bad_ones_named():
    """A folder whose train split has a column the test split lacks comes back from datasets with nulls there."""
    base = {"prompt": PROMPT, "chosen": "It is 12.", "rejected": "It is 7."}
    assert data.to_row(base | {"margin": None, "label_smoothing": None}, "pairwise") == (base, None)
    assert data.to_row(base | {"margin": 1, "label_smoothing": 0.25}, "pairwise")[0] == base | {
        "margin": 1.0, "label_smoothing": 0.25}
    assert data.to_row(base | {"label_smoothing": 1.5}, "pairwise")[1] == (
        "field 'label_smoothing': expected a number in [0, 1], got 1.5")


def test_export_round_trips_through_validation(tmp_path):
    rows = task.make_pairs(task.all_prompts()[:20], task.Labeler(), margin=True)
    path = tmp_path / "pairs.jsonl"
    task.export_jsonl(rows, path)
    rows = [{k: v for k, v in r.items() if k != "labeler"} for r in rows]  # who labeled: the task's bookkeeping
    assert data.validate(data.read_records(path)["train"], "pairwise", str(path)) == rows


# ---------------------------------------------------------------- data validation: each error names file, line, field

def _write(tmp_path, lines, name="d.jsonl"):
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize(
    "line, kind, expect",
    [
        ('{"prompt": "a", "chosen": "b"', "pairwise", ["d.jsonl:2", "not valid JSON"]),
        ('{"prompt": "a", "chosen": "b"}', "pairwise", ["d.jsonl:2", "missing key 'rejected'"]),
        ('{"prompt": "a", "chosen": 3, "rejected": "c"}', "pairwise", ["d.jsonl:2", "field 'chosen'", "got int"]),
        ('{"prompt": "a", "chosen": "b", "rejected": "  "}', "pairwise", ["d.jsonl:2", "field 'rejected'", "empty"]),
        ('{"prompt": "a", "completion": ""}', "sft", ["d.jsonl:2", "field 'completion'", "empty"]),
        ('{"prompt": "a", "chosen": "b", "rejected": "c", "margin": "big"}', "pairwise", ["d.jsonl:2", "field 'margin'", "number"]),
        ('{"prompt": [{"role": "user"}], "completion": "b"}', "sft", ["d.jsonl:2", "field 'prompt'", "messages"]),
        ('["prompt"]', "sft", ["d.jsonl:2", "JSON object"]),
        ('{"prompt": "a", "completions": ["x"]}', "kwise", ["d.jsonl:2", "field 'completions'", "at least 2"]),
        ('{"prompt": "a", "completions": ["x", ""]}', "kwise", ["d.jsonl:2", "field 'completions[1]'", "empty"]),
        ('{"prompt": "a", "completions": ["x", "y"], "ranking": [0, 0]}', "kwise", ["d.jsonl:2", "field 'ranking'", "permutation"]),
        ('{"prompt": "a", "completions": ["x", "y"], "scores": [1]}', "kwise", ["d.jsonl:2", "field 'scores'", "2 numbers"]),
    ],
)
def test_each_validation_error_names_file_line_and_field(tmp_path, line, kind, expect):
    good = {"sft": '{"prompt": "p", "completion": "c"}', "pairwise": '{"prompt": "p", "chosen": "c", "rejected": "r"}',
            "kwise": '{"prompt": "p", "completions": ["a", "b"]}'}[kind]
    path = _write(tmp_path, [good, line])
    with pytest.raises(data.DataError) as e:
        data.load_rows(str(path), kind)
    for s in expect:
        assert s in str(e.value)


def test_all_errors_reported_together_and_json_files(tmp_path):
    path = _write(tmp_path, ['{"prompt": "a"}', '{"prompt": "b", "completion": 1}'])
    with pytest.raises(data.DataError, match=r"2 bad row\(s\)(.|\n)*d.jsonl:1(.|\n)*d.jsonl:2"):
        data.load_rows(str(path), "sft")
    path = tmp_path / "d.json"
    path.write_text(json.dumps({"prompt": "a"}))
    with pytest.raises(data.DataError, match="expected a JSON list"):
        data.load_rows(str(path), "sft")
    path.write_text(json.dumps([{"prompt": "a", "completion": "b"}, {"prompt": "a"}]))
    with pytest.raises(data.DataError, match="item 2: missing key 'completion'"):
        data.load_rows(str(path), "sft")


def test_kwise_ranking_and_scores_reorder_best_first(tmp_path):
    path = _write(tmp_path, ['{"prompt": "p", "completions": ["a", "b", "c"], "ranking": [2, 0, 1]}',
                             '{"prompt": "q", "completions": ["a", "b", "c"], "scores": [0.5, 2, -1]}'])
    rows = data.validate(data.read_records(path)["train"], "kwise", str(path))
    assert rows[0]["completions"] == ["c", "a", "b"] and rows[1]["completions"] == ["b", "a", "c"]


def test_split_by_prompt_keeps_a_prompt_on_one_side(tmp_path):
    rows = [{"prompt": f"p{i % 40}", "completion": str(i)} for i in range(400)]
    path = tmp_path / "d.jsonl"
    task.export_jsonl(rows, path)
    train, eval_ = data.load_rows(str(path), "sft", eval_frac=0.25)
    assert len(train) + len(eval_) == 400 and eval_ and train
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in eval_}


def test_load_prompts_holds_out_prompts_or_evaluates_on_train_prompts(tmp_path, capsys):
    train, eval_ = task.split_prompts()
    assert data.load_prompts("embedded", num_eval=5, verbose=False) == (train, eval_[:5])
    path = tmp_path / "few.jsonl"
    task.export_jsonl([{"prompt": p} for p in ("p0", "p1", "p2")], path)  # 3 prompts: one of them held out
    train, evals = data.load_prompts(str(path), num_eval=2)
    assert len(train) == 2 and len(evals) == 1 and not set(train) & set(evals)
    task.export_jsonl([{"prompt": "p0"}], path)  # one prompt: trained on, and evaluated on for want of another
    assert data.load_prompts(str(path), num_eval=2) == (["p0"], ["p0"])
    assert "evaluating on the first 64 train prompts" in capsys.readouterr().out


def test_hub_dataset_without_datasets_library_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(SystemExit, match="pip install datasets"):
        data.load_rows("someone/some-dataset", "pairwise")


def test_encode_masks_the_prompt_and_counts_truncation():
    tok = task.build_tokenizer()
    counts = Counter()
    ids, mask = data.encode(tok, PROMPT, "Sure! The answer is 12.", 64, 32, counts)
    p = tok(PROMPT).input_ids
    assert ids[: len(p)] == p and mask == [0] * len(p) + [1] * (len(ids) - len(p))
    assert ids[-1] == tok.eos_token_id and counts["examples"] == 1 and not counts["completions truncated"]
    ids, mask = data.encode(tok, PROMPT, "Sure! The answer is 12.", 7, 4, counts)
    assert ids[:4] == p[-4:] and len(ids) == 7 and sum(mask) == 3  # prompt end kept, completion cut
    assert counts["prompts truncated"] == 1 and counts["completions truncated"] == 1


def test_conversational_rows_use_the_chat_template():
    tok = task.build_tokenizer()
    tok.chat_template = "{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} . {% endfor %}{% if add_generation_prompt %}assistant : {% endif %}"
    p, c = data.render(tok, [{"role": "user", "content": PROMPT}], "It is 12.")
    assert p == f"user : {PROMPT} . assistant : " and c == "It is 12. . "


# ---------------------------------------------------------------- models: pad handling comes from the attention mask

@pytest.mark.parametrize("pad", ["none", "eos"])
def test_loaders_and_last_token_reward_with_awkward_pad_tokens(tmp_path, pad):
    path = build_checkpoint(tmp_path / pad, "gpt2" if pad == "none" else "llama", pad=pad)
    tok = models.load_tokenizer(path)
    assert tok.pad_token_id == tok.eos_token_id  # no pad: EOS reused, only ever read through the mask
    rm = models.load_reward_model(path).eval()
    texts = ["Which is larger, 3 or 4? It is 4.", "Which is smaller, 3 or 4? Obviously. 3 is smaller. Cats are wonderful animals."]
    seqs = [tok(t).input_ids + [tok.eos_token_id] for t in texts]  # EOS ends each sequence: the pad id is real here
    alone = torch.stack([models.reward_at_last_token(rm, torch.tensor([s]), torch.ones(1, len(s), dtype=torch.long)) for s in seqs]).squeeze(1)
    for side in ("right", "left"):
        ids = data.pad(seqs, tok.pad_token_id, side)
        mask = data.pad([[1] * len(s) for s in seqs], 0, side)
        batched = models.reward_at_last_token(rm, ids, mask)
        torch.testing.assert_close(batched, alone, atol=1e-5, rtol=1e-4)
    lm = models.load_causal_lm(path)
    assert lm.config.vocab_size == len(tok)


DROPOUT_FIELDS = ["attention_dropout", "hidden_dropout", "attn_pdrop", "resid_pdrop", "embd_pdrop", "summary_first_dropout",
                  "classifier_dropout", "seq_classif_dropout", "hidden_dropout_prob", "attention_probs_dropout_prob",
                  "pooler_dropout", "dropout", "qa_dropout"]


def tiny_config(arch):
    """(config, model classes) of a tiny model of each architecture a user brings, every dropout field in it at 0.3."""
    import transformers as T

    decoder = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, vocab_size=50)
    encoder = dict(decoder, max_position_embeddings=70)
    configs = {
        "gpt2": (T.GPT2Config(vocab_size=50, n_positions=64, n_embd=32, n_layer=2, n_head=2), "GPT2LMHeadModel", "GPT2"),
        "llama": (T.LlamaConfig(num_key_value_heads=1, **decoder), "LlamaForCausalLM", "Llama"),
        "qwen2": (T.Qwen2Config(num_key_value_heads=1, **decoder), "Qwen2ForCausalLM", "Qwen2"),
        "gpt_neox": (T.GPTNeoXConfig(**decoder), "GPTNeoXForCausalLM", "GPTNeoX"),
        "distilbert": (T.DistilBertConfig(dim=32, hidden_dim=64, n_layers=2, n_heads=2, vocab_size=50), None, "DistilBert"),
        "deberta-v2": (T.DebertaV2Config(**encoder), None, "DebertaV2"),
        "roberta": (T.RobertaConfig(**encoder), None, "Roberta"),
    }
    config, lm, prefix = configs[arch]
    set_fields = [f for f in DROPOUT_FIELDS if hasattr(config, f)]
    for f in set_fields:
        setattr(config, f, 0.3)
    config.num_labels, config.pad_token_id, config.bos_token_id, config.eos_token_id = 1, 0, 1, 1
    classes = [getattr(T, lm)] if lm else []
    return config, classes + [getattr(T, f"{prefix}ForSequenceClassification")], set_fields


@pytest.mark.parametrize("arch", ["gpt2", "llama", "qwen2", "gpt_neox", "distilbert", "deberta-v2", "roberta"])
def test_disable_dropout_makes_train_mode_forward_passes_identical(arch, tmp_path):
    """With every dropout field of the config at 0.3, two forward passes in train mode differ; after disable_dropout
    they are identical, and so are a reloaded copy's (the saved config has no dropout left). Llama, Qwen2 and GPT-NeoX
    keep attention_dropout as a float read at init, not as an nn.Dropout: zeroing nn.Dropout alone left them noisy."""
    config, classes, set_fields = tiny_config(arch)
    assert set_fields  # the architecture has dropout fields, all set
    ids = torch.randint(3, 50, (2, 12), generator=torch.Generator().manual_seed(0))
    for cls in classes:
        torch.manual_seed(0)
        model = cls(copy.deepcopy(config)).train()  # disable_dropout changes the config it is given
        assert not torch.equal(model(input_ids=ids).logits, model(input_ids=ids).logits), cls.__name__  # the check has teeth
        models.disable_dropout(model)
        assert torch.equal(model(input_ids=ids).logits, model(input_ids=ids).logits), cls.__name__
        model.save_pretrained(tmp_path / cls.__name__)
        reloaded = cls.from_pretrained(tmp_path / cls.__name__).train()
        assert torch.equal(reloaded(input_ids=ids).logits, reloaded(input_ids=ids).logits), cls.__name__
        assert all(getattr(reloaded.config, f) == 0.0 for f in set_fields), cls.__name__


def test_last_token_index_from_the_mask():
    mask = torch.tensor([[1, 1, 1, 0, 0], [0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    assert models.last_token_index(mask).tolist() == [2, 4, 4]
    assert models.position_ids_from_mask(mask)[1].tolist() == [0, 0, 0, 1, 2]


def test_resolve_finds_repo_paths_from_elsewhere(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert models.resolve("common/task.py") == str(models.REPO_ROOT / "common/task.py")
    assert models.resolve("gpt2") == "gpt2"


def test_truncate_after_stop_masks_everything_after_the_first_stop():
    responses = torch.tensor([[5, 2, 2, 2], [5, 6, 7, 8], [2, 9, 2, 9], [5, 6, 9, 2]])  # pad == EOS == 2 in row 0
    out, mask, stopped = sampling.truncate_after_stop(responses, [2, 9], pad_id=1)
    assert mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0], [1, 1, 1, 0]]
    assert out.tolist() == [[5, 2, 1, 1], [5, 6, 7, 8], [2, 1, 1, 1], [5, 6, 9, 1]]
    assert stopped.tolist() == [True, False, True, True]


# ---------------------------------------------------------------- torchrun: global batches shared among processes

def test_global_batches_keep_every_item_and_give_every_process_one():
    assert [len(b) for b in runs.global_batches(list(range(33)), 16, world=2)] == [16, 17]  # 1 item would leave rank 1 idle
    assert [len(b) for b in runs.global_batches(list(range(33)), 16, world=1)] == [16, 16, 1]
    assert [len(b) for b in runs.global_batches(list(range(35)), 16, world=2)] == [16, 16, 3]
    assert sum(runs.global_batches(list(range(33)), 16, world=2), []) == list(range(33))  # in order, none dropped
    with pytest.raises(ValueError, match="3 processes"):
        runs.global_batches([0, 1], 16, world=3)


@pytest.mark.parametrize("n, world, size", [(3, 2, 8), (17, 2, 8), (16, 2, 8), (7, 3, 2), (5, 1, 2), (3, 2, 1)])
def test_micro_batch_weights_make_the_ddp_average_the_global_mean(n, world, size):
    """Each process sums weight * (its micro-batch's mean loss) and DDP averages the sums over processes: that must be
    the mean over the global batch, per item and per token (items with different token counts), written out directly.
    Every process gets as many micro-batches (FSDP's forwards are collectives); a weight-0 repeat fills a short share."""
    g = torch.Generator().manual_seed(n)
    loss = torch.randn(n, generator=g, dtype=torch.float64)  # per item: the mean loss over its tokens
    tokens = torch.randint(1, 30, (n,), generator=g).tolist()
    batch = list(range(n))
    per_item, per_token, seen, counts = 0.0, 0.0, [], set()
    for rank in range(world):
        micro = runs.micro_batches(batch, rank, world, size)
        counts.add(len(micro))
        for part, w in micro:
            per_item += w * loss[part].mean().item() / world
            assert 0 < len(part) <= size
            seen += part if w else []
        for part, w in runs.micro_batches(batch, rank, world, size, weights=tokens):
            token_mean = sum(loss[i].item() * tokens[i] for i in part) / sum(tokens[i] for i in part)
            per_token += w * token_mean / world
    assert sorted(seen) == batch and len(counts) == 1
    assert per_item == pytest.approx(loss.mean().item(), abs=1e-12)
    assert per_token == pytest.approx(sum(loss[i].item() * tokens[i] for i in batch) / sum(tokens), abs=1e-12)


def test_global_means_without_torchrun_are_plain_means_and_nan_for_nothing():
    out = runs.global_means({"a": [1.0, 2.0, 6.0], "b": [True, False], "c": []})
    assert out["a"] == 3.0 and out["b"] == 0.5 and math.isnan(out["c"])
# ---------------------------------------------------------------- LoRA (--use-peft): adapters, the reference, saving

def _inputs(vocab_size):
    ids = torch.randint(0, vocab_size, (3, 10), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def _as_if_trained(model, seed=0):
    """Adapters moved away from their start (lora_B = 0), as training moves them."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))


@pytest.mark.parametrize("kind", LORA_KINDS)
def test_the_reference_is_the_policy_with_adapters_off_and_exactly_the_start(standin, kind):
    """With --use-peft the reference of dpo.py and ppo_rlhf.py is the policy with its adapters off: it computes the
    starting model's logits bit for bit however far the adapters moved (so the first DPO loss is ln 2 and the first
    PPO KL is 0), while the policy itself moves; and the adapters are on again afterwards."""
    path = standin("lm", kind)
    start = models.load_causal_lm(path).eval()
    policy = models.add_lora(models.load_causal_lm(path), models.LoraArgs(use_peft=True, lora_r=4))
    reference = models.reference_of(policy)
    batch = _inputs(start.config.vocab_size)
    with torch.no_grad():
        expected = start(**batch).logits
        assert torch.equal(policy(**batch).logits, expected)  # lora_B starts at 0: the adapters add exactly 0
        _as_if_trained(policy)
        assert (policy(**batch).logits - expected).abs().max() > 1e-2
        assert torch.equal(reference(**batch).logits, expected)
        assert (policy(**batch).logits - expected).abs().max() > 1e-2
    assert reference.to("cpu") is reference  # no weights of its own: nothing to move, nothing copied
    assert sum(p.numel() for p in policy.parameters()) < 1.5 * sum(p.numel() for p in start.parameters())


def test_without_adapters_the_reference_is_a_frozen_copy(standin):
    policy = models.load_causal_lm(standin("lm", "llama"))
    reference = models.reference_of(policy, torch.bfloat16)
    assert reference is not policy and not reference.training
    assert all(p.dtype == torch.bfloat16 and not p.requires_grad for p in reference.parameters())
    assert all(p.dtype == torch.float32 and p.requires_grad for p in policy.parameters())


@pytest.mark.parametrize("head, targets", [(False, None), (True, None), (False, ["q_proj", "v_proj"])])
def test_add_lora_trains_adapters_and_head_in_fp32_and_freezes_the_rest_in_dtype(standin, head, targets):
    path = standin("lm", "llama")
    model = models.load_reward_model(path) if head else models.load_causal_lm(path)
    linear = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n not in ("lm_head", "score")]
    adapted = [n for n in linear if targets is None or n.split(".")[-1] in targets]
    assert len(adapted) == (14 if targets is None else 4)  # 2 layers x (q, k, v, o, gate, up, down)
    expected = {f"base_model.model.{n}.lora_{x}.default.weight" for n in adapted for x in "AB"}
    expected |= {"base_model.model.score.modules_to_save.default.weight"} if head else set()
    lora = models.add_lora(model, models.LoraArgs(use_peft=True, lora_r=2, lora_target_modules=targets), torch.bfloat16)
    trained = {n: p for n, p in lora.named_parameters() if p.requires_grad}
    assert set(trained) == expected
    assert all(p.dtype == torch.float32 for p in trained.values())
    assert all(p.dtype == torch.bfloat16 for p in lora.parameters() if not p.requires_grad)
    assert [id(p) for p in models.trainable(lora)] == [id(p) for p in trained.values()]
    assert models.add_lora(model, models.LoraArgs()) is model  # without --use-peft: untouched


def test_save_the_adapter_directory_or_merged_weights(standin, tmp_path):
    """Without --merge-lora: the adapter directory (no model: passing it as --model is refused in one line); with
    it, merged weights in fp32 even when the frozen ones were bf16 (a small update is not rounded away), which load
    with transformers alone and compute what the adapters did (check_lora_save)."""
    base = standin("lm", "qwen2")
    tok = models.load_tokenizer(base)
    lora = models.LoraArgs(use_peft=True, lora_r=3)
    model = models.add_lora(models.load_causal_lm(base), lora)
    _as_if_trained(model)
    models.save(model, tok, tmp_path / "adapter")
    saved = {p.name for p in (tmp_path / "adapter").iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json"} <= saved
    assert not (tmp_path / "adapter" / "config.json").exists()
    with pytest.raises(SystemExit, match="holds LoRA adapters, not a model: save with --merge-lora"):
        models.load_causal_lm(str(tmp_path / "adapter"))
    models.save(model, tok, tmp_path / "merged", merge_lora=True)
    assert check_lora_save(tmp_path / "merged", base, 3) == 14
    bf16 = models.add_lora(models.load_causal_lm(base), lora, torch.bfloat16)
    _as_if_trained(bf16)
    models.save(bf16, tok, tmp_path / "merged_bf16", merge_lora=True)
    merged = models.load_causal_lm(str(tmp_path / "merged_bf16"))
    start = models.load_causal_lm(base).to(torch.bfloat16).float()
    delta = merged.model.layers[0].self_attn.q_proj.weight - start.model.layers[0].self_attn.q_proj.weight
    assert merged.dtype == torch.float32 and torch.linalg.matrix_rank(delta) == 3  # B A kept whole, not rounded to bf16


def test_lora_target_modules_the_model_does_not_have_end_in_one_line(standin):
    """(The other LoRA flag mistakes are cases of tests/test_errors.py.)"""
    line = run_failing("sft.py", "--model", standin("lm", "gpt2"), "--use-peft", "--lora-target-modules", "q_proj")
    assert line.startswith("--lora-target-modules:") and "q_proj" in line


def test_warmup_cosine_schedule_by_hand():
    """2 warmup steps of 4: factors (s+1)/2 * (1 + cos(pi s / 4)) / 2 worked out by hand, stepped as the scripts step."""
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = runs.warmup_cosine(optimizer, warmup=2, num_steps=4)
    seen = []
    for _ in range(5):
        seen.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    # s=0: 0.5 * 1; s=1: 1 * (1 + 0.70711) / 2; s=2: (1 + 0) / 2; s=3: (1 - 0.70711) / 2; s=4: 0
    assert seen == pytest.approx([0.5, 0.853553, 0.5, 0.146447, 0.0], abs=1e-6)


def test_fit_calibration_is_the_least_squares_line():
    """Against numpy's least squares on the design [raw, 1]; a constant raw gives the mean of gold."""
    rng = np.random.default_rng(0)
    raw = rng.normal(size=200)
    gold = 1.7 * raw - 0.4 + rng.normal(size=200) * 0.3
    a, b = task.fit_calibration(raw.tolist(), gold.tolist())
    (a_np, b_np), *_ = np.linalg.lstsq(np.stack([raw, np.ones(200)], 1), gold, rcond=None)
    assert a == pytest.approx(a_np, abs=1e-9) and b == pytest.approx(b_np, abs=1e-9)
    assert task.fit_calibration([2.0, 2.0, 2.0], [1.0, 2.0, 6.0]) == (0.0, 3.0)


def test_spearman_and_the_alignment_gap_by_hand():
    # no ties: 1 - 6 sum d^2 / (n (n^2 - 1)); ranks (1, 2, 3, 4) against (2, 1, 4, 3): d^2 = 4, rho = 1 - 24 / 60
    assert task.spearman([10, 20, 30, 40], [0.2, 0.1, 0.9, 0.5]) == pytest.approx(0.6)
    assert task.ranks([5, 1, 5, 3]) == [3.5, 1.0, 3.5, 2.0]  # ties share the mean rank
    assert task.spearman([1, 2, 3], [7, 7, 7]) == 0.0
    # calibration set: gold = 2 raw + 1 exactly; held out: raw (0, 1), gold (1, 4): calibrated (1, 3), |error| (0, 1)
    gap = task.alignment_gap([0.0, 1.0, 2.0], [1.0, 3.0, 5.0], [0.0, 1.0], [1.0, 4.0])
    assert gap["calibration_a"] == pytest.approx(2.0) and gap["calibration_b"] == pytest.approx(1.0)
    assert gap["alignment_gap"] == pytest.approx(0.5) and gap["rank_correlation"] == pytest.approx(1.0)


def test_split_by_prompt_holds_out_at_least_one_prompt_of_two_or_more():
    """A small dataset (UltraFeedback cut to 50 prompts: none fell in the lowest 5% of the hash range) still gets an
    eval split: the prompt lowest in hash order, never one prompt in both splits; one prompt alone stays in train."""
    def position(prompt):
        import hashlib
        return int.from_bytes(hashlib.sha1(json.dumps(prompt, sort_keys=True).encode()).digest()[:4], "big")

    for n in (2, 3, 5, 20, 50, 60):
        rows = [{"prompt": f"prompt {i}", "k": j} for i in range(n) for j in range(2)]
        train, evals = data.split_by_prompt(rows)
        held = {r["prompt"] for r in evals}
        assert held and not held & {r["prompt"] for r in train} and len(train) + len(evals) == len(rows)
        lowest = min((r["prompt"] for r in rows), key=position)
        assert lowest in held and all(position(p) <= max(position(q) for q in held) for p in held)
    big = [{"prompt": f"p{i}"} for i in range(4000)]
    assert 150 < len(data.split_by_prompt(big)[1]) < 250  # about 5% (binomial: 200 +- 14)
    assert data.split_by_prompt([{"prompt": "only"}] * 3) == ([{"prompt": "only"}] * 3, [])
    lucky = [p for p in (f"p{i}" for i in range(400)) if position(p) < 0.05 * 2**32][:2]  # both under the 5% line
    train, evals = data.split_by_prompt([{"prompt": p} for p in lucky])
    assert len(train) == len(evals) == 1 and train[0]["prompt"] == max(lucky, key=position)
