"""Prompts for the classic "gpt2 writes positive movie reviews" experiment (Ziegler et al. 2019; TRL's gpt2-sentiment):
the first 2 to 8 words of IMDb reviews, as a {"prompt"} file for ppo_rlhf.py.
    python experiments/imdb_prompts.py                                   # stanfordnlp/imdb -> imdb_prompts.jsonl
    python ppo_rlhf.py --model gpt2 --dataset imdb_prompts.jsonl --reward-model lvwerra/distilbert-imdb --reward-label POSITIVE
"""

import json
import random
from dataclasses import dataclass

import datasets
import tyro


@dataclass
class Args:
    dataset: str = "stanfordnlp/imdb"
    """the reviews: a hub name or a local copy"""
    split: str = "train"
    """the split to take reviews from"""
    num_prompts: int = 5000
    """how many prompts to write"""
    out: str = "imdb_prompts.jsonl"
    """the file to write"""
    seed: int = 0
    """seed of the choice of reviews and prompt lengths"""


if __name__ == "__main__":
    args = tyro.cli(Args)
    reviews = datasets.load_dataset(args.dataset, split=args.split)
    rng = random.Random(args.seed)
    rows = rng.sample(range(len(reviews)), min(args.num_prompts, len(reviews)))
    with open(args.out, "w") as f:
        for i in rows:
            words = reviews[i]["text"].replace("<br />", " ").split()
            f.write(json.dumps({"prompt": " ".join(words[: rng.randint(2, 8)])}) + "\n")
    print(f"{len(rows)} prompts from {args.dataset}[{args.split}] written to {args.out}")
