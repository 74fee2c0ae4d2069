"""The settings layer: typed models read from the environment, one per concern.

Every setting is a field of a pydantic-settings model (`EnvModel`): its
environment variable is the field's `validation_alias`, and it has a default
and a `description`. Flows compose the models they need (operators/runtime/config.py
for the ORACLE flows, operators/vra/config.py for Fink VRA);
`python -m dataflows --help` and docs/configuration.md's table are generated
from the same fields (`variables`, `markdown_table` in operators/settings_help.py),
so documentation and parsing cannot drift apart.

Reading rules, the same for every model:

- `Model.read(env)` reads the mapping given (default `os.environ`); a model
  built in code (`FritzConfig(token=...)`) sees only its defaults and arguments.
- Values are stripped; a blank value counts as unset (except for fields marked
  `BLANK_IS_VALUE`, e.g. `FRITZ_GROUP_IDS=""` meaning "no groups").
- A field whose alias ends in `*` collects every variable with that prefix
  (`KAFKA_OPT_*`) as a dict keyed by the rest of the name.
- A bad value raises `ConfigError` with one line naming the variable and the fix
  (`dataflows.preflight.read_or_exit` turns it into exit status 2).

Secrets are `SecretStr` fields: never in `repr()`, and `redact()` (the one
redaction function) scrubs them, in every encoding a URI might carry them,
from any text before it is logged or written.
"""

from __future__ import annotations

import os
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional
from urllib.parse import quote, quote_plus, unquote_plus

from pydantic import BaseModel, SecretStr, ValidationError
from pydantic_settings import BaseSettings, EnvSettingsSource, SettingsConfigDict

BLANK_IS_VALUE = {"blank_is_value": True}  # json_schema_extra of a field whose blank value means something


class ConfigError(ValueError):
    """A setting is missing or malformed; the message names the variable and the fix."""


# The mapping `read` was given, for the duration of one model's construction.
_ENVIRON: ContextVar[Optional[Mapping[str, str]]] = ContextVar("alertflow_environ", default=None)


def _keeps_blank(settings_cls) -> set[str]:
    return {f.validation_alias for f in settings_cls.model_fields.values()
            if isinstance(f.json_schema_extra, dict) and f.json_schema_extra.get("blank_is_value")}


class _Environment(EnvSettingsSource):
    """pydantic-settings' environment source over the mapping given to `read`."""

    def _load_env_vars(self) -> Mapping[str, Optional[str]]:
        env = _ENVIRON.get()
        if env is None:  # built in code: defaults and arguments only
            return {}
        keep = _keeps_blank(self.settings_cls)
        out = {}
        for key, value in env.items():
            if isinstance(value, str) and (value.strip() or key in keep):
                out[key] = value.strip()
        return out

    def __call__(self) -> dict[str, Any]:
        data = super().__call__()
        for f in self.settings_cls.model_fields.values():
            alias = f.validation_alias
            if isinstance(alias, str) and alias.endswith("*"):
                prefix = alias[:-1]
                found = {k[len(prefix):]: v for k, v in self.env_vars.items() if k.startswith(prefix) and v}
                if found:
                    data[alias] = found
        return data


class EnvModel(BaseSettings):
    """Base of every settings model (see the module doc)."""

    model_config = SettingsConfigDict(case_sensitive=True, frozen=True, extra="ignore",
                                      validate_by_name=True, validate_by_alias=True, hide_input_in_errors=True)

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, env_settings, dotenv_settings,
                                   file_secret_settings):
        return (init_settings, _Environment(settings_cls))

    @classmethod
    def read(cls, env: Optional[Mapping[str, str]] = None):
        """The model read from `env` (default: the process environment)."""
        token = _ENVIRON.set(os.environ if env is None else env)
        try:
            return cls()
        except ValidationError as exc:
            raise ConfigError(one_line(exc, cls)) from None
        finally:
            _ENVIRON.reset(token)

    @property
    def secrets(self) -> list[str]:
        """The values of this model's secret fields (and of models inside it)."""
        return secret_values(self)

    def redact(self, text: str) -> str:
        return redact(text, self.secrets)


# ---------------------------------------------------------------- errors

_TYPE_FIXES = {
    "int_parsing": ("is not an integer", "a whole number"),
    "int_from_float": ("is not an integer", "a whole number"),
    "float_parsing": ("is not a number", "a number"),
    "bool_parsing": ("is not true or false", "true or false"),
}
_BOUNDS = {
    "greater_than_equal": ("at least", "≥", "ge"),
    "greater_than": ("more than", ">", "gt"),
    "less_than_equal": ("at most", "≤", "le"),
    "less_than": ("less than", "<", "lt"),
}


def is_secret(field) -> bool:
    """A field holding a secret: `SecretStr`, optional or in a dict."""
    return "SecretStr" in repr(field.annotation)


