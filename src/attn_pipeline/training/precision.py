"""Which arithmetic a training step uses: fp32, or bfloat16 autocast where the device does
bfloat16 natively.

Weights, optimizer state and checkpoints stay fp32 whatever is chosen; only the forward
pass's matrix work runs in bfloat16 under ``torch.autocast``. Evaluation never uses it.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch

from attn_pipeline.spec.config import Precision

logger = logging.getLogger(__name__)


def native_bf16(device: torch.device) -> tuple[bool, str]:
    """Whether ``device`` does bfloat16 arithmetic natively, and what says so."""
    if device.type == "cuda":
        supported = torch.cuda.is_bf16_supported(including_emulation=False)
        name = torch.cuda.get_device_name(device)
        return supported, f"{name}: bfloat16 {'native' if supported else 'not native'}"
    if device.type == "cpu":
        capabilities = torch.cpu.get_capabilities()
        units = [unit for unit in ("amx_bf16", "avx512_bf16") if capabilities.get(unit)]
        cpu = capabilities.get("cpu_name", "this CPU")
        if units:
            return True, f"{cpu} has {' and '.join(units)}"
        return False, f"{cpu} has neither AMX nor AVX-512 BF16: bfloat16 would be emulated"
    return False, f"{device.type}: bfloat16 autocast is not used on this device"


@dataclass(frozen=True)
class ResolvedPrecision:
    """What a training runs with: ``dtype`` for autocast (None: plain fp32) and why."""

    name: Literal["fp32", "bf16"]
    reason: str

    def autocast(self, device: torch.device) -> contextlib.AbstractContextManager:
        """The context a forward pass runs in (a no-op for fp32)."""
        if self.name == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=torch.bfloat16)


#: Plain fp32: what evaluation always uses.
FP32 = ResolvedPrecision("fp32", "fp32")


def resolve_precision(
    wanted: Precision,
    device: torch.device,
    native: Callable[[torch.device], tuple[bool, str]] = native_bf16,
) -> ResolvedPrecision:
    """``auto``: bf16 where ``device`` does it natively, else fp32; ``fp32`` and ``bf16`` as
    asked (``bf16`` without native support warns that it will be slow)."""
    is_native, why = native(device)
    if wanted == "fp32":
        return ResolvedPrecision("fp32", "asked for (train.precision: fp32)")
    if wanted == "bf16":
        if not is_native:
            warnings.warn(
                f"precision bf16 on {why}: training will be slower than fp32, not faster",
                stacklevel=2,
            )
        return ResolvedPrecision("bf16", f"asked for; {why}")
    return ResolvedPrecision("bf16" if is_native else "fp32", f"auto: {why}")
