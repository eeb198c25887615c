"""The one-shot references the server computes from the uploads it holds (federation.mode:
one_shot), the same in every engine: the prediction ensemble of all client models and each
client's own model on the global test (the local floor), as YOCO's evaluation reports them (Xu
et al. 2025, "You Only Communicate Once: One-shot Federated Low-Rank Adaptation of MLLM").

Ensemble, per test row i over the K uploads θ_k (every client counts once):

    C_i        the candidate answers: the task's label choices where it scores choices
               (classification, ``ModelHost.class_choices``), else the distinct (normalised)
               answers the K client models generate for row i
    p_k(c | i) = softmax over c ∈ C_i of log p_θk(c | image, question)   (``Backend.score_answers``)
    answer_i   = argmax_c (1/K) Σ_k p_k(c | i);  score_i = (1/K) Σ_k p_k(positive label | i)

The reference code takes a majority vote of the generated answers; averaging the answer scores
keeps ties rare and gives a score for ROC-AUC. The local floor scores each upload exactly as the
global adapter is scored (generation, ``ModelHost.summarize``) and reports mean, min and max."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from fedumm.config import RunConfig
from fedumm.federation.host import ModelHost
from fedumm.metrics import normalize_answer
from fedumm.strategies import ClientUpdate
from fedumm.types import State


def _load(host: ModelHost, global_state: State, update: ClientUpdate) -> None:
    host.set_state({**global_state, **update.state})
    host.reset_local()


def candidates_per_row(predictions: Sequence[Sequence[str]]) -> list[list[str]]:
    """Per row, the distinct answers the clients generated (first spelling of each normalised answer)."""
    rows = []
    for answers in zip(*predictions):
        seen: dict[str, str] = {}
        for answer in answers:
            seen.setdefault(normalize_answer(answer), answer)
        rows.append(list(seen.values()))
    return rows


def choice_probabilities(
    host: ModelHost, samples: Sequence[dict], candidates: Sequence[Sequence[str]], batch_size: int
) -> list[torch.Tensor]:
    """Per row, the current adapter's softmax over that row's candidates of their answer
    log-likelihoods (each (row, candidate) pair scored once, ``batch_size`` pairs at a time)."""
    host.model.eval()
    pairs = [dict(row, multiple_choice_answer=c) for row, cands in zip(samples, candidates) for c in cands]
    scores = torch.cat(
        [host.backend.score_answers(host.model, pairs[i : i + batch_size]) for i in range(0, len(pairs), batch_size)]
    )
    out, start = [], 0
    for cands in candidates:
        out.append(scores[start : start + len(cands)].softmax(dim=-1))
        start += len(cands)
    return out


def one_shot_references(
    host: ModelHost, global_state: State, updates: Sequence[ClientUpdate], test: Sequence[dict], config: RunConfig
) -> dict[str, Any]:
    """``{"metric", "ensemble": the ensemble's metrics, "local_floor": {"mean", "min", "max", "clients"}}``
    over the global test rows; the host holds ``global_state`` again afterwards."""
    task = host.evaluation.tasks[host.evaluation.name]  # one text task (validation._check_mode)
    metric, batch = task.primary_metric, config.eval.batch_size
    if not test or not updates:
        return {}
    test = list(test)
    choices = host.class_choices(test) if task.scores_choices else None
    predictions: list[list[str]] = []
    floor: dict[str, float] = {}
    summed: list[torch.Tensor] | None = None

    def accumulate(probs: list[torch.Tensor]) -> None:
        nonlocal summed
        summed = probs if summed is None else [s + p for s, p in zip(summed, probs)]

    for update in updates:
        _load(host, global_state, update)
        preds = host.predict(test, batch)
        predictions.append(preds)
        if choices is not None:  # the label choices are fixed: one scoring pass serves floor and ensemble
            probs = choice_probabilities(host, test, [choices] * len(test), batch)
            accumulate(probs)
            floor[str(update.client_id)] = host.summarize(test, preds, batch, [float(p[0]) for p in probs])[metric]
        else:
            floor[str(update.client_id)] = host.summarize(test, preds, batch)[metric]
    candidates = [list(choices)] * len(test) if choices is not None else candidates_per_row(predictions)
    if choices is None:
        for update in updates:
            _load(host, global_state, update)
            accumulate(choice_probabilities(host, test, candidates, batch))
    host.set_state(global_state)
    host.reset_local()
    mean_probs = [p / len(updates) for p in summed]
    answers = [cands[int(p.argmax())] for cands, p in zip(candidates, mean_probs)]
    scores = [float(p[0]) for p in mean_probs] if choices is not None else None
    ensemble = host.summarize(test, answers, batch, scores)
    values = list(floor.values())
    return {
        "metric": metric,
        "ensemble": ensemble,
        "local_floor": {"mean": sum(values) / len(values), "min": min(values), "max": max(values), "clients": floor},
    }
