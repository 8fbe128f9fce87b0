"""The tiny VITA-Audio-style model: a Qwen2 causal LM plus multi-token-prediction heads (each a
small MLP from the last hidden state to the hidden size of a further position), modules that
vLLM's Qwen2 does not have. The LM's forward is Qwen2's: the heads serve only their own losses,
which the WavAlign objective does not use."""

from torch import nn
from transformers import Qwen2ForCausalLM

from .configuration_mtp_qwen2 import MtpQwen2Config


class MtpQwen2ForCausalLM(Qwen2ForCausalLM):
    config_class = MtpQwen2Config

    def __init__(self, config: MtpQwen2Config) -> None:
        super().__init__(config)
        hidden = config.hidden_size
        self.mtp_heads = nn.ModuleList(
            nn.Sequential(nn.Linear(hidden, hidden, bias=False), nn.SiLU(), nn.Linear(hidden, hidden, bias=False))
            for _ in range(config.num_mtp_heads)
        )
        self.post_init()
