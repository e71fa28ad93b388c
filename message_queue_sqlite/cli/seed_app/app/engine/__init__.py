from .test import test, test1

__all__ = ["test", "test1"]
