"""mkdocs hook: the settings reference, generated from the pydantic-settings models.

`configuration.md` holds the marker below; each build replaces it with tables
read from the models themselves (`api.settings.ApiSettings`,
`realtime.settings.RealtimeSettings`, `worker.settings.WorkerSettings` and the
classes they inherit from, `common.settings.CommonSettings` first): each
variable with its type, default, constraints and description (the field's
docstring), grouped by the services that read it. So the page cannot drift
from the code, and a field without a description fails the build.
"""

from __future__ import annotations

import enum
import re
import types
from typing import Any, Union, get_args, get_origin

import annotated_types
from mkdocs.exceptions import PluginError
from pydantic import ByteSize, SecretStr
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings

from api.settings import ApiSettings
from common.ratelimit import LimitSpec, LimitSpecs
from realtime.settings import RealtimeSettings
from worker.settings import WorkerSettings

MARKER = "<!-- settings-reference -->"
PAGE = "configuration.md"
# Each service's settings class. The scheduler is the worker package's second
# process and reads the worker's class.
SERVICES: dict[str, type[BaseSettings]] = {
    "api": ApiSettings,
    "realtime": RealtimeSettings,
    "worker": WorkerSettings,
}
_BOUNDS = [
    (annotated_types.Ge, "ge", "≥"),
    (annotated_types.Gt, "gt", ">"),
    (annotated_types.Le, "le", "≤"),
    (annotated_types.Lt, "lt", "<"),
]


def variable(name: str) -> str:
    """The environment variable of field `name` (no prefix; case does not matter)."""
    return name.upper()


def readers(name: str) -> tuple[str, ...]:
    """The services whose settings have field `name`."""
    return tuple(service for service, model in SERVICES.items() if name in model.model_fields)


def field_names() -> list[str]:
    """Every field of every service, each once, in declaration order."""
    names: dict[str, None] = {}
    for model in SERVICES.values():
        names.update(dict.fromkeys(model.model_fields))
    return list(names)


def description(name: str) -> str | None:
    """The field's description (docstring); an override without one keeps its base's."""
    for service in readers(name):
        for cls in SERVICES[service].__mro__:
            fields: dict[str, FieldInfo] = getattr(cls, "__pydantic_fields__", {})
            text = fields[name].description if name in fields else None
            if text:
                return " ".join(text.split())
    return None


def is_secret(field: FieldInfo) -> bool:
    return SecretStr in (field.annotation, *get_args(field.annotation))


def type_name(field: FieldInfo) -> str:
    """A reader's name for the field's type."""
    annotation = field.annotation
    base = annotation
    if get_origin(annotation) in (Union, types.UnionType):  # `X | None`: name the X
        args = [arg for arg in get_args(annotation) if arg is not type(None)]
        base = args[0] if len(args) == 1 else annotation
    if is_secret(field):
        return "secret"
    if any(marker in field.metadata for marker in get_args(LimitSpec)[1:]):
        return "rate limit (`N/period`)"
    if any(marker in field.metadata for marker in get_args(LimitSpecs)[1:]):
        return "rate limits (`N/period;M/period`)"
    if isinstance(base, type) and issubclass(base, enum.Enum):
        return ", ".join(f"`{member.value}`" for member in base)
    if isinstance(base, type) and issubclass(base, ByteSize):
        return "size (bytes, or `512MB`, `2GiB`)"
    names = {bool: "boolean", int: "integer", float: "number", str: "string"}
    if base in names:
        return names[base]
    if get_origin(base) is list:
        return "list (`a,b` or JSON)"
    if get_origin(base) is dict:
        return "JSON object"
    raise PluginError(f"settings reference: no name for the type {annotation!r}")


def constraints(field: FieldInfo) -> str:
    """The field's bounds, as `≥ 1, ≤ 300`."""
    found = []
    for item in field.metadata:
        for kind, attribute, sign in _BOUNDS:
            if isinstance(item, kind):
                found.append(f"{sign} {getattr(item, attribute)}")
        max_length = getattr(item, "max_length", None)
        if isinstance(item, annotated_types.MaxLen) and max_length is not None:
            found.append(f"at most {max_length} characters")
    return ", ".join(found)


def _value(value: Any) -> str:
    if value is None:
        return "unset"
    if isinstance(value, enum.Enum):
        value = value.value
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, list):
        return f"`{','.join(value)}`" if value else "empty"
    if value == "":
        return "empty"
    if isinstance(value, float):
        return f"`{value:g}`"
    return f"`{value}`"


def default(field: FieldInfo) -> str:
    """The default as a user would write it; never a secret's."""
    if is_secret(field):
        return "none (secret)"
    return _value(field.get_default(call_default_factory=True))


def _default_cell(name: str) -> str:
    by_service = {
        service: default(SERVICES[service].model_fields[name]) for service in readers(name)
    }
    if len(set(by_service.values())) == 1:
        return next(iter(by_service.values()))
    return "; ".join(f"{service}: {value}" for service, value in by_service.items())


def _row(name: str) -> str:
    field = SERVICES[readers(name)[0]].model_fields[name]
    text = description(name)
    if text is None:
        raise PluginError(
            f"settings reference: the setting {name} has no description; give the field a docstring"
        )
    cells = [
        f'<span id="{variable(name).lower()}"></span>`{variable(name)}`',
        type_name(field),
        _default_cell(name),
        constraints(field),
        text.replace("|", "\\|"),
    ]
    return "| " + " | ".join(cells) + " |"


def _and(words: list[str]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def _title(services: tuple[str, ...]) -> str:
    if len(services) == len(SERVICES):
        return "Every service"
    names = [{"api": "API", "worker": "worker and scheduler"}.get(name, name) for name in services]
    title = _and(names)
    return title[0].upper() + title[1:]


def _processes(services: tuple[str, ...]) -> str:
    names = [f"`{name}`" for name in services]
    if "worker" in services:
        names.append("`scheduler`")
    return _and(names)


def groups() -> dict[tuple[str, ...], list[str]]:
    """Field names by the services that read them: shared ones first."""
    found: dict[tuple[str, ...], list[str]] = {}
    for name in field_names():
        found.setdefault(readers(name), []).append(name)
    order = list(SERVICES)
    return dict(
        sorted(
            found.items(),
            key=lambda item: (-len(item[0]), [order.index(service) for service in item[0]]),
        )
    )


def render_reference() -> str:
    """One table per group of readers."""
    sections = []
    for services, names in groups().items():
        title = _title(services)
        anchor = re.sub(r"[^a-z]+", "-", title.lower()).strip("-")
        lines = [
            f"### {title} {{#{anchor}}}",
            "",
            f"Read by {_processes(services)}.",
            "",
            '<div class="settings-reference" markdown>',
            "",
            "| Variable | Type | Default | Constraints | Description |",
            "|---|---|---|---|---|",
            *(_row(name) for name in names),
            "",
            "</div>",
        ]
        sections.append("\n".join(lines))
    return "\n\n".join(sections)


def on_page_markdown(markdown: str, *, page: Any, config: Any, files: Any) -> str:
    """Replace the marker on the configuration page (and insist that it is there)."""
    if page.file.src_uri != PAGE:
        return markdown
    if markdown.count(MARKER) != 1:
        raise PluginError(f"settings reference: {PAGE} must hold {MARKER} exactly once")
    return markdown.replace(MARKER, render_reference())