def one_line(exc: ValidationError, cls) -> str:
    """The first problem of `exc` as `NAME='value' is not ... -> set NAME to ..., or unset it`.

    Our own validators raise ValueError with a finished line; secret values are shown as ***."""
    err = exc.errors(include_url=False)[0]
    if err["type"] == "value_error" and "error" in err.get("ctx", {}):
        return str(err["ctx"]["error"]).replace("\n", " ")
    name = str(err["loc"][0]) if err["loc"] else cls.__name__
    secret = any(is_secret(f) for f in cls.model_fields.values() if name in (f.validation_alias, f.alias))
    shown = "***" if secret else repr(err.get("input"))
    if err["type"] in _TYPE_FIXES:
        what, fix = _TYPE_FIXES[err["type"]]
        return f"{name}={shown} {what} -> set {name} to {fix}, or unset it"
    ctx = err.get("ctx", {})
    if err["type"] == "literal_error":  # a `Literal[...]` field: name the choices
        return f"{name}={shown} is not one of {ctx['expected']} -> set {name} to one of them, or unset it"
    if err["type"] in _BOUNDS:  # an `Annotated[int, Field(ge=1)]`-like field: name the bound
        what, sign, key = _BOUNDS[err["type"]]
        bound = f"{ctx[key]:g}" if isinstance(ctx[key], (int, float)) else ctx[key]
        return f"{name}={shown} must be {what} {bound} -> set {name} to a number {sign} {bound}, or unset it"
    return f"{name}={shown}: {err['msg']} -> fix or unset {name}"


# ---------------------------------------------------------------- secrets


def secret_values(*models: Any) -> list[str]:
    """Every `SecretStr` value in `models` (recursively: fields, dicts, nested models, `extra_secrets`)."""
    out: list[str] = []

    def walk(value: Any) -> None:
        if isinstance(value, SecretStr):
            if value.get_secret_value():
                out.append(value.get_secret_value())
        elif isinstance(value, BaseModel):
            for name in type(value).model_fields:
                walk(getattr(value, name))
            out.extend(getattr(value, "extra_secrets", ()))
        elif isinstance(value, Mapping):
            for v in value.values():
                walk(v)
        elif isinstance(value, (list, tuple)):
            for v in value:
                walk(v)

    for m in models:
        walk(m)
    return out


def redact(text: Any, secrets: Iterable[Optional[str]]) -> str:
    """`text` with every secret replaced by `***`: as given, URL-decoded and URL-encoded
    (a secret inside a URI is often quoted), longest first so no part survives."""
    out = str(text)
    forms: set[str] = set()
    for secret in secrets:
        if secret:
            for form in (secret, unquote_plus(secret)):
                forms.update({form, quote_plus(form), quote(form, safe="")})
    for form in sorted((f for f in forms if f), key=len, reverse=True):
        out = out.replace(form, "***")
    return out


def plain(value: Optional[SecretStr]) -> str:
    """The secret's value, "" when unset."""
    return value.get_secret_value() if value is not None else ""


# ---------------------------------------------------------------- documentation, from the models

REPO_ROOT = Path(__file__).resolve().parents[2]


class Variable(BaseModel):
    """One environment variable as `--help` and docs/configuration.md show it."""

    name: str
    default: Optional[str]  # as text; None when unset by default
    description: str
    secret: bool = False


def shown_default(value: Any) -> Optional[str]:
    """A default as text: paths relative to the repository, booleans in lower case, lists comma-joined."""
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    if value is None or value == "" or value == {} or value == ():
        return None
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (tuple, list)):
        return ",".join(str(v) for v in value)
    if isinstance(value, Path):
        try:
            return str(value.relative_to(REPO_ROOT))
        except ValueError:
            return str(value)
    return str(value)


def variables(models: Iterable[type[BaseModel]]) -> list[Variable]:
    """Every variable the models read, in field order; a name read by two models is listed once (the first)."""
    out: dict[str, Variable] = {}
    for model in models:
        for f in model.model_fields.values():
            name = f.validation_alias
            if not isinstance(name, str) or "{" in name or name in out:
                continue  # set in code only, or an option this survey's input builder does not take
            default = f.default_factory() if f.default_factory is not None else f.default
            out[name] = Variable(name=name, default=shown_default(default), description=f.description or "",
                                 secret=is_secret(f))
    return list(out.values())


def help_lines(models: Iterable[type[BaseModel]]) -> list[str]:
    """`NAME  [default]  description` lines, aligned."""
    found = variables(models)
    if not found:
        return []
    width = max(len(v.name) for v in found)
    shown = [f"[{v.default}]" if v.default is not None else "[unset]" for v in found]
    dwidth = min(30, max(len(d) for d in shown))
    return [f"  {v.name:<{width}}  {d:<{dwidth}}  {v.description}{' (secret)' if v.secret else ''}".rstrip()
            for v, d in zip(found, shown)]


def markdown_table(flows: Mapping[str, Iterable[type[BaseModel]]]) -> str:
    """docs/configuration.md's table: every variable of every flow, its default
    (per flow when they differ), the flows reading it, and what it means."""
    rows: dict[str, dict[str, Variable]] = {}
    for flow, models in flows.items():
        for v in variables(models):
            rows.setdefault(v.name, {})[flow] = v
    lines = ["| variable | default | flows | meaning |", "|---|---|---|---|"]
    for name, by_flow in rows.items():
        defaults = {flow: v.default for flow, v in by_flow.items()}
        if len(set(defaults.values())) == 1:
            d = next(iter(defaults.values()))
            default = f"`{d}`" if d is not None else "unset"
        else:
            default = "; ".join(f"{flow}: " + (f"`{d}`" if d is not None else "unset")
                                for flow, d in sorted(defaults.items()))
        first = next(iter(by_flow.values()))
        meaning = first.description + (" (secret)" if first.secret else "")
        lines.append(f"| `{name}` | {default} | {', '.join(by_flow)} | {meaning.replace('|', '/')} |")
    return "\n".join(lines) + "\n"
