"""Caption tokenisation as the COCO caption evaluation does it: the Stanford PTB tokenizer.

pycocoevalcap (Chen et al. 2015, "Microsoft COCO Captions: Data Collection and Evaluation
Server", arXiv:1504.00325) tokenises every caption with Stanford CoreNLP 3.4.1's
``PTBTokenizer -preserveLines -lowerCase`` (Java; the jar ships inside the pycocoevalcap
package) and then drops the tokens of its ``PUNCTUATIONS`` list. Scores are comparable with
published COCO numbers only on text tokenised that way, so ``ptb_tokenize`` runs that same
jar when ``java`` is on PATH (one process per call, captions on stdin, one per line).

Without Java, ``python_ptb_tokenize`` applies the PTB rules that captions meet (Marcus et al.
1993, "Building a Large Annotated Corpus of English: The Penn Treebank"; the CoreNLP lexer's
conventions), after lowercasing:

- clitics split off: "doesn't" -> "does n't", "can't" -> "ca n't", "won't" -> "wo n't",
  "it's" -> "it 's" ('s 're 've 'll 'd 'm); "cannot" -> "can not", "gonna" -> "gon na";
- hyphenated words, "a/b", numbers with inner separators ("3.5", "1,000", "3:45", "1/2")
  stay whole; a decimal runs into its unit no further ("10.5cm" -> "10.5 cm");
- brackets become -lrb- -rrb- -lsb- -rsb- -lcb- -rcb- (lowercased, so pycocoevalcap's
  uppercase "-LRB-" entries never remove them: they stay, as in the official scores);
- "%", "$", "#", "*", "+", "=", "&" and the like are tokens of their own; a period stays on
  known abbreviations ("mr.", "st.", "etc.") and letter acronyms ("u.s.", "e.g.");
- curly quotes and apostrophes, the ellipsis, en/em dashes, "½", "£" and "€" are normalised
  as PTB3 escaping does ("£" -> "#", "€" -> "$");

then drops the same punctuation tokens. Rare constructions (URLs with trailing punctuation,
"AT&T" in capitals, "rock'n'roll") can still differ from the Java tokenizer.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

__all__ = ["PUNCTUATIONS", "java_ptb_tokenize", "ptb_jar", "ptb_tokenize", "python_ptb_tokenize"]

#: The tokens pycocoevalcap's PTBTokenizer removes after tokenising (its ``PUNCTUATIONS``).
PUNCTUATIONS = frozenset(
    {"''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--", "...", ";"}
)

_JAR_NAME = "stanford-corenlp-3.4.1.jar"
_JAVA_ARGS = ("edu.stanford.nlp.process.PTBTokenizer", "-preserveLines", "-lowerCase")
# Line breaks of any kind would shift the one-caption-per-line alignment.
_LINE_BREAKS = re.compile(r"[\n\r\v\f\x1c-\x1e\x85\u2028\u2029]")


def ptb_jar() -> Path | None:
    """The Stanford CoreNLP jar shipped with pycocoevalcap; None when the package has none."""
    import pycocoevalcap.tokenizer.ptbtokenizer as ptb

    jar = Path(ptb.__file__).parent / _JAR_NAME
    return jar if jar.is_file() else None


def ptb_tokenize(captions: Sequence[str]) -> list[str]:
    """Each caption PTB-tokenised, lowercased, punctuation tokens dropped, joined by spaces: the
    Java tokenizer of pycocoevalcap where ``java`` is on PATH, else ``python_ptb_tokenize``."""
    jar = ptb_jar() if shutil.which("java") else None
    if jar is None:
        return [python_ptb_tokenize(c) for c in captions]
    return java_ptb_tokenize(captions, jar)


def java_ptb_tokenize(captions: Sequence[str], jar: Path) -> list[str]:
    """pycocoevalcap's tokenisation (its command line), with the captions on stdin rather than a
    temporary file in the package folder.

    Raises:
        RuntimeError: if Java fails or returns another number of lines.
    """
    if not captions:
        return []
    text = "\n".join(_LINE_BREAKS.sub(" ", c) for c in captions)
    done = subprocess.run(["java", "-cp", str(jar), *_JAVA_ARGS], input=text.encode(), capture_output=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"PTB tokenizer (java -cp {jar}) failed: {done.stderr.decode(errors='replace')[-500:]}")
    lines = done.stdout.decode().split("\n")
    if lines and lines[-1] == "" and len(lines) == len(captions) + 1:
        lines.pop()
    if len(lines) != len(captions):
        raise RuntimeError(f"PTB tokenizer returned {len(lines)} lines for {len(captions)} captions")
    return [" ".join(w for w in line.rstrip().split(" ") if w and w not in PUNCTUATIONS) for line in lines]


# ---------------------------------------------------------------------------- the Python rules

_UNICODE = str.maketrans(
    {
        "\u2019": "'",
        "\u2018": "'",
        "\u201c": '"',
        "\u201d": '"',
        "\u2026": "...",
        "\u2013": "--",
        "\u2014": "--",
        "\u00bd": "1/2",
        "\u00bc": "1/4",
        "\u00be": "3/4",
        "\u00a3": "#",
        "\u20ac": "$",
    }  # fmt: skip
)
_BRACKETS = {"(": "-lrb-", ")": "-rrb-", "[": "-lsb-", "]": "-rsb-", "{": "-lcb-", "}": "-rcb-"}
# Abbreviations that keep their period (the CoreNLP lexer's common ones; "no." only before a number).
_ABBREVIATIONS = (
    "mr|mrs|ms|dr|st|etc|jr|sr|vs|inc|co|ltd|corp|ave|prof|gen|sen|rep|gov|mt|ft|lt|col|capt|sgt|jan|feb|mar|apr|"
    "jun|jul|aug|sep|sept|oct|nov|dec"
)
_SPLIT_WORDS = {
    "cannot": ("can", "not"),
    "gonna": ("gon", "na"),
    "gotta": ("got", "ta"),
    "wanna": ("wan", "na"),
    "lemme": ("lem", "me"),
    "gimme": ("gim", "me"),
    "'tis": ("'t", "is"),
    "'twas": ("'t", "was"),
    "y'all": ("y'", "all"),
}
_CLITIC = re.compile(r"^(.+?)(n't|'s|'re|'ve|'ll|'d|'m)$")
_TOKEN = re.compile(
    r"(?P<url>(?:https?://|www\.)\S+|[\w.+-]+@[\w-]+(?:\.[\w-]+)+)"
    r"|(?P<acronym>(?:[^\W\d_]\.)+)(?![\w])"
    rf"|(?P<abbrev>(?:{_ABBREVIATIONS})\.)(?![\w])"
    r"|(?P<number>[-+]?\d+(?:[.,:/]\d+)+|[-+]?\.\d+|[-+]\d+)"
    r"|(?P<year>'\d\ds(?!\w)|'\d\d(?!\S))"
    r"|(?P<tis>'t(?:is|was)\b)"
    r"|(?P<handle>@\w+)"
    r"|(?P<word>\w+(?:'\w+)*(?:[-/.]\w+(?:'\w+)*)*)"
    r"|(?P<dashes>-{2,})"
    r"|(?P<dots>\.{2,})"
    r"|(?P<marks>[!?]{2,})"
    r"|(?P<other>\S)"
)


def _word_tokens(word: str) -> list[str]:
    if word in _SPLIT_WORDS:
        return list(_SPLIT_WORDS[word])
    out: list[str] = []
    # Clitics peel off from the end ("shouldn't've" -> should n't 've); one inside a hyphenated
    # word splits the hyphen off too ("dog's-eye" -> dog 's - eye).
    head, hyphen, tail = word.partition("-")
    if hyphen and _CLITIC.match(head) and "'" in head:
        return _word_tokens(head) + ["-"] + _word_tokens(tail)
    while True:
        match = _CLITIC.match(word)
        if match is None or (match.group(2) == "n't" and len(match.group(1)) < 1):
            break
        word, clitic = match.group(1), match.group(2)
        out.insert(0, clitic)
    return [word, *out]


def _chunk_tokens(chunk: str) -> list[str]:
    tokens: list[str] = []
    for match in _TOKEN.finditer(chunk):
        kind, text = match.lastgroup, match.group()
        if kind == "word":
            tokens += _word_tokens(text)
        elif kind == "tis":
            tokens += list(_SPLIT_WORDS[text])
        elif kind == "dots":
            tokens.append("..." if len(text) >= 3 else ".")
        elif kind == "other":
            tokens.append(_BRACKETS.get(text, text))
        else:
            tokens.append(text)
    return tokens


def python_ptb_tokenize(caption: str) -> str:
    """``caption`` tokenised by the PTB rules of the module docstring, lowercased, pycocoevalcap's
    punctuation tokens dropped, joined by single spaces."""
    text = caption.translate(_UNICODE).lower()
    tokens = [t for chunk in text.split() for t in _chunk_tokens(chunk)]
    return " ".join(t for t in tokens if t not in PUNCTUATIONS and t not in ('"',))
