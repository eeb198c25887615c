"""The model host under heterogeneous ranks: a rank-r client on the shared rank-R LoRA (masked
components stay exactly zero, only its own factors travel), FFA-LoRA's frozen A, and FLoRA's
frozen ΔW on the base weights, saved as a PEFT adapter plain peft loads; and
ModelHost.generate_images: the eval config's guidance and temperature, generation backends only;
the t2i evaluation's images in GenEval's layout and its once-per-target VQ ceiling."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from fedumm import codec
from fedumm.adapters import TASK_ADAPTERS, adapter_of_key, load_adapter
from fedumm.data.federated import ClientData
from fedumm.data.geneval import read_geneval_layout
from fedumm.data.synthetic import make_synthetic_t2i, make_synthetic_vqa
from fedumm.errors import AdapterStateError, ConfigError
from fedumm.federation import ModelHost
from fedumm.federation.client import ClientRuntime
from fedumm.lowrank import A_SUFFIX, B_SUFFIX, truncate
from fedumm.validation import load_run_config


def _host(tiny_llava_path, *overrides):
    config = load_run_config(
        None,
        [
            f"model.name_or_path={tiny_llava_path}",
            "model.device=cpu",
            "adapter.r=8",
            "adapter.dropout=0.0",
            "train.local_steps=3",
            "train.batch_size=4",
            "train.lr=0.05",
            "train.weight_decay=0.1",
            "eval.clients=false",
            *overrides,
        ],
    )
    host = ModelHost(config)
    return config, host, ClientRuntime(ClientData(0, make_synthetic_vqa(8, seed=3), []), host, config)


def _factors(host):
    return {k: p for k, p in host.units["lora"].items()}


def test_a_rank_4_client_trains_its_first_4_components_and_sends_only_them(tiny_llava_path):
    config, host, client = _host(tiny_llava_path)
    full = host.initial_state
    message = codec.encode_message({"state": truncate(full, 4)})
    # Execute
    reply = client.fit(message, round_num=1)
    # Assert: beyond component 4 every factor and its last gradient are exactly zero ...
    for key, param in _factors(host).items():
        tail = param[4:] if key.endswith(A_SUFFIX) else param[:, 4:]
        grad = param.grad[4:] if key.endswith(A_SUFFIX) else param.grad[:, 4:]
        assert torch.count_nonzero(tail) == 0, key
        assert torch.count_nonzero(grad) == 0, key
    # ... while the first 4 trained (B starts at zero; A moved from its initialisation).
    a_key = next(k for k in full if k.endswith(A_SUFFIX))
    b_key = next(k for k in full if k.endswith(B_SUFFIX))
    assert torch.count_nonzero(host.units["lora"][b_key][:, :4]) > 0
    assert not torch.equal(host.units["lora"][a_key][:4].detach(), full[a_key][:4])
    # The reply is rank 4: half the factor bytes of a rank-8 reply (float32 on the wire).
    sent = codec.decode_message(reply.payload)["state"]
    assert sent[a_key].shape == (4, full[a_key].shape[1]) and sent[b_key].shape == (full[b_key].shape[0], 4)
    tensor_bytes = sum(t.numel() * 4 for t in sent.values())
    assert tensor_bytes * 2 == sum(t.numel() * 4 for t in full.values())
    assert tensor_bytes < len(reply.payload) < tensor_bytes + 16_384  # plus the header
    # Loading the full-rank state again lifts the mask.
    host.set_state(full)
    assert host.rank == 8


def test_a_rank_above_the_hosts_is_refused(tiny_llava_path):
    _, host, _ = _host(tiny_llava_path)
    bigger = {
        k: torch.zeros(16, v.shape[1]) if k.endswith(A_SUFFIX) else torch.zeros(v.shape[0], 16)
        for k, v in host.initial_state.items()
    }
    with pytest.raises(ValueError, match="above the 8"):
        host.set_state(bigger)


def test_freeze_a_trains_and_sends_b_only(tiny_llava_path):
    _, host, client = _host(tiny_llava_path, "adapter.freeze_a=true")
    a_before = {k: p.detach().clone() for k, p in host.model.named_parameters() if "lora_A" in k}
    assert host.units["lora"] and all(k.endswith(B_SUFFIX) for k in host.units["lora"])
    reply = client.fit(codec.encode_message({"state": host.initial_state}), round_num=1)
    sent = codec.decode_message(reply.payload)["state"]
    assert set(sent) == set(host.units["lora"])
    assert any(torch.count_nonzero(t) for t in sent.values())
    for name, param in host.model.named_parameters():
        if "lora_A" in name:
            assert not param.requires_grad and torch.equal(param.detach(), a_before[name]), name


def test_frozen_delta_moves_the_base_weight_and_is_undone(tiny_llava_path):
    _, host, _ = _host(tiny_llava_path)
    module = sorted(host._lora_layers)[0]
    layer = host._lora_layers[module]
    weight = layer.get_base_layer().weight
    original = weight.detach().clone()
    delta = torch.randn(weight.shape, generator=torch.Generator().manual_seed(0))
    # Execute
    host.set_frozen_delta({module: delta})
    # Assert: W = W0 + (alpha / r) D = W0 + 4 D (alpha 32, r 8).
    assert layer.scaling["default"] == 4.0
    assert torch.allclose(weight, original + 4.0 * delta, atol=1e-6)
    host.set_frozen_delta({})
    assert torch.equal(weight, original)
    with pytest.raises(AdapterStateError, match="not a LoRA module"):
        host.set_frozen_delta({"nowhere": delta})
    with pytest.raises(AdapterStateError, match="has shape"):
        host.set_frozen_delta({module: torch.zeros(1, 1)})


def test_saved_adapter_with_a_frozen_delta_loads_in_plain_peft_with_the_same_outputs(tiny_llava_path, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText

    _, host, client = _host(tiny_llava_path)
    client.fit(codec.encode_message({"state": host.initial_state}), round_num=1)
    modules = sorted(host._lora_layers)
    generator = torch.Generator().manual_seed(1)
    delta = {
        m: 0.01 * torch.randn(host._lora_layers[m].get_base_layer().weight.shape, generator=generator) for m in modules
    }
    host.set_frozen_delta(delta)
    batch = host.backend.to_device(host.backend.training_batch(make_synthetic_vqa(4, seed=5)))
    with torch.no_grad():
        expected = host.model(**batch).logits
    # Execute
    host.save_pretrained(str(tmp_path / "adapter"))
    loaded = PeftModel.from_pretrained(
        AutoModelForImageTextToText.from_pretrained(tiny_llava_path), str(tmp_path / "adapter")
    )
    loaded.eval()
    with torch.no_grad():
        got = loaded(**batch).logits
    # Assert: same outputs; the saved rank is the merged update's numerical rank (64 x 64 modules: up to 64).
    assert (got - expected).abs().max().item() < 1e-4
    assert loaded.peft_config["default"].r > 8


def _generation_host(*overrides: str) -> ModelHost:
    return ModelHost(load_run_config(None, ["model.device=cpu", *overrides]))


def test_generate_images_samples_with_the_eval_settings():
    host = _generation_host("model.backend=janus", "eval.cfg_scale=1", "eval.image_temperature=0")

    greedy = host.generate_images(["a red square", "a blue circle"], seed=0)
    other_seed = host.generate_images(["a red square", "a blue circle"], seed=5)

    assert [i.size for i in greedy] == [(32, 32), (32, 32)]
    # Temperature 0 is greedy: the seed cannot matter.
    assert [i.tobytes() for i in greedy] == [i.tobytes() for i in other_seed]


def test_an_understanding_backend_cannot_generate(tiny_llava_path):
    host = _generation_host(f"model.name_or_path={tiny_llava_path}")
    with pytest.raises(ConfigError, match="model.backend: hf_vlm does not generate images"):
        host.generate_images(["a red square"], seed=0)


# ---------------------------------------------------------------- adapter.per_task


def _per_task_host() -> tuple:
    config = load_run_config(
        None,
        [
            "model.backend=janus",
            "model.device=cpu",
            "adapter.per_task=true",
            "adapter.r=4",
            "adapter.dropout=0.0",
            "eval.task=multitask",
            "eval.clients=false",
            "data.synthetic.task_mix=0.5",
            "train.local_steps=2",
            "train.batch_size=2",
            "train.lr=0.05",
            "train.weight_decay=0",
        ],
    )
    return config, ModelHost(config)


def _vqa_rows(n: int) -> list[dict]:
    return [dict(row, task="vqa") for row in make_synthetic_vqa(n, seed=3)]


def _t2i_rows(n: int) -> list[dict]:
    return make_synthetic_t2i(n, seed=3, tags={"single_object": 1})


def _by_adapter(state: dict) -> dict[str, dict]:
    out: dict[str, dict] = {name: {} for name in TASK_ADAPTERS}
    for key, tensor in state.items():
        out[adapter_of_key(key)][key] = tensor
    return out


def _changed(before: dict, after: dict) -> int:
    return sum(not torch.equal(before[k], after[k]) for k in before)


@pytest.fixture(scope="module")
def per_task_host():
    return _per_task_host()


@pytest.mark.parametrize(
    ("rows", "trained", "untouched"),
    [(_vqa_rows, "understanding", "generation"), (_t2i_rows, "generation", "understanding")],
)
def test_a_one_task_client_trains_only_its_tasks_adapter_and_says_so(per_task_host, rows, trained, untouched):
    # Prepare: the two adapters' keys are told apart by name; the client holds 4 rows of one task.
    config, host = per_task_host
    initial = _by_adapter(host.initial_state)
    assert len(initial["understanding"]) == len(initial["generation"]) > 0
    client = ClientRuntime(ClientData(0, rows(4), []), host, config)
    # Execute
    reply = client.fit(codec.encode_message({"state": host.initial_state}), round_num=1)
    # Assert: its task's adapter moved, the other is sent exactly as received; the reply counts the rows.
    sent = _by_adapter(codec.decode_message(reply.payload)["state"])
    assert _changed(initial[trained], sent[trained]) == len(initial[trained])
    assert _changed(initial[untouched], sent[untouched]) == 0
    assert reply.metrics[f"trained_rows.{trained}"] == 4 and reply.metrics[f"trained_rows.{untouched}"] == 0
    assert host.model.active_adapter == "understanding"


def test_per_task_adapters_save_as_two_peft_adapters_plain_peft_loads(per_task_host, tmp_path):
    from peft import PeftModel

    # Prepare: a client with both tasks trains both adapters.
    config, host = per_task_host
    client = ClientRuntime(ClientData(0, _vqa_rows(4) + _t2i_rows(4), []), host, config)
    reply = client.fit(codec.encode_message({"state": host.initial_state}), round_num=1)
    assert reply.metrics["trained_rows.understanding"] == 4 and reply.metrics["trained_rows.generation"] == 4
    batches = {
        "understanding": host.backend.training_batch(_vqa_rows(2)),
        "generation": host.backend.training_batch(_t2i_rows(2)),
    }
    expected = {}
    with torch.no_grad():
        for task, name in (("vqa", "understanding"), ("t2i", "generation")):
            with host.task_scope(task):
                expected[name] = host.backend.loss(host.model, batches[name]).item()
    # Execute: save, then load with plain peft on a fresh base.
    host.save_pretrained(str(tmp_path / "adapter"))
    loaded = PeftModel.from_pretrained(
        host.backend.load(), str(tmp_path / "adapter" / "understanding"), adapter_name="understanding"
    )
    loaded.load_adapter(str(tmp_path / "adapter" / "generation"), adapter_name="generation")
    loaded.eval()
    # Assert: each adapter gives the host's loss on its task; the two differ (they trained apart).
    with torch.no_grad():
        for name, batch in batches.items():
            loaded.set_adapter(name)
            assert host.backend.loss(loaded, batch).item() == pytest.approx(expected[name], rel=1e-5)
    assert expected["understanding"] != pytest.approx(expected["generation"])
    # fedumm's own loader takes the folder as a whole: both adapters, understanding active.
    ours = load_adapter(host.backend.load(), str(tmp_path / "adapter"))
    ours.eval()
    assert set(ours.peft_config) == {"understanding", "generation"} and ours.active_adapter == "understanding"
    with torch.no_grad():
        assert host.backend.loss(ours, batches["understanding"]).item() == pytest.approx(expected["understanding"])


def test_a_backend_that_cannot_generate_refuses_t2i_rows_naming_the_key(tiny_llava_path):
    _, host, _ = _host(tiny_llava_path)
    rows = _vqa_rows(2) + _t2i_rows(3)
    with pytest.raises(ConfigError, match=r"model.backend: hf_vlm cannot train text-to-image rows \(c7 holds 3\)"):
        host.train(rows, host.config.train, 0, None, False, "c7")


def test_t2i_evaluation_writes_geneval_folders_and_reconstructs_each_target_once(tmp_path):
    # Prepare: greedy sampling; three t2i rows, the last a prompt without a target image.
    host = _generation_host("model.backend=janus", "eval.task=t2i", "eval.cfg_scale=1", "eval.image_temperature=0")
    rows = make_synthetic_t2i(3, seed=4)
    rows[2] = {**rows[2], "image": None}
    calls: list[int] = []
    reconstruct = host.backend.reconstruct_images
    host.backend.reconstruct_images = lambda images: calls.append(len(images)) or reconstruct(images)
    # Execute: an evaluation that saves its images, then one that does not.
    with host.saving_images(tmp_path / "final"):
        saved = host.evaluate(rows, batch_size=2)
    again = host.evaluate(rows, batch_size=2)
    # Assert: GenEval's layout, one sample per prompt, each the image the host draws for it.
    folders = read_geneval_layout(tmp_path / "final")
    assert [f.index for f in folders] == [0, 1, 2] and [f.metadata for f in folders] == [r["geneval"] for r in rows]
    drawn = host.t2i_images(rows, batch_size=2)
    assert [Image.open(f.samples[0]).convert("RGB").tobytes() for f in folders] == [i.tobytes() for i in drawn]
    assert not (tmp_path / "final" / "00003").exists() and len(list(tmp_path.iterdir())) == 1
    # The two targets are reconstructed once for both evaluations; greedy rounds agree.
    assert calls == [2] and saved == again and saved["n"] == 3
    # Token metrics of the two rows with a target: the backend's over both (token-weighted).
    expected = host.backend.image_token_metrics(host.model, rows[:2])
    assert saved["image_token_accuracy"] == pytest.approx(expected["image_token_accuracy"], abs=1e-6)
    assert saved["image_token_nll"] == pytest.approx(expected["image_token_nll"], rel=1e-5)
    assert 0 <= saved["vq_ceiling"] <= 1 and "clip_score" not in saved


# ---------------------------------------------------------------------------- eval.mode: score


def _yes_no(n, seed, answer=None):
    rows = [r for r in make_synthetic_vqa(4 * n, seed=seed) if r["answer_type"] == "yes/no"][:n]
    return [dict(r, multiple_choice_answer=answer, answers=[answer] * 10) if answer else r for r in rows]


SCORE = ("eval.task=classification", "eval.mode=score", "eval.choices=['yes', 'no']")


def test_score_mode_answers_with_the_choice_of_highest_log_likelihood_by_hand(tiny_llava_path):
    # Prepare
    _, host, _ = _host(tiny_llava_path, *SCORE)
    rows = _yes_no(4, seed=11)
    # Execute
    answers = host.predict(rows, batch_size=3)
    # Assert: log p(answer tokens + end | prompt) from the logits of each (row, choice) sequence alone.
    backend = host.backend
    for row, answer in zip(rows, answers):
        totals = []
        for choice in ("yes", "no"):
            batch = backend.training_batch([dict(row, multiple_choice_answer=choice)])
            with torch.no_grad():
                logits = host.model(**{k: v for k, v in batch.items() if k != "labels"}).logits[0].float()
            labels = batch["labels"][0]
            positions = (labels != -100).nonzero().flatten().tolist()
            totals.append(sum(float(logits[t - 1].log_softmax(-1)[labels[t]]) for t in positions))
        assert len(positions) >= 2  # answer token(s) and the end token
        assert answer == ("yes" if totals[0] >= totals[1] else "no")


def test_score_and_generate_agree_once_the_model_is_trained(tiny_llava_path):
    # Prepare: train the adapter to answer "yes".
    config, host, _ = _host(tiny_llava_path, *SCORE, "train.local_steps=15")
    rows = _yes_no(8, seed=12)
    host.train(_yes_no(8, seed=13, answer="yes"), config.train, seed=0, hooks=None, progress=False, description="yes")
    # Execute
    scored = host.predict(rows, batch_size=8)
    generated = host.backend.predict(host.model, rows)
    # Assert
    assert scored == generated == ["yes"] * 8
    assert host.evaluate(rows, batch_size=8)["accuracy"] == pytest.approx(
        sum(r["multiple_choice_answer"] == "yes" for r in rows) / 8
    )


@pytest.mark.parametrize(
    "overrides, named",
    [
        (
            ["eval.mode=score", "eval.choices=['yes', 'no']"],
            "eval.mode: score needs closed-vocabulary tasks (classification), but task 'vqa'",
        ),
        (["eval.task=classification", "eval.mode=score"], "eval.choices:"),
        (["eval.task=classification", "eval.mode=score", "eval.choices=['Yes', 'yes']"], "eval.choices:"),
        (["eval.mode=sample"], "eval.mode"),
    ],
)
def test_score_mode_is_refused_in_one_line_without_a_closed_vocabulary(overrides, named):
    with pytest.raises(ConfigError) as info:
        load_run_config(None, overrides)
    assert named in str(info.value) and "\n" not in str(info.value).strip()


@pytest.mark.slow
def test_a_compiled_model_computes_the_eager_loss(tiny_llava_path):
    # Prepare: the same seeded host, compiled and not, and one batch.
    _, compiled, _ = _host(tiny_llava_path, "model.compile=true")
    _, eager, _ = _host(tiny_llava_path)
    batch = eager.backend.training_batch(make_synthetic_vqa(4, seed=21))
    # Execute
    with torch.no_grad():
        losses = [float(h.backend.loss(h.model, batch)) for h in (compiled, eager)]
    # Assert: the wrapper's forward is compiled and computes the same loss (float32 noise).
    assert compiled.model._compiled_call_impl is not None and eager.model._compiled_call_impl is None
    assert losses[0] == pytest.approx(losses[1], abs=1e-5)
