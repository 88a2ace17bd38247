"""r1core inside other training stacks (each module imports its stack lazily).

    r1core.integrations.trl   r1core's Engine as the generator inside TRL's GRPOTrainer
"""
