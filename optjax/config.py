"""Typed, frozen configuration objects that reject unknown fields.

Every option object in optjax (solvers, backward modes) derives from :class:`Config`: a frozen
dataclass, hashable (so it can be a static argument of ``jax.jit``), validated on construction,
and buildable from a plain mapping with :meth:`Config.from_dict`, which names any unknown key.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, TypeVar

C = TypeVar("C", bound="Config")


class ConfigError(ValueError):
    """An option has an unknown name or an invalid value.

    Examples:
      >>> import optjax
      >>> optjax.backward.get("gmres", restrt=10)             # a misspelt option
      Traceback (most recent call last):
      ...
      optjax.config.ConfigError: unknown option(s) for GMRES: 'restrt'; valid options are: ...
    """


@dataclasses.dataclass(frozen=True)
class Config:
    """Base class: subclasses are ``@dataclasses.dataclass(frozen=True)`` and may define
    ``_validate(self)`` raising :class:`ConfigError`."""

    def __post_init__(self) -> None:
        validate = getattr(self, "_validate", None)
        if validate is not None:
            validate()

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_dict(cls: type[C], options: Mapping[str, Any]) -> C:
        """Build from a mapping; unknown keys raise :class:`ConfigError` naming them."""
        if not isinstance(options, Mapping):
            raise ConfigError(
                f"{cls.__name__}.from_dict expects a mapping of options, got {type(options).__name__}"
            )
        unknown = sorted(set(options) - set(cls.field_names()))
        if unknown:
            raise ConfigError(
                f"unknown option(s) for {cls.__name__}: {', '.join(map(repr, unknown))}; "
                f"valid options are: {', '.join(cls.field_names()) or '(none)'}"
            )
        return cls(**options)

    def replace(self: C, **changes: Any) -> C:
        """A copy with some fields changed (unknown names rejected)."""
        unknown = sorted(set(changes) - set(self.field_names()))
        if unknown:
            raise ConfigError(
                f"unknown option(s) for {type(self).__name__}: {', '.join(map(repr, unknown))}; "
                f"valid options are: {', '.join(self.field_names())}"
            )
        return dataclasses.replace(self, **changes)


def require(condition: bool, message: str) -> None:
    """Raise :class:`ConfigError` with ``message`` unless ``condition`` holds."""
    if not condition:
        raise ConfigError(message)


def positive_int(owner: str, name: str, value: Any, minimum: int = 1) -> None:
    require(
        isinstance(value, int) and not isinstance(value, bool) and value >= minimum,
        f"{owner}.{name} must be an integer >= {minimum}, got {value!r}",
    )


def in_interval(owner: str, name: str, value: Any, low: float, high: float, *,
                open_low: bool = True) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    ok = ok and (low < value if open_low else low <= value) and value <= high
    bracket = "(" if open_low else "["
    require(ok, f"{owner}.{name} must be a number in {bracket}{low}, {high}], got {value!r}")
