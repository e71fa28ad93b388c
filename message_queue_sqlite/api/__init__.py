"""The public API: the modern ``MessageQueue`` and the original package's functions."""
