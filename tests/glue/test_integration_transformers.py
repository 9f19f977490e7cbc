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
