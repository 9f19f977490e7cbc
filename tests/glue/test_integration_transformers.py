"""SCLTrainer / scl_compute_loss with a tiny randomly initialised model."""

from __future__ import annotations

import pytest
import torch

from scl_loss import SCLCrossEntropy
from scl_loss.functional import scl_cross_entropy
from scl_loss.integrations.transformers import SCLTrainer, first_token_features, scl_compute_loss


@pytest.fixture
def tiny():
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=40,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
        num_labels=3,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    return BertForSequenceClassification(config)


def batch(n=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "input_ids": torch.randint(5, 40, (n, 7), generator=g),
        "attention_mask": torch.ones(n, 7, dtype=torch.long),
        "labels": torch.tensor([0, 1, 2, 0, 1, 2, 0, 1][:n]),
    }


def test_loss_is_scl_cross_entropy_of_logits_and_first_token_state(tiny):
    inputs = batch()
    loss, out = scl_compute_loss(tiny, inputs, SCLCrossEntropy(0.7, 0.3), return_outputs=True)
    with torch.no_grad():
        ref_out = tiny(
            input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], output_hidden_states=True
        )
    phi = ref_out.hidden_states[-1][:, 0]
    expected = scl_cross_entropy(ref_out.logits, phi, inputs["labels"], lambda_=0.7, tau=0.3)
    torch.testing.assert_close(loss.detach(), expected)
    # only loss and logits come back: nothing else for the Trainer to gather at evaluation
    assert set(out.keys()) == {"loss", "logits"}
    torch.testing.assert_close(first_token_features(ref_out), phi)


def test_missing_labels_and_hidden_states_are_clear_errors(tiny):
    inputs = batch()
    inputs.pop("labels")
    with pytest.raises(ValueError, match="inputs must contain 'labels'"):
        scl_compute_loss(tiny, inputs, SCLCrossEntropy(0.5, 0.3))
    with pytest.raises(ValueError, match="output_hidden_states=True"):
        first_token_features(tiny(**inputs))


def test_scl_contributes_gradient_to_the_encoder(tiny):
    """λ = 1 (SCL alone) moves the encoder; CE+SCL differs from CE alone."""
    inputs = batch()
    grads = {}
    for lam in (0.0, 0.5, 1.0):
        tiny.zero_grad()
        scl_compute_loss(tiny, inputs, SCLCrossEntropy(lam, 0.3)).backward()
        grads[lam] = tiny.bert.encoder.layer[0].attention.self.query.weight.grad.clone()
        if lam == 1.0:  # SCL does not depend on the head
            assert tiny.classifier.weight.grad is None or not tiny.classifier.weight.grad.abs().sum()
    assert grads[1.0].abs().sum() > 0
    assert not torch.allclose(grads[0.0], grads[0.5])
    torch.testing.assert_close(grads[0.5], 0.5 * grads[0.0] + 0.5 * grads[1.0])


def _trainer(tiny, tmp_path, **kwargs):
    from transformers import TrainingArguments

    args = TrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=4,
        per_device_eval_batch_size=4,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        logging_strategy="no",
        **kwargs,
    )
    return SCLTrainer(model=tiny, args=args, scl_lambda=0.5, scl_tau=0.3)


def test_trainer_scales_micro_batches_for_gradient_accumulation(tiny, tmp_path):
    trainer = _trainer(tiny, tmp_path, gradient_accumulation_steps=2)
    assert trainer.model_accepts_loss_kwargs is False
    inputs = batch()
    trainer.current_gradient_accumulation_steps = 2
    tiny.zero_grad()
    reported = trainer.training_step(tiny, dict(inputs), num_items_in_batch=torch.tensor(16))
    grad = tiny.classifier.weight.grad.clone()
    tiny.zero_grad()
    tiny.train()
    full = scl_compute_loss(tiny, inputs, SCLCrossEntropy(0.5, 0.3))
    full.backward()
    # the micro-batch loss (a mean) is divided by the accumulation steps, whatever num_items_in_batch says
    torch.testing.assert_close(reported, full.detach() / 2)
    torch.testing.assert_close(grad, tiny.classifier.weight.grad / 2)


def test_trainer_trains_and_evaluates_with_logits_only(tiny, tmp_path):
    inputs = batch()
    rows = [{k: v[i] for k, v in inputs.items()} for i in range(8)]
    trainer = _trainer(tiny, tmp_path, num_train_epochs=2, learning_rate=1e-3)
    trainer.train_dataset = rows
    trainer.eval_dataset = rows
    before = tiny.classifier.weight.detach().clone()
    trainer.train()
    assert not torch.allclose(before, tiny.classifier.weight)
    prediction = trainer.predict(rows)
    assert prediction.predictions.shape == (8, 3)  # logits only, not hidden states
    assert prediction.metrics["test_loss"] > 0


