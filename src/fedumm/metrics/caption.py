"""Caption metrics: BLEU-4, ROUGE-L and CIDEr-D, and the summary.

BLEU-4 and CIDEr-D come from pycocoevalcap (the COCO caption evaluation, Chen et al. 2015,
arXiv:1504.00325) on text tokenised as that evaluation does (``metrics.ptb``: the Stanford
PTB tokenizer via Java, or its Python rules without Java), so they equal pycocoevalcap's
scores; ROUGE-L comes from Google's rouge-score (its own tokenizer). The libraries are
imported on first use.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from fedumm.metrics.base import MetricOptions, check_lengths, field
from fedumm.metrics.ptb import ptb_tokenize

__all__ = ["bleu4", "caption_tokens", "cider_d", "metrics", "rouge_l"]


def caption_tokens(text: str) -> str:
    """``text`` tokenised as the COCO caption evaluation does (``ptb_tokenize``): lowercased PTB
    tokens without punctuation, joined by single spaces ("Don't run." -> "do n't run")."""
    return ptb_tokenize([text])[0]


def _coco_inputs(
    predictions: Sequence[str], references: Sequence[Sequence[str]]
) -> tuple[dict[int, list[str]], dict[int, list[str]]]:
    """pycocoevalcap's {id: [references]} and {id: [prediction]}, PTB-tokenised in one pass."""
    check_lengths(predictions, references, "predictions and references")
    empty = [i for i, refs in enumerate(references) if not refs]
    if empty:
        raise ValueError(f"references[{empty[0]}] is empty; every caption needs at least one reference")
    tokens = iter(ptb_tokenize([*predictions, *(r for refs in references for r in refs)]))
    res = {i: [next(tokens)] for i in range(len(predictions))}
    gts = {i: [next(tokens) for _ in refs] for i, refs in enumerate(references)}
    return gts, res


def _bleu4(gts: dict[int, list[str]], res: dict[int, list[str]]) -> float:
    from pycocoevalcap.bleu.bleu import Bleu

    scores, _ = Bleu(4).compute_score(gts, res, verbose=0)
    return float(scores[3])


def _cider_d(gts: dict[int, list[str]], res: dict[int, list[str]]) -> float:
    from pycocoevalcap.cider.cider import Cider

    score, _ = Cider().compute_score(gts, res)
    return float(score)


def bleu4(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Corpus BLEU-4 (Papineni et al. 2002, ACL), as in the COCO caption evaluation (pycocoevalcap).

    Clipped 1- to 4-gram precisions pooled over the corpus, geometric mean, brevity penalty
    against the closest reference length. 1.0 for captions identical to a reference.
    """
    return _bleu4(*_coco_inputs(predictions, references))


def rouge_l(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Mean ROUGE-L F1 (Lin 2004, "ROUGE: A Package for Automatic Evaluation of Summaries"), rouge-score.

    Per caption: longest common subsequence of tokens, P = LCS/|prediction|,
    R = LCS/|reference|, F1 = 2PR/(P+R); the best reference counts. rouge-score's tokenizer
    keeps only ASCII letters and digits.
    """
    from rouge_score.rouge_scorer import RougeScorer

    check_lengths(predictions, references, "predictions and references")
    scorer = RougeScorer(["rougeL"])
    total = 0.0
    for i, (prediction, refs) in enumerate(zip(predictions, references)):
        if not refs:
            raise ValueError(f"references[{i}] is empty; every caption needs at least one reference")
        total += scorer.score_multi(list(refs), prediction)["rougeL"].fmeasure
    return total / len(predictions)


def cider_d(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """CIDEr-D (Vedantam et al. 2015, "CIDEr: Consensus-based Image Description Evaluation"), pycocoevalcap.

    TF-IDF weighted 1- to 4-gram cosine similarity with the references, with clipped
    counts and a Gaussian length penalty (sigma 6), times 10, averaged over captions. The
    IDF comes from the references of the captions scored together, so a single caption
    (one image) scores 0: score a corpus.
    """
    return _cider_d(*_coco_inputs(predictions, references))


def metrics(records: Sequence[Mapping], options: MetricOptions | None = None) -> dict[str, Any]:
    """The caption task's metrics of one group: ``{"bleu4", "rouge_l", "cider_d"}`` (``options`` unused).

    Records hold "prediction" and "references" (or "answers").
    """
    predictions = [str(p) for p in field(records, "prediction")]
    references = [list(refs) for refs in field(records, "references", "answers")]
    gts, res = _coco_inputs(predictions, references)  # one tokenizer run for both COCO metrics
    return {"bleu4": _bleu4(gts, res), "rouge_l": rouge_l(predictions, references), "cider_d": _cider_d(gts, res)}
