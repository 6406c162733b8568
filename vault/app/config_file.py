"""The configuration file: ``oubli serve --config oubli.toml`` (or ``OUBLI_CONFIG``).

A TOML file holding any setting of :class:`~vault.app.config.ServerConfig` under its
field name (``listen``, ``max_workers``, ``drain_seconds``…), and the Vault settings
(:class:`~vault.app.config.VaultSettings`) in a ``[vault]`` table. The keys and their
types are read from the dataclasses themselves (``dataclasses.fields`` and the type
annotations), so a setting added there can be written in the file with no change here.

Precedence, per setting: flags > environment > file > defaults. The file is checked
as a whole before anything starts, one line per bad key, naming the file and the key:
an unknown key (with the closest known name), a value of the wrong TOML type, a value
``ServerConfig.validate`` refuses. Values are never echoed, so a secret in the wrong
place does not end up in a log.

Secrets: a setting declared ``repr=False`` (the Vault token) or a database URL with a
password may be written in the file only when the file is private to its owner (no
group or other permission bits, e.g. 0600); otherwise the start is refused with the
``chmod`` that fixes it. Prefer the environment (``VAULT_TOKEN``) or a credentials file.

Relative paths in the file are relative to the file's directory (so a file works
whatever the working directory); database URLs are taken as written.
"""

from __future__ import annotations

import dataclasses
import difflib
import stat
import tomllib
import types
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, fields, is_dataclass
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints
from urllib.parse import urlsplit, urlunsplit

from vault.app import config as _config
from vault.app.config import ConfigError, ServerConfig, VaultSettings

#: The table holding the Vault settings.
VAULT_TABLE = "vault"
#: The Vault settings' flag (override) names where they are not ``vault_<field>``.
_VAULT_FLAG_NAMES = {"address": "vault_addr", "ca_cert": "vault_cacert"}
#: The Vault settings' environment variables where they are not ``OUBLI_VAULT_<FIELD>``
#: or ``VAULT_<FIELD>`` (both are looked for).
_VAULT_ENVIRONMENT = {"address": ("VAULT_ADDR",), "ca_cert": ("VAULT_CACERT",)}
#: A permission bit beyond the owner's: the file is not private.
_NOT_PRIVATE = stat.S_IRWXG | stat.S_IRWXO
REDACTED = "<redacted>"


@dataclass(frozen=True)
class ConfigFile:
    """A configuration file read and checked: its settings, typed as ServerConfig and
    VaultSettings declare them (paths made absolute against the file's directory)."""

    path: Path
    settings: Mapping[str, object]
    vault: Mapping[str, object]

    @property
    def keys(self) -> list[str]:
        """Every key the file sets, the Vault ones as ``vault.KEY``."""
        return [*self.settings, *(f"{VAULT_TABLE}.{key}" for key in self.vault)]


