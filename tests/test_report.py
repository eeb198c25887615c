from fedumm.report import format_summary

BASE = {
    "name": "t",
    "num_clients": 2,
    "rounds": 1,
    "strategy": "fedavg",
    "partition_alpha": 0.5,
    "partition_skew": 0.25,
    "trainable_parameters": 10,
    "total_parameters": 1000,
    "run_dir": "runs/t",
}


def _record(metric, value, local=None):
    client = {"0": {f"local_{metric}": local}} if local is not None else {}
    return {
        "phase": "federated",
        "round": 1,
        "clients": [0],
        "global": {metric: value},
        "client_metrics": client,
        "seconds": {"round": 2.0},
    }


def test_vqa_summary_lines():
    summary = {
        **BASE,
        "metric": "vqa_accuracy",
        "majority_answer": "yes",
        "majority_baseline_accuracy": 0.2,
        "federated_final_accuracy": 0.55,
        "federated_initial_accuracy": 0.0,
        "federated_by_answer_type": {"color": 0.5},
        "centralized_final_accuracy": 0.6,
    }
    text = format_summary(summary, [_record("vqa_accuracy", 0.55, local=0.7)])
    assert "majority-answer baseline ('yes'):        20.0%" in text
    assert "federated global vqa_accuracy:           55.0%  (+35.0 pts vs majority, untrained 0.0%)" in text
    assert "centralized, same budget:                60.0%  (federated -5.0 pts)" in text
    assert "by answer type: color 50.0%" in text
    assert "   70.0%" in text  # mean local metric in the round table


def test_caption_summary_has_no_majority_baseline():
    summary = {
        **BASE,
        "task": "caption",
        "metric": "cider_d",
        "majority_answer": "a cat",
        "majority_baseline_accuracy": None,
        "federated_final_accuracy": 0.4,
        "federated_initial_accuracy": 0.1,
        "federated_by_answer_type": {},
    }
    text = format_summary(summary, [_record("cider_d", 0.4)])
    assert "majority" not in text
    # CIDEr-D is not a fraction of 1: plain numbers, not percentages.
    assert "federated global cider_d:                0.400  (untrained 0.100)" in text
    assert "by answer type" not in text


def test_skipped_rows_are_reported_with_their_files():
    # Prepare: 3 rows skipped in two files.
    summary = {
        **BASE,
        "metric": "vqa_accuracy",
        "majority_answer": "yes",
        "majority_baseline_accuracy": 0.2,
        "skipped_rows": 3,
        "skipped_rows_by_file": {"dev.jsonl": 1, "train.jsonl": 2},
    }
    # Execute
    text = format_summary(summary, [])
    # Assert
    assert (
        "skipped broken rows (on_error: skip): 3 (dev.jsonl: 1, train.jsonl: 2); messages in load_problems.txt"
    ) in text


def test_no_skipped_line_when_none_or_unknown():
    for skipped in (0, None):
        summary = {
            **BASE,
            "metric": "vqa_accuracy",
            "majority_answer": "yes",
            "majority_baseline_accuracy": 0.2,
            "skipped_rows": skipped,
            "skipped_rows_by_file": {} if skipped == 0 else None,
        }
        assert "skipped" not in format_summary(summary, [])


def test_one_shot_summary_lines():
    summary = {
        **BASE,
        "mode": "one_shot",
        "metric": "vqa_accuracy",
        "majority_answer": "yes",
        "majority_baseline_accuracy": 0.2,
        "federated_final_accuracy": 0.4,
        "federated_initial_accuracy": 0.0,
        "federated_by_answer_type": {},
        "one_shot": {"ensemble": 0.45, "local_floor": {"mean": 0.3, "min": 0.125, "max": 0.5}},
    }
    text = format_summary(summary, [_record("vqa_accuracy", 0.4)])
    assert text.startswith("fedumm run 't': 2 clients, one-shot, strategy fedavg")
    assert "one-shot ensemble of the clients:        45.0%" in text
    assert "one-shot local floor (own upload):       30.0%  (min 12.5%, max 50.0%)" in text
    assert "one-shot" not in format_summary(
        {**BASE, "metric": "vqa_accuracy", "majority_answer": "yes", "majority_baseline_accuracy": None}, []
    )


def test_multitask_summary_lines_per_task():
    # Prepare: vqa + caption: the mean is not a fraction of 1 (metric_bounded false); each task
    # prints in its own unit (vqa as a percentage, CIDEr-D as a number).
    summary = {
        **BASE,
        "task": "multitask",
        "metric": "multitask_score",
        "metric_bounded": False,
        "majority_answer": "",
        "majority_baseline_accuracy": None,
        "federated_final_accuracy": 0.9,
        "federated_initial_accuracy": 0.1,
        "federated_by_answer_type": {},
        "federated_by_task": {
            "vqa": {"n": 4, "metric": "vqa_accuracy", "initial": 0.0, "final": 0.5},
            "caption": {"n": 2, "metric": "cider_d", "initial": None, "final": 1.3},
        },
        "majority_baseline_by_task": {"vqa": {"answer": "yes", "score": 0.25}},
    }

    # Execute
    text = format_summary(summary, [_record("multitask_score", 0.9)])

    # Assert
    assert "federated global multitask_score:        0.900  (untrained 0.100)" in text
    assert "  vqa (4 rows) vqa_accuracy: 50.0% (untrained 0.0%; majority 'yes' 25.0%)" in text
    assert "  caption (2 rows) cider_d: 1.300 (untrained -)" in text


def test_t2i_summary_prints_categories_ceiling_tokens_and_centralized():
    t2i = {
        "geneval_overall": {"initial": 0.1, "final": 0.5},
        "by_category": {"single_object": {"initial": 0.25, "final": 1.0}, "colors": {"initial": 0.0, "final": 0.5}},
        "vq_ceiling": 0.875,
        "vq_ceiling_by_category": {"single_object": 1.0, "colors": 0.75},
        "image_token_accuracy": {"initial": 0.01, "final": 0.42},
        "image_token_nll": {"initial": 6.0, "final": 2.25},
    }
    summary = {
        **BASE,
        "task": "t2i",
        "metric": "geneval_overall",
        "metric_bounded": True,
        "majority_answer": "",
        "majority_baseline_accuracy": None,
        "federated_final_accuracy": 0.5,
        "federated_initial_accuracy": 0.1,
        "federated_by_answer_type": {},
        "federated_t2i": t2i,
        "centralized_final_accuracy": 0.55,
        "centralized_t2i": {**t2i, "by_category": {"colors": {"initial": 0.0, "final": 0.625}}},
    }
    lines = format_summary(summary, [_record("geneval_overall", 0.5)]).splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("federated global geneval_overall"))
    assert lines[start] == "federated global geneval_overall:        50.0%  (untrained 10.0%)"
    assert lines[start + 1 : start + 6] == [
        "  GenEval by category (untrained -> final): single_object 25.0% -> 100.0%, colors 0.0% -> 50.0%",
        "  VQ-reconstruction ceiling: 87.5% (single_object 100.0%, colors 75.0%)",
        "  teacher-forced image tokens: top-1 accuracy 1.0% -> 42.0%, NLL 6.000 -> 2.250",
        "centralized, same budget:                55.0%  (federated -5.0 pts)",
        "  GenEval by category (untrained -> final): colors 0.0% -> 62.5%",
    ]
