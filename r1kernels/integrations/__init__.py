"""r1kernels inside other training stacks. Each module imports its stack lazily, on first use, so
importing r1kernels never imports them (and r1kernels still never imports r1core).

    r1kernels.integrations.trl   TRL's GRPOTrainer and GKDTrainer computing their losses with
                                 r1kernels.grpo_loss and r1kernels.distill_loss
"""
