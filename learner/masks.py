"""Per-token modality masks of responses (method.md §1.2–1.3).

For response ids (B, T) — the tokens after the prompt, right-padded:
- completion: 1 from the start up to and including the *first* eos; a row without eos is 1 up to
  its last non-pad token. Supervised sequences (SFT references, DPO sides) are given with their
  lengths instead: every token of theirs is in, the turn's closing after eos too (method §5.2:
  `<|im_end|>` + "\n" are both labels).
- speech: codec tokens, plus BOA/EOA when `include_audio_boundaries` (the method default).
- text: everything else in the completion, so eos, newlines and other special tokens are text.
  BOA/EOA are never text.
- boundary: BOA/EOA (a subset of speech by default).
All masks are multiplied by the completion mask. Pure module: torch only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from wavalign.layout import SpeechLayout


@dataclass(frozen=True)
class ModalityMasks:
    """Boolean masks, each (B, T)."""

    completion: torch.Tensor
    text: torch.Tensor
    speech: torch.Tensor
    boundary: torch.Tensor


def completion_mask(ids: torch.Tensor, eos_id: int, pad_id: int) -> torch.Tensor:
    """(B, T) bool: up to and including the first eos, else up to the last non-pad token."""
    if ids.shape[-1] == 0:
        return torch.zeros(ids.shape, dtype=torch.bool, device=ids.device)
    positions = torch.arange(ids.shape[-1], device=ids.device)
    is_eos = ids == eos_id
    first_eos = is_eos.int().argmax(dim=-1, keepdim=True)  # 0 when there is none; masked below
    through_eos = positions <= first_eos
    not_pad = ids != pad_id
    # Index of the last non-pad token: (T - 1) - (first non-pad from the right); -1 if all pad.
    last_real = ids.shape[-1] - 1 - not_pad.flip(-1).int().argmax(dim=-1, keepdim=True)
    last_real = torch.where(not_pad.any(dim=-1, keepdim=True), last_real, torch.full_like(last_real, -1))
    through_last_real = positions <= last_real
    return torch.where(is_eos.any(dim=-1, keepdim=True), through_eos, through_last_real)


def length_mask(lengths: torch.Tensor, width: int) -> torch.Tensor:
    """(B, width) bool: the first lengths[b] positions of each row."""
    return torch.arange(width, device=lengths.device) < lengths[:, None]


def modality_masks(ids: torch.Tensor, layout: SpeechLayout, lengths: torch.Tensor | None = None) -> ModalityMasks:
    """Split response ids (B, T) — or one response (T,) — into completion/text/speech/boundary masks.
    `lengths` (B,): supervised sequences, whose completion is all of their tokens (see above)."""
    batched = ids.dim() == 2
    ids = ids if batched else ids.unsqueeze(0)
    if lengths is None:
        completion = completion_mask(ids, layout.eos_id, layout.pad_id)
    else:
        completion = length_mask(lengths.reshape(-1).to(ids.device), ids.shape[-1])
    boundary = (ids == layout.boa_id) | (ids == layout.eoa_id)
    codes = (ids >= layout.speech_start) & (ids < layout.speech_end)
    speech = codes | boundary if layout.include_audio_boundaries else codes
    text = ~codes & ~boundary
    masks = ModalityMasks(
        completion=completion,
        text=text & completion,
        speech=speech & completion,
        boundary=boundary & completion,
    )
    if batched:
        return masks
    return ModalityMasks(*(m.squeeze(0) for m in (masks.completion, masks.text, masks.speech, masks.boundary)))


# Per-token modality codes, as carried in rollout records.
OUTSIDE, TEXT, SPEECH, BOUNDARY = 0, 1, 2, 3


def modality_codes(ids: torch.Tensor, layout: SpeechLayout) -> torch.Tensor:
    """(…, T) int8: TEXT / SPEECH (codec tokens) / BOUNDARY (BOA/EOA) inside the completion, else OUTSIDE."""
    masks = modality_masks(ids, layout)
    codes = torch.zeros(ids.shape, dtype=torch.int8)
    codes[masks.text] = TEXT
    codes[masks.speech & ~masks.boundary] = SPEECH
    codes[masks.boundary] = BOUNDARY
    return codes


def modality_counts(ids, layout: SpeechLayout) -> dict[str, int]:
    """Text and speech (codec) tokens in one response's completion.

    >>> from wavalign.layout import SpeechLayout
    >>> layout = SpeechLayout(speech_start=20, speech_end=30, boa_id=10, eoa_id=11, eos_id=12, pad_id=13,
    ...                       interleave_ratio=(1, 10, 4, 10))
    >>> modality_counts([5, 6, 10, 21, 22, 11, 12], layout)
    {'text': 3, 'speech': 2}
    """
    codes = modality_codes(torch.tensor([list(ids)], dtype=torch.long), layout)
    return {"text": int((codes == TEXT).sum()), "speech": int((codes == SPEECH).sum())}
