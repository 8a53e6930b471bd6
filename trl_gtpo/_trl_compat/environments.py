"""TRL environments' tools as TRL lists them, and methods hidden from that list (`get_turn_rewards`)."""

import inspect
from collections.abc import Sequence


class _NotATool:
    """A method that TRL's environment tool discovery does not list (it lists `inspect.isfunction` class members)."""

    def __init__(self, function):
        self.function = function
        self.__doc__ = function.__doc__

    def __get__(self, instance, owner=None):
        return self if instance is None else self.function.__get__(instance, owner)


def environment_tools(environment) -> dict:
    """An environment's tools by name, as TRL 1.16 lists them (`GRPOTrainer._generate_and_score_completions`): the
    public functions of its class, inherited ones included, except `reset` and `get_reward`; bound to the instance."""
    return {
        name: getattr(environment, name)
        for name, _ in inspect.getmembers(type(environment), predicate=inspect.isfunction)
        if name not in ("reset", "get_reward") and not name.startswith("_")
    }


def hide_environment_methods(environment_factory, names: Sequence[str]):
    """Wrap `environment_factory` (a callable or TRL's {name: callable}) so that the environments' methods `names`
    (e.g. `get_turn_rewards`) are not exposed to the model as tools.

    TRL 1.16 (`GRPOTrainer.__init__` and `_generate_and_score_completions`) makes every public function of an
    environment's class a tool except `reset` and `get_reward`, listing them with
    `inspect.getmembers(type(environment), predicate=inspect.isfunction)`, inherited methods included. The first
    instance a wrapped factory makes sets, on its own class, a descriptor that is not a function over each of those
    methods (found the way TRL finds them, so one defined on a base class is hidden too, the base class untouched):
    TRL skips them and instances still call them.
    """
    if environment_factory is None:
        return None
    if isinstance(environment_factory, dict):
        return {key: hide_environment_methods(factory, names) for key, factory in environment_factory.items()}

    def factory():
        environment = environment_factory()
        members = dict(inspect.getmembers(type(environment), predicate=inspect.isfunction))
        for name in names:
            if name in members:
                setattr(type(environment), name, _NotATool(members[name]))
        return environment

    return factory