def read_config_file(path: Path) -> ConfigFile:
    """Read and check ``path``: TOML, known keys, the right types, secrets only in a
    private file. Raises ConfigError listing every bad key (values never shown)."""
    try:
        text = path.read_bytes().decode("utf-8")
        document = tomllib.loads(text)
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the configuration file: {e.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    errors: list[str] = []
    base = path.resolve().parent
    settings = _typed(ServerConfig, document, "", base, errors)
    table = document.get(VAULT_TABLE)
    vault: dict[str, object] = {}
    if isinstance(table, dict):
        vault = _typed(VaultSettings, table, f"{VAULT_TABLE}.", base, errors)
    secrets = list(_secret_keys(settings, vault))
    if secrets:
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & _NOT_PRIVATE:
            errors += [
                f"{key}: a secret, in a file other users may read (mode {mode:04o}): "
                f"run chmod 600 {path}, or give it in the environment instead"
                for key in secrets
            ]
    if errors:
        raise ConfigError("\n".join(f"{path}: {error}" for error in errors))
    return ConfigFile(path, settings, vault)


def load_config(path: Path, env: Mapping[str, str], **overrides: object) -> ServerConfig:
    """Defaults, then the file at ``path``, then the environment, then explicit
    overrides (CLI flags, None = not given), validated. Raises ConfigError naming the
    file and each key at fault."""
    return apply_config_file(read_config_file(path), env, **overrides)


def apply_config_file(
    file: ConfigFile, env: Mapping[str, str], **overrides: object
) -> ServerConfig:
    """``file``'s settings under ``env`` and ``overrides``, validated (see load_config)."""
    keys = file.keys
    try:
        return _build(file, set(keys), env, overrides)
    except ConfigError as first:
        failure = first
    # Name the keys at fault: a key whose removal makes the error go (or change) is
    # one; set it aside and look again, so that every bad key is reported at once.
    blamed: list[str] = []
    remaining = set(keys)
    while True:
        culprit = _culprit(file, remaining, env, overrides, str(failure))
        if culprit is None:
            break
        blamed.append(f"{file.path}: {culprit}: {failure}")
        remaining.discard(culprit)
        try:
            _build(file, remaining, env, overrides)
        except ConfigError as e:
            failure = e
            continue
        break
    if not blamed:  # the environment or the flags are at fault, not the file
        raise failure
    raise ConfigError("\n".join(blamed))


def _culprit(
    file: ConfigFile,
    keys: set[str],
    env: Mapping[str, str],
    overrides: Mapping[str, object],
    message: str,
) -> str | None:
    changed: str | None = None
    for key in (k for k in file.keys if k in keys):
        try:
            _build(file, keys - {key}, env, overrides)
        except ConfigError as e:
            if changed is None and str(e) != message:
                changed = key
            continue
        return key  # without it the configuration is valid
    return changed


def _build(
    file: ConfigFile, keys: set[str], env: Mapping[str, str], overrides: Mapping[str, object]
) -> ServerConfig:
    flags = {k: v for k, v in overrides.items() if v is not None}
    values: dict[str, object] = {}
    for name, value in file.settings.items():
        if name in keys and name not in flags and not _in_environment(name, env):
            values[name] = value
    vault: dict[str, object] = {}
    for name, value in file.vault.items():
        flag = _vault_flag(name)
        from_environment = any(variable in env for variable in _vault_variables(name))
        if f"{VAULT_TABLE}.{name}" in keys and flag not in flags and not from_environment:
            vault[name] = value
            if flag in _config._VAULT_OVERRIDES and value:
                values[flag] = value  # so that from_env builds and checks the Vault part
    config = ServerConfig.from_env(env, **{**values, **flags})
    if vault and config.vault is not None:
        # Exactly the file's values (from_env takes 0 or "" as "not given").
        settings: dict[str, Any] = vault
        config = dataclasses.replace(config, vault=dataclasses.replace(config.vault, **settings))
        config = config.validate()
    return config


def _in_environment(name: str, env: Mapping[str, str]) -> bool:
    return any(
        attribute == name and variable in env
        for variable, (attribute, _) in _config._ENVIRONMENT.items()
    )


def _vault_flag(name: str) -> str:
    return _VAULT_FLAG_NAMES.get(name, f"{VAULT_TABLE}_{name}")


def _vault_variables(name: str) -> tuple[str, ...]:
    upper = name.upper()
    return (*_VAULT_ENVIRONMENT.get(name, ()), f"OUBLI_VAULT_{upper}", f"VAULT_{upper}")


def setting_sources(
    file: ConfigFile | None, env: Mapping[str, str], overrides: Mapping[str, object]
) -> dict[str, str]:
    """Where each setting's effective value comes from (``flag``, ``environment
    (NAME)``, ``file``); a setting not listed has its default."""
    sources: dict[str, str] = {}
    for variable, (attribute, _) in _config._ENVIRONMENT.items():
        if variable in env:
            sources[attribute] = f"environment ({variable})"
    for f in fields(VaultSettings):
        found = next((v for v in _vault_variables(f.name) if v in env), None)
        if found is not None:
            sources[f"{VAULT_TABLE}.{f.name}"] = f"environment ({found})"
    if file is not None:
        for key in file.keys:
            sources.setdefault(key, "file")
    for name, value in overrides.items():
        if value is None:
            continue
        vault_field = next(
            (f.name for f in fields(VaultSettings) if _vault_flag(f.name) == name), None
        )
        sources[f"{VAULT_TABLE}.{vault_field}" if vault_field else name] = "flag"
    return sources


def effective_toml(config: ServerConfig, sources: Mapping[str, str] | None = None) -> str:
    """``config`` as a configuration file, secrets redacted, each value's source in a
    comment: what ``oubli serve --check`` prints."""
    sources = sources or {}
    lines = ["# The effective configuration (secrets redacted)."]
    vault_lines: list[str] = []
    for f in fields(ServerConfig):
        value = getattr(config, f.name)
        if f.name == VAULT_TABLE:
            if value is not None:
                for v in fields(VaultSettings):
                    key = f"{VAULT_TABLE}.{v.name}"
                    shown = REDACTED if _is_secret(v) and getattr(value, v.name) else None
                    vault_lines.append(_line(v.name, getattr(value, v.name), shown, sources, key))
            continue
        shown = REDACTED if _is_secret(f) and value else None
        lines.append(_line(f.name, value, shown, sources, f.name))
    if vault_lines:
        lines += ["", f"[{VAULT_TABLE}]", *vault_lines]
    return "\n".join(lines) + "\n"


def _line(name: str, value: object, shown: str | None, sources: Mapping[str, str], key: str) -> str:
    source = sources.get(key, "default")
    if value is None:
        return f"# {name}: not set ({source})"
    if isinstance(value, Path):
        value = value.absolute()  # read back from a file, a relative path would move
    text = _toml_value(redact_url(value) if isinstance(value, str) else value)
    return f"{name} = {_toml_value(shown) if shown else text}  # {source}"


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, tuple | list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    text = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'


def redact_url(value: str) -> str:
    """``value`` with the password of a URL (``scheme://user:password@host``) replaced."""
    if "://" not in value or "@" not in value:
        return value
    try:
        parts = urlsplit(value)
        if parts.password is None:
            return value
        user = parts.username or ""
        host = parts.netloc.rsplit("@", 1)[1]
    except ValueError:
        return value
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


# --- reading and typing the keys -------------------------------------------------------


def _is_secret(f: dataclasses.Field[Any]) -> bool:
    return not f.repr


def _secret_keys(settings: Mapping[str, object], vault: Mapping[str, object]) -> Iterable[str]:
    for f in fields(ServerConfig):
        value = settings.get(f.name)
        if value is not None and (
            _is_secret(f) or (isinstance(value, str) and _has_password(value))
        ):
            yield f.name
    for f in fields(VaultSettings):
        value = vault.get(f.name)
        if value is not None and (
            _is_secret(f) or (isinstance(value, str) and _has_password(value))
        ):
            yield f"{VAULT_TABLE}.{f.name}"


def _has_password(value: str) -> bool:
    return redact_url(value) != value


def _typed(
    cls: type[Any], table: Mapping[str, object], prefix: str, base: Path, errors: list[str]
) -> dict[str, object]:
    """The keys of ``table`` as ``cls``'s fields, typed; what is wrong goes to ``errors``."""
    hints = get_type_hints(cls)
    known = {f.name: hints[f.name] for f in fields(cls)}
    typed: dict[str, object] = {}
    for key, value in table.items():
        if key not in known:
            errors.append(f"{prefix}{key}: unknown setting{_suggestion(key, known, prefix)}")
            continue
        hint = known[key]
        if _dataclass_of(hint) is not None:  # the [vault] table, read by the caller
            if not isinstance(value, dict):
                errors.append(f"{prefix}{key}: must be a table ([{key}]), not {_toml_type(value)}")
            continue
        try:
            typed[key] = _coerce(value, hint, base)
        except _WrongType as e:
            errors.append(f"{prefix}{key}: must be {e.expected}, not {_toml_type(value)}")
    return typed


def _suggestion(key: str, known: Mapping[str, object], prefix: str) -> str:
    """``; did you mean …?`` for the nearest known name (an environment variable's name
    or a Vault flag's name written as a key finds its setting too)."""
    candidates = [key, key.lower().removeprefix("oubli_")]
    if not prefix:  # vault_addr, OUBLI_VAULT_MOUNT: a setting of the [vault] table
        names = [f.name for f in fields(VaultSettings)]
        for candidate in candidates:
            rest = candidate.lower().removeprefix(f"{VAULT_TABLE}_")
            close = difflib.get_close_matches(rest, names, n=1, cutoff=0.5)
            if rest != candidate.lower() and close:
                return f" (did you mean {close[0]} in the [{VAULT_TABLE}] table?)"
    for candidate in candidates:
        close = difflib.get_close_matches(candidate, list(known), n=1, cutoff=0.6)
        if close:
            return f" (did you mean {prefix}{close[0]}?)"
    return ""


class _WrongType(Exception):
    def __init__(self, expected: str) -> None:
        super().__init__(expected)
        self.expected = expected


def _dataclass_of(hint: object) -> type[Any] | None:
    for candidate in (hint, *_optional_args(hint)):
        if isinstance(candidate, type) and is_dataclass(candidate):
            return candidate
    return None


def _optional_args(hint: object) -> tuple[object, ...]:
    if get_origin(hint) in (Union, types.UnionType):
        return tuple(a for a in get_args(hint) if a is not type(None))
    return ()


def _coerce(value: object, hint: object, base: Path) -> object:
    """``value`` (as TOML gave it) as ``hint`` says; raises _WrongType."""
    origin = get_origin(hint)
    if origin in (Union, types.UnionType):  # X | None: TOML has no null, omit the key
        options = _optional_args(hint)
        for option in options:
            try:
                return _coerce(value, option, base)
            except _WrongType:
                continue
        raise _WrongType(" or ".join(_describe(option) for option in options))
    if origin is Literal:
        if value in get_args(hint):
            return value
        raise _WrongType(_describe(hint))
    if origin in (tuple, list):
        item = (*get_args(hint), str)[0]
        if not isinstance(value, list):
            raise _WrongType(_describe(hint))
        items = [_coerce(v, item, base) for v in value]
        return tuple(items) if origin is tuple else items
    parse = _SCALARS.get(hint)
    if parse is None:
        raise _WrongType(f"a value of a type a file cannot give ({hint})")
    return parse(value, base)


def _describe(hint: object) -> str:
    if get_origin(hint) is Literal:
        return "one of " + ", ".join(_toml_value(a) for a in get_args(hint))
    if get_origin(hint) in (tuple, list):
        return "an array"
    return _DESCRIPTIONS.get(hint, str(hint))


def _as_str(value: object, _base: Path) -> str:
    if not isinstance(value, str):
        raise _WrongType("a string")
    return value


def _as_int(value: object, _base: Path) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _WrongType("an integer")
    return value


def _as_float(value: object, _base: Path) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _WrongType("a number")
    return float(value)


def _as_bool(value: object, _base: Path) -> bool:
    if not isinstance(value, bool):
        raise _WrongType("true or false")
    return value


def _as_path(value: object, base: Path) -> Path:
    if not isinstance(value, str) or not value:
        raise _WrongType("a path (a non-empty string)")
    return base / Path(value).expanduser()


_SCALARS: dict[object, Callable[[object, Path], object]] = {
    str: _as_str,
    int: _as_int,
    float: _as_float,
    bool: _as_bool,
    Path: _as_path,
}
_DESCRIPTIONS: dict[object, str] = {
    str: "a string",
    int: "an integer",
    float: "a number",
    bool: "true or false",
    Path: "a path (a non-empty string)",
}


def _toml_type(value: object) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    return "a date or time"