# --- scl_micro_batch_size: the cached step (scl_loss.cached_backward) --------------------------


def _one_step(model, out, rows, **kwargs):
    """Train ``model`` for one optimiser step with SGD (its update is -lr · gradient, so any
    gradient difference shows) and return the trainer."""
    trainer = _step_trainer(model, out, rows, **kwargs)
    trainer.train()
    return trainer


def _rows(n=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 40, (n, 7), generator=g)
    mask = torch.ones(n, 7, dtype=torch.long)
    mask[::3, 5:] = 0
    labels = torch.randint(0, 3, (n,), generator=g)
    return [{"input_ids": ids[i], "attention_mask": mask[i], "labels": labels[i]} for i in range(n)]


@pytest.mark.parametrize(("micro_batch_size", "accumulation"), [(3, 1), (8, 1), (3, 2)])
def test_cached_step_equals_the_plain_step_update(tiny, tmp_path, micro_batch_size, accumulation):
    """Dropout off, float64: the parameters after one SGD step are the plain step's (within 1e-10),
    so the cached step neither loses part of the gradient nor backpropagates twice."""
    import copy

    tiny = tiny.double()
    before = {n: p.detach().clone() for n, p in tiny.named_parameters()}
    rows = _rows(8 * accumulation)
    plain = copy.deepcopy(tiny)
    _one_step(plain, tmp_path / "plain", rows, gradient_accumulation_steps=accumulation)
    cached = copy.deepcopy(tiny)
    seen = []  # rows per encoder call: the micro-batches, each run twice (no graph, then with one)
    cached.bert.embeddings.word_embeddings.register_forward_pre_hook(lambda m, a: seen.append(len(a[0])))
    trainer = _one_step(
        cached,
        tmp_path / "cached",
        rows,
        gradient_accumulation_steps=accumulation,
        scl_micro_batch_size=micro_batch_size,
    )
    assert trainer.scl_micro_batch_size == micro_batch_size
    chunks = [min(micro_batch_size, 8 - start) for start in range(0, 8, micro_batch_size)]
    assert seen == 2 * chunks * accumulation
    moved = 0.0
    for (name, p), q in zip(cached.named_parameters(), plain.parameters(), strict=True):
        step = (q.detach() - before[name]).norm().item()
        moved += step
        error = (p.detach() - q.detach()).norm().item()
        assert error <= 1e-10 * step + 1e-15, f"{name}: |Δ| = {error:.3e}, plain step {step:.3e}"
    assert moved > 0.1  # the step did move the model


def test_cached_training_step_reports_the_plain_loss_and_gradient(tiny, tmp_path):
    """training_step directly, with accumulation: the reported loss and gradient are divided by the
    accumulation steps as in the plain step."""
    tiny = tiny.double()
    trainer = _trainer(tiny, tmp_path, gradient_accumulation_steps=2)
    trainer.scl_micro_batch_size = 3
    inputs = batch()
    trainer.current_gradient_accumulation_steps = 2
    tiny.zero_grad()
    reported = trainer.training_step(tiny, dict(inputs))
    grad = tiny.bert.embeddings.word_embeddings.weight.grad.clone()
    tiny.zero_grad()
    full = scl_compute_loss(tiny, inputs, SCLCrossEntropy(0.5, 0.3))
    full.backward()
    torch.testing.assert_close(reported, full.detach() / 2, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(
        grad, tiny.bert.embeddings.word_embeddings.weight.grad / 2, rtol=1e-10, atol=1e-14
    )


def test_scl_gather_distributed_reaches_the_criterion(tiny, tmp_path):
    from transformers import TrainingArguments

    args = TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True)
    trainer = SCLTrainer(model=tiny, args=args, scl_gather_distributed=True, scl_micro_batch_size=4)
    assert trainer.scl_criterion.gather_distributed is True
    assert SCLTrainer(model=tiny, args=args).scl_criterion.gather_distributed is False


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"scl_micro_batch_size": 0}, ValueError, "scl_micro_batch_size must be None or an int >= 1, got 0"),
        (
            {"scl_micro_batch_size": "8"},
            TypeError,
            "scl_micro_batch_size must be None or an int >= 1, got str",
        ),
        ({"scl_gather_distributed": 1}, TypeError, "scl_gather_distributed must be a bool, got int"),
    ],
)
def test_scl_trainer_bad_arguments(tiny, tmp_path, kwargs, error, match):
    from transformers import TrainingArguments

    args = TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True)
    with pytest.raises(error, match=match):
        SCLTrainer(model=tiny, args=args, **kwargs)


