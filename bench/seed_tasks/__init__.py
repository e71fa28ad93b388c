"""The task package the seed-style API discovers (ours and the original 2.0.1 alike)."""
