"""The one training loop every model variant goes through."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

import torch
from tqdm.auto import tqdm

from attn_pipeline.metrics import evaluate_reconstruction
from attn_pipeline.models import VAE
from attn_pipeline.models.losses import LossTerms, training_objective, vae_loss_terms
from attn_pipeline.spec.config import TrainConfig
from attn_pipeline.training.precision import FP32, ResolvedPrecision, resolve_precision

logger = logging.getLogger(__name__)

#: Called after each epoch with (epoch, metrics); epochs count from 1.
EpochCallback = Callable[[int, dict[str, float]], None]

# Validation draws its posterior samples from this fixed seed so that epochs are comparable.
_VALIDATION_SEED = 1234


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA, then Apple's MPS, then the CPU; a named device must exist."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device is 'cuda' but torch sees no CUDA device; use 'auto'.")
    if name == "mps" and not torch.backends.mps.is_available():
        raise RuntimeError("train.device is 'mps' but MPS is not available; use 'auto'.")
    return torch.device(name)


class TrainingDivergedError(RuntimeError):
    """A loss or gradient stopped being finite: training cannot go on from there."""


def _check_finite(
    loss: torch.Tensor, grad_norm: torch.Tensor, where: str, config: TrainConfig
) -> None:
    """Raise :class:`TrainingDivergedError` naming ``where`` and the likely cause, when the
    loss or the gradient norm is not finite (one device sync per step for both)."""
    if bool(torch.isfinite(loss) & torch.isfinite(grad_norm)):
        return
    what, value = ("loss", loss) if not torch.isfinite(loss) else ("gradient norm", grad_norm)
    raise TrainingDivergedError(
        f"training of {where} diverged: the {what} is {float(value)}. Likely cause: "
        f"train.learning_rate = {config.learning_rate} is too high (1e-3 trains every "
        f"variant here), or the KL weight train.beta = {config.beta} is extreme. Nothing of "
        "this run was saved or logged as a result; lower the learning rate and run again."
    )


def _step(
    model: VAE,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    *,
    beta: float,
    where: str,
    config: TrainConfig,
    precision: ResolvedPrecision = FP32,
) -> LossTerms:
    """One optimisation step on the batch ``x``; refuses a non-finite loss or gradient
    before the optimizer applies it. The forward pass runs under ``precision``'s autocast;
    the loss is computed from its outputs in fp32."""
    weight = model.attention_loss_weight
    with precision.autocast(x.device):
        output = model(x)
    terms = vae_loss_terms(
        output.float(), x, with_attention=weight > 0, attention_target=model.attention_target
    )
    loss = training_objective(terms, beta=beta, attention_weight=weight)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    # the total gradient norm (max_norm infinite: nothing is clipped)
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), float("inf"))
    _check_finite(loss.detach(), grad_norm, where, config)
    optimizer.step()
    return terms


def _validation_metrics(model: VAE, val_images: torch.Tensor) -> dict[str, float]:
    val = evaluate_reconstruction(model, val_images, seed=_VALIDATION_SEED)
    return {
        "val/loss": val.neg_elbo,
        "val/recon": val.recon_bce,
        "val/kl": val.kl,
        "val/mse": val.mse,
    }


def kl_weight(config: TrainConfig, epoch: int) -> float:
    """``beta``, ramped linearly over the first ``kl_warmup_epochs`` epochs (1-based)."""
    if config.kl_warmup_epochs == 0:
        return config.beta
    return config.beta * min(1.0, epoch / config.kl_warmup_epochs)


@dataclass
class TrainingState:
    """Everything needed at an epoch boundary to go on exactly as if never stopped."""

    epoch: int  #: epochs completed
    model: dict[str, torch.Tensor]  #: the model's state dict, on the CPU
    optimizer: dict[str, Any]  #: the optimizer's state dict (Adam's moments and steps)
    batch_order_rng: torch.Tensor  #: state of the generator that shuffles the batches
    torch_rng: torch.Tensor  #: the global CPU generator (posterior noise, binarisation)
    cuda_rng: torch.Tensor | None  #: the current CUDA device's generator, when training there
    history: list[dict[str, float]]  #: one metrics row per completed epoch

    @classmethod
    def capture(
        cls,
        model: VAE,
        optimizer: torch.optim.Optimizer,
        order: torch.Generator,
        device: torch.device,
        history: list[dict[str, float]],
    ) -> TrainingState:
        """The state after the epoch that ``history``'s last row describes."""
        return cls(
            epoch=int(history[-1]["epoch"]),
            model={k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()},
            optimizer=optimizer.state_dict(),
            batch_order_rng=order.get_state(),
            torch_rng=torch.get_rng_state(),
            cuda_rng=torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
            history=list(history),
        )

    def restore(
        self,
        model: VAE,
        optimizer: torch.optim.Optimizer,
        order: torch.Generator,
        device: torch.device,
        *,
        epochs: int,
    ) -> None:
        """Put the model, the optimizer and the generators back as they were, for a
        training of ``epochs`` epochs in all."""
        if self.epoch > epochs:
            raise ValueError(f"cannot resume after epoch {self.epoch} a training of {epochs}")
        model.load_state_dict(self.model)
        optimizer.load_state_dict(self.optimizer)
        order.set_state(self.batch_order_rng)
        torch.set_rng_state(self.torch_rng)
        if device.type == "cuda" and self.cuda_rng is not None:
            torch.cuda.set_rng_state(self.cuda_rng, device)

    def to_dict(self) -> dict[str, Any]:
        """Plain tensors and values: what ``torch.load(weights_only=True)`` reads back.
        Shallow: ``dataclasses.asdict`` would deep-copy every tensor at every epoch."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainingState:
        return cls(**values)


#: Called after each epoch with the state to resume from (to save it).
StateCallback = Callable[[TrainingState], None]


@dataclass
class TrainingResult:
    """The trained model (on the CPU) and one metrics row per epoch, resumed ones included."""

    model: VAE
    history: list[dict[str, float]] = field(default_factory=list)
    #: the arithmetic the forward passes ran in, and why
    precision: ResolvedPrecision = FP32


def fit(
    model: VAE,
    train_images: torch.Tensor,
    val_images: torch.Tensor | None,
    config: TrainConfig,
    *,
    on_epoch_end: EpochCallback | None = None,
    on_state: StateCallback | None = None,
    resume_from: TrainingState | None = None,
    show_progress: bool | None = None,
    binarize: bool = False,
    name: str = "the model",
) -> TrainingResult:
    """Train ``model`` with Adam on ``train_images (N, C, H, W)`` in [0, 1].

    With ``binarize``, every batch is a fresh Bernoulli draw of its grey levels (dynamic
    binarisation); ``val_images`` are then expected to be binary already (one fixed draw).

    Batches are drawn by indexing the in-memory tensor with a seeded permutation (a
    DataLoader's per-item collation costs more than the model on MNIST-sized data).
    ``show_progress`` defaults to a progress bar only when stderr is a terminal.

    After each epoch ``on_state`` receives the :class:`TrainingState` to resume from;
    given ``resume_from`` (such a state, of the same model and ``config``), training
    continues after its epoch and ends with the same weights, bit for bit, as a run that
    was never stopped (on the same device and kernels).

    Raises :class:`TrainingDivergedError` at the first non-finite loss or gradient norm,
    naming ``name``, the epoch and the batch, before the optimizer applies it.
    """
    config.check_fits(len(train_images))
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    # channels_last lets oneDNN pick faster convolution kernels (docs/performance.md); a
    # no-op for the MLP's 2-d weights.
    model.to(device, memory_format=torch.channels_last)
    train_images = train_images.to(device).contiguous(memory_format=torch.channels_last)
    if val_images is not None and len(val_images) == 0:
        val_images = None
    # the fused kernel updates every parameter in one pass instead of one kernel per
    # tensor (the same update rule as the default Adam)
    optimizer = torch.optim.Adam(
        model.parameters(), lr=config.learning_rate, fused=device.type in ("cpu", "cuda")
    )
    order = torch.Generator().manual_seed(config.seed)
    show_progress = sys.stderr.isatty() if show_progress is None else show_progress
    n = len(train_images)
    n_batches = (n + config.batch_size - 1) // config.batch_size
    result = TrainingResult(model=model, precision=resolve_precision(config.precision, device))
    first_epoch = 1
    if resume_from is not None:
        resume_from.restore(model, optimizer, order, device, epochs=config.epochs)
        result.history = list(resume_from.history)
        first_epoch = resume_from.epoch + 1
    logger.info(
        "training %d parameters on %d images (%d batches/epoch) on %s in %s (%s)%s",
        sum(p.numel() for p in model.parameters()),
        n,
        n_batches,
        device,
        result.precision.name,
        result.precision.reason,
        f", from epoch {first_epoch}" if first_epoch > 1 else "",
    )
    for epoch in range(first_epoch, config.epochs + 1):
        beta = kl_weight(config, epoch)
        model.train()
        started = time.perf_counter()
        sums = torch.zeros(4, device=device)
        weight = model.attention_loss_weight
        permutation = torch.randperm(n, generator=order).to(device)
        batches = range(0, n, config.batch_size)
        bar = tqdm(
            batches,
            total=n_batches,
            desc=f"epoch {epoch}/{config.epochs}",
            leave=False,
            disable=not show_progress,
        )
        for batch, start in enumerate(bar, start=1):
            x = train_images[permutation[start : start + config.batch_size]]
            if binarize:
                x = torch.bernoulli(x)
            where = f"{name} at epoch {epoch}, batch {batch} of {n_batches}"
            terms = _step(
                model,
                optimizer,
                x,
                beta=beta,
                where=where,
                config=config,
                precision=result.precision,
            )
            with torch.no_grad():
                attention = (
                    terms.attention.sum() if terms.attention is not None else x.new_zeros(())
                )
                sums += torch.stack(
                    [terms.neg_elbo.sum(), terms.recon.sum(), terms.kl.sum(), attention]
                )
        train_seconds = time.perf_counter() - started
        train_loss, train_recon, train_kl, train_attention = (sums / n).tolist()
        metrics = {
            "train/loss": train_loss,
            "train/recon": train_recon,
            "train/kl": train_kl,
            "train/beta": beta,
            "train/epoch_seconds": train_seconds,
        }
        if weight > 0:
            metrics["train/attention_loss"] = train_attention
        if val_images is not None:
            metrics |= _validation_metrics(model, val_images)
        logger.info(
            "epoch %d/%d  %s  (%.1f s)",
            epoch,
            config.epochs,
            "  ".join(f"{k}={v:.3f}" for k, v in metrics.items() if not k.endswith("seconds")),
            train_seconds,
        )
        result.history.append({"epoch": epoch, **metrics})
        if on_state is not None:
            on_state(TrainingState.capture(model, optimizer, order, device, result.history))
        if on_epoch_end is not None:
            on_epoch_end(epoch, metrics)
    model.to("cpu", memory_format=torch.contiguous_format)
    return result
