"""Trainers: GRPO (R1-Zero RL) and SFT on the fused r1kernels ops, checkpoints, metrics, several
processes."""

from r1core.trainers.grpo import GRPOTrainer, RolloutBatch
from r1core.trainers.grpo_config import GRPOConfig
from r1core.trainers.sft import SFTConfig, SFTTrainer

__all__ = ["GRPOConfig", "GRPOTrainer", "RolloutBatch", "SFTConfig", "SFTTrainer"]
