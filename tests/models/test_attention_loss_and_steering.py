"""The attention loss and steering by attention."""

from __future__ import annotations

import torch

from attn_pipeline.models import build_vae
from attn_pipeline.models.attention import relative_map
from attn_pipeline.models.losses import attention_alignment, training_objective, vae_loss_terms
from attn_pipeline.models.steering import ReplaceMap, ScaleRectangle, rectangle_mask
from attn_pipeline.pipelines.generate.nodes import steering_rows
from attn_pipeline.spec.config import ModelConfig, TrainConfig
from attn_pipeline.training.loop import fit
from tests.conftest import MNIST_SHAPE, digit_like_images


def _batch(n: int = 64) -> torch.Tensor:
    images, _ = digit_like_images(n)
    return torch.from_numpy(images).float().div(255).unsqueeze(1)


def test_alignment_is_zero_when_the_map_is_the_error_distribution() -> None:
    x = _batch(4)
    # logits 0 would give the same error (log 2) at every pixel: use informative ones
    logits = 3 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    error = torch.nn.functional.binary_cross_entropy_with_logits(logits, x, reduction="none")
    target = torch.nn.functional.adaptive_avg_pool2d(error, (14, 14))
    target = target / target.sum(dim=(2, 3), keepdim=True)
    torch.testing.assert_close(
        attention_alignment(target, logits, x), torch.zeros(4), atol=1e-5, rtol=0
    )
    uniform = torch.full((4, 1, 14, 14), 1 / 196)
    assert bool((attention_alignment(uniform, logits, x) > 0).all())


def test_alignment_trains_the_map_not_the_decoder() -> None:
    x = _batch(4)
    logits = torch.randn_like(x, requires_grad=True)
    attention = torch.softmax(torch.randn(4, 196, requires_grad=True), -1).view(4, 1, 14, 14)
    attention.retain_grad()
    attention_alignment(attention, logits, x).sum().backward()
    assert logits.grad is None and attention.grad is not None


def test_weight_zero_changes_nothing() -> None:
    """With the attention term computed but weighted 0, loss and gradients are the VAE's."""
    x = _batch()
    torch.manual_seed(0)
    model = build_vae(ModelConfig(variant="spatial", latent_dim=8), MNIST_SHAPE)
    results = []
    for with_attention in (False, True):
        model.zero_grad()
        noise = torch.Generator().manual_seed(3)
        terms = vae_loss_terms(model(x, generator=noise), x, with_attention=with_attention)
        assert (terms.attention is not None) == with_attention
        loss = training_objective(terms, beta=1.0, attention_weight=0.0)
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append((loss.detach(), grads))
    (loss_a, grads_a), (loss_b, grads_b) = results
    assert torch.equal(loss_a, loss_b)
    assert grads_a.keys() == grads_b.keys()
    for name in grads_a:
        assert torch.equal(grads_a[name], grads_b[name]), name


def test_attention_loss_trains_the_map_and_is_logged_when_weighted() -> None:
    """Same seed, same data: the map trained with the loss matches the error better.

    (The loss itself need not fall during training: its target, the error, moves.)
    """
    x = _batch()
    alignment, histories = {}, {}
    for weight in (0.0, 1.0):
        torch.manual_seed(0)
        model = build_vae(
            ModelConfig(variant="spatial", latent_dim=8, attention_loss_weight=weight), MNIST_SHAPE
        )
        config = TrainConfig(epochs=30, batch_size=32, learning_rate=3e-3)
        histories[weight] = fit(model, x, None, config, show_progress=False).history
        with torch.no_grad():
            terms = vae_loss_terms(model.eval()(x, sample=False), x, with_attention=True)
        alignment[weight] = float(terms.attention.mean())
    assert alignment[1.0] < 0.75 * alignment[0.0]
    assert all("train/attention_loss" in row for row in histories[1.0])
    assert not any("train/attention_loss" in row for row in histories[0.0])


def test_rectangle_mask_uses_image_coordinates() -> None:
    mask = rectangle_mask(14, 28, top=0, bottom=14, left=14, right=28)
    assert mask.sum() == 49 and bool(mask[:7, 7:].all()) and not bool(mask[7:, :].any())


def test_edits_keep_a_distribution() -> None:
    attention = torch.softmax(torch.randn(3, 196), -1).view(3, 1, 14, 14)
    scaled = ScaleRectangle(top=0, bottom=14, left=0, right=28, factor=5.0, image_size=28)(
        attention
    )
    torch.testing.assert_close(scaled.sum(dim=(2, 3)), torch.ones(3, 1))
    top_half = rectangle_mask(14, 28, top=0, bottom=14, left=0, right=28)
    assert bool((scaled[:, 0][:, top_half].sum(1) > attention[:, 0][:, top_half].sum(1)).all())
    replaced = ReplaceMap(values=((0.0, 1.0), (0.0, 0.0)))(attention)
    torch.testing.assert_close(replaced.sum(dim=(2, 3)), torch.ones(3, 1))
    assert float(replaced[:, :, 7:, :].sum()) == 0.0 and float(replaced[:, :, :7, :7].sum()) == 0


def test_the_gate_ignores_renormalisation_outside_the_edit() -> None:
    """relative_map: suppressing a half that does not hold the peak leaves the gate's view
    of the other half exactly as it was (the locality of spatial_gate's edits)."""
    logits = torch.randn(3, 196, generator=torch.Generator().manual_seed(0))
    logits[:, 150] = 10.0  # the peak in the bottom half (row 10)
    attention = torch.softmax(logits, -1).view(3, 1, 14, 14)
    edited = ScaleRectangle(top=0, bottom=14, left=0, right=28, factor=0.05, image_size=28)(
        attention
    )
    before, after = relative_map(attention), relative_map(edited)
    torch.testing.assert_close(after[:, :, 7:], before[:, :, 7:])
    torch.testing.assert_close(after[:, :, :7], 0.05 * before[:, :, :7])
    assert not torch.equal(edited[:, :, 7:], attention[:, :, 7:])  # the map itself moved


def test_steering_rows_share_one_map_draw_and_apply_each_edit() -> None:
    torch.manual_seed(0)
    model = build_vae(ModelConfig(variant="spatial_gate", latent_dim=8), MNIST_SHAPE).eval()
    z = torch.randn(4, 8, generator=torch.Generator().manual_seed(1))
    donors = _batch(4)
    custom = ScaleRectangle(top=0, bottom=14, left=0, right=28, factor=3.0, image_size=28)
    rows = steering_rows(model, z, donors, custom)
    labels = [label for label, _, _ in rows]
    assert labels[0] == "unsteered" and len(rows) == 1 + 8 + 4 + 2
    assert labels[1] == "top emphasised x8" and labels[5] == "top suppressed x0.05"
    unsteered_map = rows[0][2]
    top = rectangle_mask(14, 28, top=0, bottom=14, left=0, right=28)
    emphasised, suppressed = rows[1][2], rows[5][2]
    assert bool((emphasised[:, 0][:, top].sum(1) > unsteered_map[:, 0][:, top].sum(1)).all())
    assert bool((suppressed[:, 0][:, top].sum(1) < unsteered_map[:, 0][:, top].sum(1)).all())
    torch.testing.assert_close(rows[13][2], model.attention_map_of(donors))  # transplant
    for _, images, maps in rows:
        assert images.shape == (4, 1, 28, 28) and maps.shape == (4, 1, 14, 14)
