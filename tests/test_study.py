"""The study's math against independent formulations, and its CSV and plots on synthetic points (the runs
themselves are the scripts, tested in their own files)."""

import itertools
import math
import random
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "experiments"))
import methods  # noqa: E402
import noise  # noqa: E402
import study  # noqa: E402


def test_best_of_n_kl_matches_the_exact_kl_of_a_fine_discrete_distribution():
    """Base policy uniform over M responses with distinct scores: best-of-n picks the i-th lowest with probability
    (i/M)^n - ((i-1)/M)^n, and its KL to uniform tends to log n - (n-1)/n as M grows."""
    M = 200_000
    i = np.arange(1, M + 1)
    for n in (1, 2, 4, 16, 64):
        p = (i / M) ** n - ((i - 1) / M) ** n
        kl = float(np.sum(np.where(p > 0, p * np.log(np.maximum(p, 1e-300) * M), 0.0)))
        assert study.bon_kl(n) == pytest.approx(kl, abs=1e-3), n
    assert study.bon_kl(1) == 0.0 and study.bon_kl(2) == pytest.approx(math.log(2) - 0.5)


def test_expected_best_of_n_equals_brute_force_over_all_subsets():
    rng = random.Random(0)
    N = 7
    judge = [rng.gauss(0, 1) for _ in range(N)]
    value = [rng.gauss(0, 1) for _ in range(N)]
    for n in range(1, N + 1):
        subsets = list(itertools.combinations(range(N), n))
        brute = sum(value[max(s, key=lambda k: judge[k])] for s in subsets) / len(subsets)
        assert study.expected_best_of_n(judge, value, n) == pytest.approx(brute, abs=1e-12), n
    assert study.expected_best_of_n(judge, value, 1) == pytest.approx(sum(value) / N)  # n = 1: the mean
    assert study.expected_best_of_n(value, value, N) == max(value)  # n = N: the best there is
    with pytest.raises(ValueError, match="best-of-8 needs 1 <= n <= 7"):
        study.expected_best_of_n(judge, value, 8)


@pytest.mark.parametrize("form", ["rl", "bon"])
def test_gao_fit_recovers_known_coefficients(form):
    d = np.linspace(0.1, 4.0, 30)
    r = study.gao_curve(d, 1.3, 0.45, form)
    alpha, beta = study.fit_gao(d, r, form)
    assert (alpha, beta) == pytest.approx((1.3, 0.45), abs=1e-9)
    noisy = r + np.random.default_rng(0).normal(0, 0.02, len(d))  # noise moves the fit a little, not a lot
    assert study.fit_gao(d, noisy, form) == pytest.approx((1.3, 0.45), abs=0.05)
    # the forms against their definitions at one point: rl d (alpha - beta log d), bon d (alpha - beta d)
    expected = 2.0 * (1.3 - 0.45 * (math.log(2.0) if form == "rl" else 2.0))
    assert study.gao_curve([2.0], 1.3, 0.45, form)[0] == pytest.approx(expected)


