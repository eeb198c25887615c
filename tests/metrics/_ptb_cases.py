"""Generated caption-like strings that exercise the PTB tokenizer's rules (shared by the tests and bench)."""

from __future__ import annotations

import random

_WORDS = [
    "a",
    "A",
    "man",
    "Dog",
    "two",
    "cats",
    "sitting",
    "on",
    "the",
    "table",
    "red",
    "bus",
    "street",
    "people",
    "kitchen",
    "pizza",
    "Woman",
    "holding",
    "umbrella",
    "near",
    "water",
    "giraffe",
    "is",
    "are",
    "with",
]
_SPECIAL = [
    "doesn't",
    "can't",
    "won't",
    "it's",
    "there's",
    "they're",
    "we've",
    "I'm",
    "she'll",
    "he'd",
    "cannot",
    "gonna",
    "dog's",
    "dogs'",
    "well-known",
    "black-and-white",
    "t-shirt",
    "3.5",
    "1,000",
    "3:45",
    "10.5cm",
    "5km",
    "1990s",
    "'90s",
    "2nd",
    "a/b",
    "50%",
    "$5",
    "#1",
    "e.g.",
    "U.S.",
    "Mr.",
    "Dr.",
    "St.",
    "etc.",
    "o'clock",
    "x-ray",
    "don\u2019t",
    "\u00bd",
    "A.B.",
]
_WRAPS = [("(", ")"), ("[", "]"), ("{", "}"), ('"', '"'), ("'", "'"), ("\u201c", "\u201d"), ("`", "'")]
_TRAIL = [".", ",", "!", "?", ";", ":", "...", "--", "!?", "-"]  # fmt: skip


def caption_cases(n: int, seed: int = 0) -> list[str]:
    """``n`` seeded strings of 3 to 12 words with contractions, hyphens, numbers, brackets, quotes, punctuation."""
    rng = random.Random(seed)
    cases = []
    for _ in range(n):
        words = []
        for _ in range(rng.randint(3, 12)):
            word = rng.choice(_SPECIAL) if rng.random() < 0.3 else rng.choice(_WORDS)
            if rng.random() < 0.1:
                left, right = rng.choice(_WRAPS)
                word = left + word + right
            if rng.random() < 0.15:
                word += rng.choice(_TRAIL)
            words.append(word)
        cases.append(" ".join(words) + rng.choice(["", ".", " .", "!", "?"]))
    return cases
