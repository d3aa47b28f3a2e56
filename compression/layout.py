"""Where a recipe's checkpoints live: the teacher where the recipe says, every stage in
``<output>/<stage>/``, finished once its ``stage.json`` (summary and fingerprint) is written.

Shared by the pipeline (writes), the report and the serving check (read).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from compression.recipe import Recipe

STAGE_FILE = "stage.json"


def stage_dir(recipe: Recipe, name: str) -> Path:
    """The checkpoint folder of stage ``name`` (``teacher``: the recipe's teacher)."""
    return recipe.teacher if name == "teacher" else recipe.output / name
