"""Recipes: training, mining and evaluation steps chained, each skipped when already done, and a report."""

from mmembed.recipe.config import EvaluateSpec, MineSpec, RecipeConfig, Step, load_recipe
from mmembed.recipe.run import ModelEvaluation, RecipeResult, evaluate_models, run_recipe

__all__ = ["EvaluateSpec", "MineSpec", "ModelEvaluation", "RecipeConfig", "RecipeResult", "Step", "evaluate_models",
           "load_recipe", "run_recipe"]
