"""r1core: the training and inference loops of DeepSeek-R1-style reasoning models."""