def test_cached_step_under_bf16_autocast_trains(tiny, tmp_path):
    """Mixed precision goes through accelerate (autocast around the model's forward): the cached
    step runs and its update is the plain bf16 step's within bf16 rounding."""
    import copy

    before = {n: p.detach().clone() for n, p in tiny.named_parameters()}
    rows = _rows(8)
    plain = copy.deepcopy(tiny)
    _one_step(plain, tmp_path / "plain", rows, bf16=True)
    cached = copy.deepcopy(tiny)
    _one_step(cached, tmp_path / "cached", rows, bf16=True, scl_micro_batch_size=3)
    for (name, p), q in zip(cached.named_parameters(), plain.parameters(), strict=True):
        step = (q.detach() - before[name]).norm().item()
        error = (p.detach() - q.detach()).norm().item()
        assert error <= 5e-2 * step + 1e-6, f"{name}: |Δ| = {error:.3e}, plain step {step:.3e}"


def _ddp_rank(rank: int, world: int, workdir: str, accumulation: int) -> None:
    """One SCLTrainer step on 2 gloo ranks (accelerate picks up the process group), with a DDP comm
    hook that counts the gradient all-reduces."""
    import json
    import os
    from pathlib import Path

    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook
    from transformers import TrainerCallback

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29500")  # unused: the group exists already
    calls = []

    class CountAllReduces(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            def hook(counter, bucket):  # no annotations: DDP checks them
                counter.append(1)
                return allreduce_hook(None, bucket)

            trainer.model_wrapped.register_comm_hook(calls, hook)

    model = _tiny_float64()
    trainer = _step_trainer(
        model,
        Path(workdir) / f"rank{rank}",
        _rows(8 * accumulation),
        per_device_train_batch_size=4,
        gradient_accumulation_steps=accumulation,
        scl_micro_batch_size=3,
        scl_gather_distributed=True,
    )
    trainer.add_callback(CountAllReduces())
    trainer.train()
    assert type(trainer.model_wrapped).__name__ == "DistributedDataParallel"
    (Path(workdir) / f"calls-{rank}.json").write_text(json.dumps(len(calls)))
    if rank == 0:
        torch.save({n: p.detach() for n, p in model.named_parameters()}, Path(workdir) / "params.pt")


def _tiny_float64():
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=40,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
        num_labels=3,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    return BertForSequenceClassification(config).double()


def _step_trainer(model, out, rows, per_device_train_batch_size=8, **kwargs):
    from transformers import TrainingArguments

    scl = {k: kwargs.pop(k) for k in ("scl_micro_batch_size", "scl_gather_distributed") if k in kwargs}
    args = TrainingArguments(
        output_dir=str(out),
        per_device_train_batch_size=per_device_train_batch_size,
        max_steps=1,
        learning_rate=0.5,
        optim="sgd",
        lr_scheduler_type="constant",
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        logging_strategy="no",
        seed=0,
        **kwargs,
    )
    return SCLTrainer(model=model, args=args, train_dataset=rows, scl_lambda=0.5, scl_tau=0.3, **scl)


@pytest.mark.slow
def test_cached_step_under_ddp_equals_one_process_with_one_all_reduce(tmp_path):
    """2 ranks x 4 rows, 2 accumulation steps, micro-batches of 3, scl_gather_distributed: the update
    equals one process's plain step on 2 x 8 rows, and DDP all-reduces the gradients once per
    optimiser step (the Trainer's no_sync for the first accumulation step, ours inside each)."""
    import json

    import torch.distributed as dist

    from tests._multiprocess import run_on_ranks

    if not (dist.is_available() and dist.is_gloo_available()):
        pytest.skip("needs torch.distributed with gloo")
    accumulation = 2
    run_on_ranks(_ddp_rank, 2, tmp_path / "ddp", accumulation)
    calls = [json.loads((tmp_path / "ddp" / f"calls-{r}.json").read_text()) for r in range(2)]
    assert calls == [1, 1], f"gradient all-reduces per rank: {calls}"
    ddp = torch.load(tmp_path / "ddp" / "params.pt")
    single = _tiny_float64()
    before = {n: p.detach().clone() for n, p in single.named_parameters()}
    _step_trainer(
        single, tmp_path / "single", _rows(8 * accumulation), gradient_accumulation_steps=accumulation
    ).train()
    for name, p in single.named_parameters():
        step = (p.detach() - before[name]).norm().item()
        error = (ddp[name] - p.detach()).norm().item()
        assert error <= 1e-10 * step + 1e-14, f"{name}: |Δ| = {error:.3e}, step {step:.3e}"
