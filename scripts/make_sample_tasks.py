#!/usr/bin/env python3
"""Generate the bundled sample tasks (Super-NaturalInstructions JSON format) deterministically.

These are written by the project: rule-based string, number, classification and extraction tasks
that a tiny model trained from scratch on a CPU can partly learn in minutes. Seen and held-out
tasks share skills (e.g. max vs min of a list) so held-out generalisation is measurable.

    python scripts/make_sample_tasks.py [--out tasks/sample] [--instances 120]
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path
from typing import Callable

COLORS = ["red", "blue", "green", "yellow", "black", "white", "pink", "brown", "gray", "orange"]
FRUITS = ["apple", "banana", "cherry", "grape", "lemon", "mango", "peach", "pear", "plum", "melon"]
ANIMALS = ["cat", "dog", "horse", "tiger", "mouse", "sheep", "goat", "zebra", "eagle", "shark"]
WORDS = COLORS + FRUITS + ANIMALS + ["house", "river", "table", "chair", "cloud", "stone", "book", "lamp"]
POSITIVE = ["good", "great", "happy", "lovely", "excellent", "nice", "wonderful", "fun"]
NEGATIVE = ["bad", "awful", "sad", "terrible", "boring", "poor", "ugly", "dull"]
NEUTRAL = ["movie", "day", "meal", "trip", "book", "song", "game", "show", "was", "the", "a", "really"]


def words(rng: random.Random, lo: int = 3, hi: int = 6) -> list[str]:
    return rng.sample(WORDS, rng.randint(lo, hi))


def numbers(rng: random.Random, lo: int = 3, hi: int = 6) -> list[int]:
    return [rng.randint(0, 99) for _ in range(rng.randint(lo, hi))]


def sentiment_sentence(rng: random.Random) -> tuple[str, str]:
    label = rng.choice(["positive", "negative"])
    lex = POSITIVE if label == "positive" else NEGATIVE
    toks = rng.sample(NEUTRAL, rng.randint(2, 4)) + [rng.choice(lex)]
    rng.shuffle(toks)
    return " ".join(toks), label


def kind_of(w: str) -> str:
    return "color" if w in COLORS else "fruit" if w in FRUITS else "animal"


# Each generator returns (input, [outputs]).
Gen = Callable[[random.Random], tuple[str, list[str]]]


def g_uppercase(r):
    w = words(r, 2, 4); return " ".join(w), [" ".join(w).upper()]


def g_lowercase(r):
    w = words(r, 2, 4); return " ".join(x.upper() for x in w), [" ".join(w)]


def g_reverse_words(r):
    w = words(r); return " ".join(w), [" ".join(reversed(w))]


def g_first_word(r):
    w = words(r); return " ".join(w), [w[0]]


def g_last_word(r):
    w = words(r); return " ".join(w), [w[-1]]


def g_second_word(r):
    w = words(r); return " ".join(w), [w[1]]


def g_count_words(r):
    w = words(r, 1, 9); return " ".join(w), [str(len(w))]


def g_sort_numbers(r):
    n = numbers(r); return " ".join(map(str, n)), [" ".join(map(str, sorted(n)))]


def g_max_number(r):
    n = numbers(r); return " ".join(map(str, n)), [str(max(n))]


def g_min_number(r):
    n = numbers(r); return " ".join(map(str, n)), [str(min(n))]


def g_even_odd(r):
    n = r.randint(0, 999); return str(n), ["even" if n % 2 == 0 else "odd"]


def g_add(r):
    a, b = r.randint(0, 50), r.randint(0, 49); return f"{a} + {b}", [str(a + b)]


def g_subtract(r):
    a = r.randint(10, 99); b = r.randint(0, a); return f"{a} - {b}", [str(a - b)]


def g_sentiment(r):
    s, label = sentiment_sentence(r); return s, [label]


def g_word_kind(r):
    w = r.choice(COLORS + FRUITS + ANIMALS); return w, [kind_of(w)]


def g_extract_animals(r):
    w = words(r, 4, 7)
    found = [x for x in w if x in ANIMALS]
    return " ".join(w), [", ".join(found) if found else "none"]


def g_extract_numbers(r):
    toks = words(r, 2, 4) + [str(x) for x in numbers(r, 1, 3)]
    r.shuffle(toks)
    nums = [t for t in toks if t.isdigit()]
    return " ".join(toks), [", ".join(nums)]


def g_duplicate(r):
    w = words(r, 2, 3); return " ".join(w), [" ".join(x for y in w for x in (y, y))]


def g_remove_first(r):
    w = words(r); return " ".join(w), [" ".join(w[1:])]


def g_fruit_or_not(r):
    w = r.choice(COLORS + FRUITS + ANIMALS); return w, ["yes" if w in FRUITS else "no"]


# name, category, definition, generator, seen?
TASKS: list[tuple[str, str, str, Gen, bool]] = [
    ("task901_uppercase_words", "Text Manipulation",
     "You are given a few words. Rewrite them in upper case letters.", g_uppercase, True),
    ("task902_reverse_word_order", "Text Manipulation",
     "You are given a list of words. Output the same words in reverse order.", g_reverse_words, True),
    ("task903_first_word", "Information Extraction",
     "You are given a list of words. Output the first word of the list.", g_first_word, True),
    ("task904_last_word", "Information Extraction",
     "You are given a list of words. Output the last word of the list.", g_last_word, True),
    ("task905_count_words", "Program Execution",
     "Count how many words are in the given input and answer with a number.", g_count_words, True),
    ("task906_sort_numbers", "Program Execution",
     "You are given a list of numbers. Sort them in ascending order.", g_sort_numbers, True),
    ("task907_max_number", "Program Execution",
     "You are given a list of numbers. Output the largest number in the list.", g_max_number, True),
    ("task908_sentiment_rule", "Sentiment Analysis",
     "Classify the sentiment of the given sentence as positive or negative.", g_sentiment, True),
    ("task909_even_or_odd", "Text Categorization",
     "You are given a number. Answer even if the number is even and odd otherwise.", g_even_odd, True),
    ("task910_add_two_numbers", "Program Execution",
     "Compute the sum of the two given numbers.", g_add, True),
    ("task911_word_kind", "Text Categorization",
     "You are given a word. Say whether it names a color, a fruit or an animal.", g_word_kind, True),
    ("task912_extract_numbers", "Information Extraction",
     "Extract every number from the input, in order, separated by commas.", g_extract_numbers, True),
    ("task913_duplicate_words", "Text Manipulation",
     "Repeat every word of the input twice, keeping the order.", g_duplicate, True),
    ("task914_lowercase_words", "Text Manipulation",
     "You are given a few words in capitals. Rewrite them in lower case letters.", g_lowercase, True),
    # Held-out tasks: unseen in training, each shares a skill with a seen task.
    ("task951_min_number", "Program Execution",
     "You are given a list of numbers. Output the smallest number in the list.", g_min_number, False),
    ("task952_second_word", "Information Extraction",
     "You are given a list of words. Output the second word of the list.", g_second_word, False),
    ("task953_remove_first_word", "Text Manipulation",
     "You are given a list of words. Output all the words except the first one.", g_remove_first, False),
    ("task954_subtract_numbers", "Program Execution",
     "Compute the difference of the two given numbers.", g_subtract, False),
    ("task955_extract_animals", "Information Extraction",
     "Extract every animal name from the input, in order, separated by commas. Answer none if there is none.",
     g_extract_animals, False),
    ("task956_is_it_a_fruit", "Text Categorization",
     "You are given a word. Answer yes if it names a fruit and no otherwise.", g_fruit_or_not, False),
]


def wrong_output(r: random.Random, out: str) -> str:
    """A plausible but wrong answer for negative examples."""
    toks = out.split()
    if len(toks) > 1:
        return " ".join(toks[:-1])
    return out + out if not out.isdigit() else str(int(out) + 1)


def build_task(name, category, definition, gen, n_instances, seed) -> dict:
    r = random.Random(f"{seed}-{name}")
    seen_inputs: set[str] = set()
    def fresh():
        for _ in range(1000):
            x, ys = gen(r)
            if x not in seen_inputs:
                seen_inputs.add(x)
                return x, ys
        return gen(r)
    pos = []
    for _ in range(3):
        x, ys = fresh()
        pos.append({"input": x, "output": ys[0], "explanation": f"The answer follows the rule: {definition}"})
    neg = []
    for _ in range(2):
        x, ys = fresh()
        neg.append({"input": x, "output": wrong_output(r, ys[0]),
                    "explanation": f"This answer is wrong; the correct answer is {ys[0]}."})
    prefix = name.split("_")[0]
    instances = []
    for i in range(n_instances):
        x, ys = fresh()
        instances.append({"id": f"{prefix}-{i:04d}", "input": x, "output": ys})
    return {
        "Contributors": ["instructmt (generated)"],
        "Source": ["instructmt sample tasks"],
        "URL": [],
        "Categories": [category],
        "Reasoning": [],
        "Definition": [definition],
        "Input_language": ["English"],
        "Output_language": ["English"],
        "Instruction_language": ["English"],
        "Domains": ["Synthetic"],
        "Positive Examples": pos,
        "Negative Examples": neg,
        "Instances": instances,
        "Instance License": ["Apache 2.0"],
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="tasks/sample")
    ap.add_argument("--instances", type=int, default=120)
    ap.add_argument("--seed", type=int, default=2026)
    args = ap.parse_args(argv)
    out = Path(args.out)
    (out / "splits").mkdir(parents=True, exist_ok=True)
    train, test = [], []
    for name, cat, definition, gen, seen in TASKS:
        data = build_task(name, cat, definition, gen, args.instances, args.seed)
        (out / f"{name}.json").write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        (train if seen else test).append(name)
    (out / "splits" / "train_tasks.txt").write_text("\n".join(train) + "\n")
    (out / "splits" / "test_tasks.txt").write_text("\n".join(test) + "\n")
    print(f"wrote {len(train)} seen and {len(test)} held-out tasks to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
