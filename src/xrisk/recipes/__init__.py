"""Re-exports only."""

from xrisk.recipes.registry import RECIPES, Recipe, UsageError, register
from xrisk.recipes.runner import RunContext

__all__ = ["RECIPES", "Recipe", "RunContext", "UsageError", "register"]
