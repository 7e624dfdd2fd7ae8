"""Passes over the checked graph, between the shape checker and the compiler (no torch).

``fuse``: which calls run as one batched computation (``plan_fusion`` -> ``FusionPlan``).
"""
from .fuse import FusionPlan, Group, plan_fusion

__all__ = ["FusionPlan", "Group", "plan_fusion"]
