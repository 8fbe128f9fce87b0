"""Configuration of the tiny VITA-Audio-style model: a Qwen2 with multi-token-prediction heads."""

from transformers import Qwen2Config


class MtpQwen2Config(Qwen2Config):
    model_type = "mtp_qwen2"

    def __init__(self, num_mtp_heads: int = 2, **kwargs) -> None:
        self.num_mtp_heads = num_mtp_heads
        super().__init__(**kwargs)
