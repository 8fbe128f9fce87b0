"""Float tolerances the equivalence tests share, and why they hold on any CPU.

Two float32 computations of the same gradient in another order (micro-batches, data-parallel
all-reduce, DeepSpeed's flat buffers, another CPU's kernels) differ by rounding: relative ~1e-6 of
the gradient's scale. Adam at its usual eps (1e-8) turns that into a weight difference of up to the
learning rate itself wherever a gradient is ~0 (lr * g / (|g| + eps) flips with the sign of g), so
weights after an Adam step cannot be compared tightly. With eps far above every gradient entry (1.0
here; gradients are clipped to norm 1.2) the first step is lr * g / (|g| + eps) ~ lr * g: linear in
the gradient, so the updates differ only by the gradients' rounding, and by the float32 rounding of
the weights they land on. Compared relative to the largest update, 1e-4 leaves two orders of
magnitude over the first, two float32 spacings of each weight cover the second, while any real
mistake in weighting or accumulating micro-batches (a factor off for one of them) shows up at 1e-2
of the update or more.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

LINEAR_ADAM_EPS = 1.0
UPDATE_RTOL = 1e-4
FLOAT32_SPACING = float(torch.finfo(torch.float32).eps)  # relative spacing of float32 numbers


def snapshot(weights: Iterable[tuple[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {name: t.detach().clone().double() for name, t in weights}


def update_gap(
    before: dict[str, torch.Tensor], after_a: dict[str, torch.Tensor], after_b: dict[str, torch.Tensor]
) -> float:
    """How far update b is from update a (update = after - before), in units of what rounding allows:
    UPDATE_RTOL of the largest update, plus two float32 spacings of the weight itself (the weights
    are stored in float32, so an update is only known to within the rounding of the weight it
    lands on). At most 1 when the updates agree."""
    scale = max((after_a[n] - before[n]).abs().max().item() for n in before)
    assert scale > 0, "update_a is zero: nothing was compared"
    gap = 0.0
    for name in before:
        allowed = UPDATE_RTOL * scale + 2 * FLOAT32_SPACING * torch.maximum(after_a[name].abs(), after_b[name].abs())
        gap = max(gap, ((after_a[name] - after_b[name]).abs() / allowed).max().item())
    return gap


def hf_continuation_logprobs(model: torch.nn.Module, prompt: list[int], continuation: list[int]) -> list[float]:
    """log p(continuation[t] | prompt, continuation[:t]) under an HF causal LM, on the model's device."""
    ids = torch.tensor([[*prompt, *continuation]], device=next(model.parameters()).device)
    with torch.no_grad():
        logp = torch.log_softmax(model(ids).logits.float(), dim=-1)[0]
    return [logp[len(prompt) + t - 1, tok].item() for t, tok in enumerate(continuation)]
