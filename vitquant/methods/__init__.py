"""PTQ methods: recipes of site quantizers and shared stages (see ``recipe.Recipe``)."""
from vitquant.methods.recipe import BitWidths, Recipe

__all__ = ["BitWidths", "Recipe"]
