import numpy as np
import pytest
from conftest import tiny_settings

from pipelines.model.decision import calibrate, collapsed_class_offsets, output_layer, predicted_shares


def _logits(rng, n=400):
    """Three classes; class 1 (10 % of the labels) never wins the argmax: its score trails by 0.3-1.3."""
    z = rng.normal(size=(n, 3))
    z[:, 1] = np.maximum(z[:, 0], z[:, 2]) - rng.uniform(0.3, 1.3, size=n)
    return z


def test_a_collapsed_class_is_raised_to_its_training_share():
    logits = _logits(np.random.default_rng(0))
    prior = np.array([0.45, 0.10, 0.45])
    assert predicted_shares(logits, np.zeros(3))[1] == 0

    offsets = collapsed_class_offsets(logits, prior, floor=0.5)

    assert offsets[0] == offsets[2] == 0  # classes that are predicted are left alone
    assert 0.3 < offsets[1] < 1.4
    share = predicted_shares(logits, offsets)[1]
    assert 0.10 <= share <= 0.10 + 1 / len(logits)  # the smallest raise that reaches the prior
    smaller = offsets.copy()
    smaller[1] -= 1e-3
    assert predicted_shares(logits, smaller)[1] < 0.10


def test_nothing_moves_when_every_class_is_predicted_or_the_rule_is_off():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(300, 3))
    prior = np.array([0.3, 0.3, 0.4])
    assert not collapsed_class_offsets(logits, prior, floor=0.5).any()
    assert not collapsed_class_offsets(_logits(rng), np.array([0.45, 0.1, 0.45]), floor=0).any()
    assert not collapsed_class_offsets(np.zeros((0, 3)), prior, floor=0.5).any()


def test_a_common_class_that_is_under_predicted_is_left_alone():
    """A class with most of the training labels, predicted on a third of the unseen texts: matching the prior there
    would bet on the next batch having the same label mix, so only rare classes are raised."""
    rng = np.random.default_rng(4)
    z = rng.normal(size=(600, 3))
    z[:, 1] -= 0.6
    prior = np.array([0.12, 0.74, 0.14])
    assert predicted_shares(z, np.zeros(3))[1] < 0.5 * prior[1]
    assert not collapsed_class_offsets(z, prior, floor=0.5).any()


def test_a_class_absent_from_the_training_labels_is_never_raised():
    logits = _logits(np.random.default_rng(2))
    assert not collapsed_class_offsets(logits, np.array([0.5, 0.0, 0.5]), floor=0.5).any()


def test_two_collapsed_classes_are_both_raised():
    rng = np.random.default_rng(3)
    z = rng.normal(size=(500, 3))
    z[:, 2] += 5  # class 2 wins everywhere
    offsets = collapsed_class_offsets(z, np.array([0.2, 0.2, 0.6]), floor=0.5)
    shares = predicted_shares(z, offsets)
    assert offsets[0] > 0 and offsets[1] > 0 and offsets[2] == 0
    assert shares[0] >= 0.1 and shares[1] >= 0.2  # the second raise takes some rows from the first


def test_calibrate_moves_the_output_bias_of_a_real_model(tmp_path, tiny_model_dir):
    torch = pytest.importorskip("torch")
    from pipelines.model.modeling import load_base, torch_logits

    settings = tiny_settings(tmp_path, tiny_model_dir)
    model, tokenizer = load_base(settings)
    layer = output_layer(model)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(layer.weight.shape, generator=torch.Generator().manual_seed(0)) * 5)
        layer.bias.copy_(torch.tensor([0.0, -50.0, 0.0]))  # class 1 can never win
    bias = layer.bias.detach().clone()
    texts = [f"review number {i} was {'good' if i % 2 else 'bad'}" for i in range(60)]
    before = torch_logits(model, tokenizer, texts, 32, 16)
    assert (before.argmax(1) != 1).all()

    prior = 0.8 * predicted_shares(before, np.zeros(3)) + np.array([0.0, 0.2, 0.0])  # only class 1 is collapsed

    offsets = calibrate(model, tokenizer, texts, prior, floor=0.5, max_length=32)

    assert offsets[1] > 40
    assert torch.allclose(layer.bias, bias + torch.as_tensor(offsets, dtype=bias.dtype), atol=1e-4)
    after = torch_logits(model, tokenizer, texts, 32, 16).argmax(1)
    assert (after == 1).mean() >= 0.2  # the model itself now predicts the class


def test_output_layer_names_a_model_without_one():
    torch = pytest.importorskip("torch")

    class NoHead(torch.nn.Module):
        config = type("C", (), {"num_labels": 3})()

        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(4, 5)

    with pytest.raises(ValueError, match="no linear output layer with 3 outputs"):
        output_layer(NoHead())