def test_csv_round_trip_and_plots_from_synthetic_points(tmp_path):
    rows = [dict(part="frontier", method="best-of-n (gold judge)", setting=f"n={n}", step=0, kl=study.bon_kl(n), gold=0.1 * n)
            for n in (1, 2, 4)]
    rows += [dict(part="frontier", method=m, setting=s, step=k, kl=0.5 * k, gold=0.3 * k)
             for m, s in (("PPO (gold reward)", "kl_coef=0.1"), ("DPO", "beta=0.5")) for k in range(4)]
    fits = []
    for method, form in (("PPO", "rl"), ("best-of-n", "bon")):
        d = np.linspace(0.0, 3.0, 6)
        for k, dk in enumerate(d):
            rows.append(dict(part="overoptimization", method=method, setting="RM from 4 pairs/prompt", step=k, kl=dk**2,
                             gold=float(study.gao_curve([dk], 1.0, 0.5, form)[0]), proxy=dk))
        fits += [dict(method=method, setting="RM from 4 pairs/prompt", reward="gold", form=form, alpha=1.0, beta=0.5)]
    rows[-1]["alignment_gap"] = 0.5  # a PPO point against a calibrated RM: the third panel
    rows += [dict(part="length", method="PPO", setting=s, step=64 * k, kl=0.1 * k, gold=-0.1 * k, response_tokens=20 + k)
             for s in ("RM: length-biased labels, 0% counterexamples", "RM: length-biased labels, 60% counterexamples") for k in range(5)]
    features = {f"feature_{f}": 0.5 + 0.1 * i for i, f in enumerate(("truthful", "helpful", "harmless", "polite", "concise"))}
    rows += [dict(part="data-scale", method=m, setting=f"{m}{n}", labels=n, responses_read=2 * n, accuracy=0.7, ceiling=0.9,
                  **features) for m in ("pairs (rm_bt.py)", "rankings of 4-9 (rm_kwise.py)") for n in (100, 1000)]
    rows += [dict(part="alignment-gap", method=m, setting=m, alignment_gap=0.8, gold_accuracy=0.8, ppo_gold=1.0)
             for m in ("RM0 (the labeler's pairs)", "RM0's pairs + 300 random", "RM0's pairs + 300 targeted")]
    rows += [dict(part="methods", method=m, setting=f"seed={s}", seed=s, step=0, win_rate=0.5 + 0.02 * i + 0.01 * s,
                  win_rate_se=0.02, gold=0.3 * i, gold_se=0.1, kl=0.4 * i, seconds=60.0 * i, distinct_2=0.5)
             for i, m in enumerate(methods.METHODS) for s in (1, 2, 3)]
    rows += [dict(part="noise", method=f"{name}, {labels} labels", setting=labels, step=k, kl=0.5 * k, gold=0.2 * k,
                  proxy=0.3 * k) for name, labels, _, _ in noise.REWARDS for k in range(4)]
    rows += [dict(part="noise_end", method="SFT (base)", setting="", step=0, kl=0.0, gold=-0.2, distinct_2=0.6)]
    rows += [dict(part="noise_end", method=f"{name}, {labels} labels", setting=labels, step=3, kl=1.5, gold=0.6,
                  proxy=0.9, peak_gold=0.6, peak_kl=1.5, distinct_2=0.4, entropy_start=1.2, entropy_end=0.8)
             for name, labels, _, _ in noise.REWARDS]
    study.write_csv(tmp_path / "results.csv", rows)
    back = study.read_csv(tmp_path / "results.csv")
    assert len(back) == len(rows) and back[0] == rows[0] | {"step": 0.0}  # numbers come back as floats, text as text
    length = [r for r in back if r["part"] == "length"]
    assert "proxy" not in back[0] and length[-1]["response_tokens"] == 24.0  # empty cells are dropped, not zeros
    pytest.importorskip("matplotlib")
    written = study.plot(back, fits, tmp_path)
    assert written == ["frontier.png", "overoptimization.png", "length_hacking.png", "data_scale.png", "alignment_gap.png",
                       "methods.png", "methods.md", "noise.png", "noise.md"]
    table = (tmp_path / "methods.md").read_text().splitlines()
    assert len(table) == 2 + len(methods.METHODS)  # header, rule, one row per method: the means over the 3 seeds
    assert table[3] == "| best-of-16 | 54.0 ± 2.0 | 53.0 to 55.0 (3 seeds) | 0.30 | 0.40 | 0.50 | 60 |"
    noise_table = (tmp_path / "noise.md").read_text().splitlines()
    assert len(noise_table) == 3 + len(noise.REWARDS)  # header, rule, the base policy, one row per reward
    assert noise_table[2] == "| SFT (base) | | 0.00 (0.0) | | 0.60 | |"  # every run's first evaluation
    assert noise_table[3] == "| single RM, noiseless labels | 0.60 (1.5) | 0.60 (1.5) | 0.90 | 0.40 | 1.20 -> 0.80 |"
    for name in written:
        if name.endswith(".png"):
            assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_single_feature_pairs_differ_in_that_feature_alone():
    import reward_models
    from common import task

    prompts = task.split_prompts()[1][:30]
    for feature in reward_models.FEATURES:
        pairs = reward_models.single_feature_pairs(prompts, feature, seed=0)
        assert len(pairs) == 60
        for p, better, worse in pairs:
            gb, gw = task.gold_components(p, better), task.gold_components(p, worse)
            assert gb[feature] > gw[feature], (feature, better, worse)
            assert all(gb[k] == gw[k] for k in reward_models.FEATURES if k != feature), (feature, better, worse)


def test_methods_win_rate_distinct_ngrams_and_standard_error_by_hand():
    from common import task

    labeler, p = task.Labeler(), "Which is larger, 3 or 5?"
    good, bad = "The answer is 5.", "Obviously. The answer is 3."
    d = (task.gold_reward(p, good) - task.gold_reward(p, bad)) / 0.5
    win = methods.win_rate(labeler, [p, p], [[good, good], [good, bad]], [[bad, good], [good, good]])
    # prompt 1: good over bad, and a tie (one half); prompt 2: a tie, and bad over good
    assert win[0] == pytest.approx((1 / (1 + math.exp(-d)) + 0.5) / 2)
    assert win[1] == pytest.approx((0.5 + 1 / (1 + math.exp(d))) / 2)
    assert methods.distinct_ngrams(["a b c", "a b d"]) == pytest.approx(3 / 4)  # (a b), (b c), (a b), (b d)
    assert methods.distinct_ngrams(["same words", "same words"]) == 0.5 and methods.distinct_ngrams(["one"]) == 0.0
    mean, se = methods.mean_and_se([1.0, 2.0, 3.0, 6.0])
    assert mean == 3.0 and se == pytest.approx(math.sqrt(((4 + 1 + 0 + 9) / 3) / 4))
