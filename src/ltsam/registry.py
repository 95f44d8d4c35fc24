"""One small registry type for every extension point (losses, train rules, optimizer steps, methods,
data sets, models, LR and rho schedules).

An entry is a name, the object it stands for (a class or a factory), a one-line help and the
options it declares. The CLI's choices and help, the config's valid values and the config keys
of the options are all read from the registries, so a name is typed once, where it is registered::

    from ltsam.losses import LOSSES
    from ltsam.registry import Option

    @LOSSES.register("la", help="logit-adjusted CE", options=[Option("la_tau", float, 1.0, "its tau")])
    class LogitAdjusted(nn.Module): ...

A *family* (``add_family``) is one entry standing for every name under a prefix: ``timm:NAME`` is any
model timm can build. Looking up ``timm:resnet18`` gives an entry made for that member by the family's
maker, with the family's help, options and facts, so a family's choices live in the library that
defines them and are never listed here.

Entries registered from a user's own module (``ltsam train --plugin mypkg.mylosses``, or the
``ltsam.plugins`` entry-point group of an installed package) are used exactly like the built-in ones.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import KW_ONLY, dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from ltsam.errors import UserError

T = TypeVar("T")


class Settings(Protocol):
    """A run's settings as registered entries read them: every field and option by its config key
    (``ltsam.config.TrainConfig`` is one); a registration's ``resolve`` hook may also set them (DRW's
    switch epoch). Entries are typed against this, not ``TrainConfig`` itself, because the configuration
    is built from their registrations: the dependency points one way."""

    def __getattr__(self, name: str) -> Any: ...

    def __setattr__(self, name: str, value: Any) -> None: ...


@dataclass(frozen=True)
class Option:
    """A setting an entry declares: config key ``name``, flag ``--name-with-dashes`` (or ``flags``).

    ``minimum`` and ``maximum`` bound numbers, ``above`` and ``below`` strictly; floats must be finite.
    ``nargs`` takes a fixed-length list. The entry's object receives it as keyword ``param`` (or ``name``).
    """

    name: str
    type: type
    default: Any
    help: str = ""
    _: KW_ONLY
    flags: tuple[str, ...] = ()
    minimum: float | None = None
    below: float | None = None  # a strict upper bound
    above: float | None = None  # a strict lower bound (a scale or a margin that must be positive)
    maximum: float | None = None
    choices: tuple[Any, ...] | None = None
    nargs: int | None = None
    metavar: tuple[str, ...] | str | None = None
    param: str | None = None  # the keyword the entry's object takes, when it is not ``name``
    keep_case: bool = False  # a str option whose value is not lower-cased (a file path)

    @property
    def flag(self) -> str:
        return self.flags[0] if self.flags else "--" + self.name.replace("_", "-")

    @property
    def keyword(self) -> str:
        return self.param or self.name


@dataclass
class Entry(Generic[T]):
    """One registered name: the object, its help, its options and any facts its registry defines."""

    name: str
    obj: T
    help: str = ""
    options: tuple[Option, ...] = ()
    meta: dict[str, Any] = field(default_factory=dict)


class Registry(Generic[T]):
    """Name -> entry for one extension point. ``key`` is the config key whose value names an entry."""

    def __init__(self, kind: str, key: str | None = None):
        self.kind, self.key = kind, key
        self._entries: dict[str, Entry[T]] = {}
        self._aliases: dict[str, str] = {}
        self._families: dict[str, Entry[Callable[[str], T]]] = {}

    @property
    def flag(self) -> str:
        return "--" + (self.key or self.kind).replace("_", "-")

    def register(self, name: str, *, help: str = "", options: Sequence[Option] = (), aliases: Sequence[str] = (),
                 **meta: Any) -> Callable[[T], T]:
        """Decorator: register the decorated class or function under ``name`` and return it unchanged."""
        def add(obj: T) -> T:
            self.add(name, obj, help=help, options=options, aliases=aliases, **meta)
            return obj

        return add

    def add(self, name: str, obj: T, *, help: str = "", options: Sequence[Option] = (),
            aliases: Sequence[str] = (), **meta: Any) -> T:
        """Register ``obj`` under ``name`` (lower case), also reachable as ``aliases`` (e.g. the
        reference scripts' spellings). Registering a name twice replaces the entry only when it is the
        same object (re-imports); another object under a taken name is an error."""
        key = name.lower()
        for alias in aliases:
            self._aliases[alias.lower()] = key
        old = self._entries.get(key)
        if old is not None and old.obj is not obj and getattr(old.obj, "__qualname__", None) != getattr(
                obj, "__qualname__", object()):
            raise ValueError(f"{self.kind} {key!r} is registered already (by {old.obj!r})")
        self._entries[key] = Entry(key, obj, help, tuple(options), dict(meta))
        return obj

    def add_family(self, prefix: str, make: Callable[[str], T], *, help: str = "", options: Sequence[Option] = (),
                   **meta: Any) -> None:
        """Register every name ``prefix:MEMBER``: ``make(MEMBER)`` gives the member's object (and raises a
        UserError for a member the family does not have). The member keeps its case (a library's names); a
        made object with a ``member`` attribute names the entry by it (the library's canonical spelling)."""
        key = prefix.lower()
        if key in self._entries or ":" in key:
            raise ValueError(f"{self.kind} family {key!r} clashes with a registered name or holds ':'")
        self._families[key] = Entry(key, make, help, tuple(options), dict(meta))

    def family(self, name: str) -> Entry[Callable[[str], T]] | None:
        """The family entry ``name`` (``prefix:MEMBER``) belongs to, or None."""
        prefix, sep, member = str(name).partition(":")
        return self._families.get(prefix.lower()) if sep and member else None

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and (self._key(name) in self._entries or self.family(name) is not None)

    def _key(self, name: str) -> str:
        key = str(name).lower()
        return self._aliases.get(key, key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def names(self) -> tuple[str, ...]:
        """The registered names (a family's members are not listed: see :meth:`choices`)."""
        return tuple(self._entries)

    def choices(self) -> tuple[str, ...]:
        """The names and, for each family, its ``prefix:NAME`` pattern (for messages and help)."""
        return self.names() + tuple(f"{p}:NAME" for p in self._families)

    def entries(self) -> tuple[Entry[T], ...]:
        return tuple(self._entries.values())

    def entry(self, name: str) -> Entry[T]:
        """The entry of ``name``; an unknown name is a UserError that lists the choices."""
        key = self._key(name)
        if key in self._entries:
            return self._entries[key]
        family = self.family(name)
        if family is not None:
            prefix, _, member = str(name).partition(":")
            made = family.obj(member)
            member = getattr(made, "member", member)  # the library's own spelling, where the maker gives one
            return Entry(f"{family.name}:{member}", made, family.help, family.options, family.meta)
        raise UserError(f"unknown {self.flag} {name!r}; choose one of {', '.join(self.choices())}")

    def get(self, name: str) -> T:
        return self.entry(name).obj

    def help_text(self) -> str:
        """``name (help), ...`` for the CLI; entries sharing a help are listed together."""
        groups: dict[str, list[str]] = {}
        for e in self._entries.values():
            groups.setdefault(e.help, []).append(e.name)
        for f in self._families.values():
            groups.setdefault(f.help, []).append(f"{f.name}:NAME")
        return "; ".join(f"{', '.join(names)} ({h})" if h else ", ".join(names) for h, names in groups.items())

    def remove(self, name: str) -> None:
        """Unregister ``name`` (tests and interactive sessions that register throw-away entries)."""
        self._entries.pop(name.lower(), None)

    def options(self) -> tuple[Option, ...]:
        """Every option its entries declare, each name once (entries may share an option)."""
        seen: dict[str, Option] = {}
        declared = [e.options for e in self._entries.values()] + [f.options for f in self._families.values()]
        for options in declared:
            for option in options:
                seen.setdefault(option.name, option)
        return tuple(seen.values())


def option_kwargs(entry: Entry[Any], config: Settings | None = None) -> dict[str, Any]:
    """The keyword arguments an entry's object takes for its options: the config's values (an object
    with the options as attributes), or the declared defaults."""
    return {o.keyword: getattr(config, o.name, o.default) if config is not None else o.default
            for o in entry.options}
