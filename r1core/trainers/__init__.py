"""Trainers: GRPO (R1-Zero RL), SFT and distillation on the fused r1kernels ops, each a step on one shared loop
(`Trainer`: logging, checkpoints, resume, time budget, progress), configs validated by one
mechanism (`TrainerConfig`), checkpoints, metrics, several processes."""

from r1core.trainers.checkpoint import CorruptCheckpoint
from r1core.trainers.config import TrainerConfig
from r1core.trainers.distill import DistillTrainer
from r1core.trainers.distill_config import DistillConfig
from r1core.trainers.grpo import GRPOTrainer, RolloutBatch
from r1core.trainers.grpo_config import GRPOConfig
from r1core.trainers.loop import NumericalFault, Trainer
from r1core.trainers.sft import SFTConfig, SFTTrainer

__all__ = ["CorruptCheckpoint", "DistillConfig", "DistillTrainer", "GRPOConfig", "GRPOTrainer", "NumericalFault", "RolloutBatch",
           "SFTConfig", "SFTTrainer", "Trainer", "TrainerConfig"]
