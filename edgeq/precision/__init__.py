"""Precision explorer: how numbers are stored in FP32, FP16, BF16, FP8 and INT8/INT4 (NumPy only)."""
