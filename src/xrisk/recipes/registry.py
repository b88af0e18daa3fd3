"""The recipe registry behind ``xrisk run NAME`` and ``xrisk list``.

A recipe is a :class:`Recipe` registered with :func:`register` at the bottom of its module
(``xrisk/recipes/<name>.py``); the module name goes into :data:`BUILTIN_MODULES` so the CLI
imports it. Adding a recipe is therefore: one file plus one line here. Recipe modules should
import heavy dependencies inside ``run`` so that ``xrisk list`` stays fast.

Every value flag declares what it accepts (a :class:`~xrisk.recipes.flags.FlagType` or
``choices=``); rules involving several flags or the data go into ``validate``. The training loop
goes through :meth:`RunContext.steps <xrisk.recipes.runner.RunContext.steps>` (checkpoints inside
an epoch and on Ctrl-C; see :mod:`xrisk.recipes.runner`).

Example:
    >>> import argparse
    >>> from xrisk.recipes.flags import number
    >>> from xrisk.recipes.registry import Recipe, UsageError, register
    >>> def add_arguments(p: argparse.ArgumentParser) -> None:
    ...     p.add_argument("--epochs", type=number(int, ge=1), default=3, help="epochs")
    ...     p.add_argument("--steps", type=number(int, ge=1), default=4, help="steps per epoch")
    >>> def validate(args: argparse.Namespace) -> None:
    ...     if args.steps > 100 * args.epochs:
    ...         raise UsageError("argument --steps: at most 100 x --epochs")
    >>> def run(args, ctx):
    ...     for epoch in range(ctx.resume() + 1, args.epochs + 1):
    ...         acc = {"total": 0.0}
    ...         for step in ctx.steps(epoch, range(args.steps), state=acc):
    ...             acc["total"] += step
    ...         ctx.log_epoch(epoch, {"value": acc["total"]})
    ...         ctx.save(epoch=epoch)
    ...     return ctx.finish({"value": float(args.epochs)})
    >>> toy = Recipe("toy", "a toy recipe", add_arguments, run, validate)  # register(toy) adds it
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from xrisk.recipes.runner import RunContext

__all__ = ["Recipe", "UsageError", "register", "RECIPES", "BUILTIN_MODULES", "get_recipe", "load_builtin_recipes"]


class UsageError(Exception):
    """A problem the user fixes on the command line (the CLI prints it as one line, exit 2)."""


@dataclass(frozen=True)
class Recipe:
    """One ``xrisk run NAME`` recipe.

    Attributes:
        name: the sub-command name (``xrisk run NAME``).
        help: one line shown by ``xrisk list`` and ``xrisk run --help``.
        add_arguments: adds the recipe's options to its argparse parser (the CLI adds the
            common ``--out``, ``--resume``, ``--quiet``, ``--no-plot`` itself).
        run: ``run(args, ctx) -> final metrics``; trains using the
            :class:`~xrisk.recipes.runner.RunContext` ``ctx`` and returns ``ctx.finish(...)``.
        validate: optional ``validate(args)`` for rules a flag's own type cannot state (several
            flags together, values that need the data); runs after parsing and before the run
            folder is created, and raises :class:`UsageError` naming the flag. Single-flag rules
            belong in the flag's type (:mod:`xrisk.recipes.flags`).
    """

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace, RunContext], dict[str, float]]
    validate: Callable[[argparse.Namespace], None] | None = None


#: Registered recipes by name.
RECIPES: dict[str, Recipe] = {}

#: Modules that register the built-in recipes when imported.
BUILTIN_MODULES: tuple[str, ...] = (
    "xrisk.recipes.auc",
    "xrisk.recipes.contrastive",
    "xrisk.recipes.steer",
    "xrisk.recipes.dft",
    "xrisk.recipes.fair",
    "xrisk.recipes.continual",
    "xrisk.recipes.ehr",
    "xrisk.recipes.myna",
    "xrisk.recipes.textdetect",
)


def register(recipe: Recipe) -> Recipe:
    """Add ``recipe`` to :data:`RECIPES` and return it.

    Raises:
        ValueError: another recipe already has this name.
    """
    if not recipe.name or not recipe.name.replace("-", "").replace("_", "").isalnum():
        raise ValueError(f"recipe name must be a non-empty word, got {recipe.name!r}")
    old = RECIPES.get(recipe.name)
    if old is not None and old is not recipe:
        if (old.run.__module__, old.run.__qualname__) != (recipe.run.__module__, recipe.run.__qualname__):
            raise ValueError(f"a recipe named {recipe.name!r} is already registered")
    RECIPES[recipe.name] = recipe
    return recipe


def load_builtin_recipes() -> dict[str, Recipe]:
    """Import :data:`BUILTIN_MODULES` (a module that does not exist is skipped) and return :data:`RECIPES`."""
    for module in BUILTIN_MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name != module:  # a dependency of an existing module is missing: say so
                raise
    return RECIPES


def get_recipe(name: str) -> Recipe:
    """The registered recipe ``name``.

    Raises:
        KeyError: unknown name (the message lists the known ones).
    """
    recipes = load_builtin_recipes()
    if name not in recipes:
        raise KeyError(f"unknown recipe {name!r}; known: {', '.join(sorted(recipes)) or 'none'}")
    return recipes[name]
