"""Plain data and rules shared by every layer: statuses, settings, task registry, retry policy.

Nothing here touches storage; backends and the engine both build on it.
"""
