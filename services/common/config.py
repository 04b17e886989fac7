"""Settings from environment variables and command-line flags.

A service's settings are a dataclass whose fields are declared with `setting()`.
`load_settings()` builds an argparse parser from it: every field becomes a flag
(`--max-batch-size`) whose default comes from an environment variable
(`ANYANOMALY_CLIP_MAX_BATCH_SIZE`) when set, else from the field's default.
Flags win over the environment, which wins over defaults. `--help` lists all of them.
An environment value is checked exactly like the flag (type and allowed values), and a bad
value of either stops start-up with one line that names the allowed values.

Secrets (`secret()`) are never flags, since flags are visible in `ps`: they come from the
environment variable or from a file named by the `--<name>-file` flag (or its variable).

This module is the only one that reads (or sets) the process environment.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

from services.common.clients import KEEPALIVE_SECONDS, MIN_KEEPALIVE_SECONDS

T = TypeVar("T")


def setting(default: Any, help: str, *, choices: Sequence[str] | None = None, minimum: float | None = None) -> Any:
    """Declare a settings field with its help text (and optional choices or smallest value)."""
    return dataclasses.field(default=default, metadata={"help": help, "choices": choices, "minimum": minimum})


def secret(help: str) -> Any:
    """Declare a secret string: from the environment or a file, never from a flag."""
    return dataclasses.field(default="", repr=False, metadata={"help": help, "secret": True})


class OneLineParser(argparse.ArgumentParser):
    """argparse, but an error is one line (`prog: error: ...`) without the usage block."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def set_environment(name: str, value: str) -> None:
    """Set a variable for this process and its libraries (e.g. HF_HUB_OFFLINE)."""
    os.environ[name] = value


def environment(name: str, default: str = "") -> str:
    return os.environ.get(name, default)


@dataclasses.dataclass
class ServerSettings:
    """Settings every gRPC service shares."""

    host: str = setting("0.0.0.0", "address to bind")
    port: int = setting(0, "port to bind; 0 picks a free port (the bound port is logged)")
    port_file: str = setting("", "write the bound port to this file once listening (for launchers)")
    parent_pid: int = setting(0, "die with this process (set by launchers: the service is killed when its "
                              "launcher dies, even by SIGKILL); 0: no launcher")
    max_message_mb: int = setting(64, "largest request or response message in MiB")
    max_concurrent_rpcs: int = setting(64, "RPCs served at once; more are refused with RESOURCE_EXHAUSTED")
    grace_seconds: float = setting(30.0, "on SIGTERM, how long in-flight RPCs may take to finish")
    keepalive_seconds: float = setting(KEEPALIVE_SECONDS, "HTTP/2 keepalive ping interval of this service's client "
                                       "channels (every server accepts pings every 10 s or more)",
                                       minimum=MIN_KEEPALIVE_SECONDS)
    max_connection_age_seconds: float = setting(300.0, "a client connection older than this is asked (GOAWAY) to "
                                                "reconnect, so long-lived clients spread over new replicas; calls "
                                                "in progress finish; 0: never", minimum=0.0)
    metrics_port: int = setting(0, "serve Prometheus metrics on this port; 0 disables")
    tls_cert: str = setting("", "serve TLS with this PEM certificate (chain); re-read when it changes")
    tls_key: str = setting("", "the PEM private key of --tls-cert")
    tls_client_ca: str = setting("", "require callers to present a certificate signed by this PEM CA "
                                      "(mutual TLS)")
    health_port: int = setting(0, "also serve the gRPC health service, and only it, in plaintext on this port "
                               "(Kubernetes' gRPC probes cannot speak TLS); 0: none")
    log_level: str = setting("INFO", "log level", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    log_format: str = setting("json", "log line format", choices=("json", "text"))
    profile: str = setting("default", "behaviour for requests that do not name a profile: 'default' (production "
                           "choices) or 'parity' (the authors' code, quirks included)", choices=("default", "parity"))


@dataclasses.dataclass
class CallerSettings(ServerSettings):
    """Settings of a service that calls other services."""

    tls_ca: str = setting("", "call the other services over TLS, trusting this PEM CA")
    tls_client_cert: str = setting("", "present this PEM certificate to the services called (mutual TLS); "
                                        "re-read when it changes")
    tls_client_key: str = setting("", "the PEM private key of --tls-client-cert")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _env_name(prefix: str, name: str) -> str:
    return f"{prefix}_{name.upper()}"


def _base_type(annotation: Any) -> tuple[type, tuple[str, ...] | None]:
    """The scalar type of a field annotation and, for Literal[...], its choices."""
    origin = typing.get_origin(annotation)
    if origin is Literal:
        values = typing.get_args(annotation)
        return type(values[0]), tuple(str(v) for v in values)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _base_type(args[0])
    return annotation, None


def _convert(raw: str, kind: type, choices: Sequence[str] | None) -> Any:
    """An environment value checked as argparse checks the flag."""
    value = _parse_bool(raw) if kind is bool else kind(raw)
    if choices and str(value) not in choices:
        raise ValueError(f"use one of {', '.join(choices)}")
    return value


def _at_least(kind: type, minimum: float) -> Any:
    """An argparse type: `kind`, refusing values below `minimum`."""
    def convert(raw: str) -> Any:
        value = kind(raw)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{raw} is below the smallest allowed value, {minimum:g}")
        return value

    convert.__name__ = kind.__name__  # argparse names the type in its messages
    return convert


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"not a boolean: {text!r} (use true or false)")


def build_parser(
    cls: type[T], env_prefix: str, description: str, env: Mapping[str, str] | None = None, prog: str | None = None
) -> argparse.ArgumentParser:
    env = os.environ if env is None else env
    parser = OneLineParser(
        prog=prog,
        allow_abbrev=False,  # "--openai-api-key" must not pass for "--openai-api-key-file"
        description=description,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        epilog=f"Every flag can also be set by an environment variable {env_prefix}_<FLAG_NAME> "
        "(upper case, '-' as '_'); flags override the environment.",
    )
    hints = typing.get_type_hints(cls, include_extras=False)
    _refuse_unknown_variables(cls, env_prefix, env, parser)
    for field in dataclasses.fields(cls):  # type: ignore[arg-type]
        env_name = _env_name(env_prefix, field.name)
        if field.metadata.get("secret"):
            parser.add_argument(
                _flag(field.name) + "-file", dest=field.name + "_file", default=env.get(env_name + "_FILE", ""),
                help=f"a file holding {field.metadata['help']} [env {env_name}_FILE; or the value itself in "
                f"env {env_name}; never a flag, which `ps` would show]",
            )
            continue
        kind, literal_choices = _base_type(hints[field.name])
        if field.metadata.get("minimum") is not None:
            kind = _at_least(kind, field.metadata["minimum"])
        choices = field.metadata.get("choices") or literal_choices
        default = field.default
        if env_name in env:
            raw = env[env_name]
            try:
                default = _convert(raw, kind, choices)
            except (ValueError, argparse.ArgumentTypeError) as exc:
                parser.error(f"environment variable {env_name}={raw!r} is invalid: {exc}")
        help_text = f"{field.metadata.get('help', '')} [env {env_name}]"
        if kind is bool:
            parser.add_argument(
                _flag(field.name), dest=field.name, action=argparse.BooleanOptionalAction,
                default=default, help=help_text,
            )
        else:
            parser.add_argument(
                _flag(field.name), dest=field.name, type=kind, default=default,
                choices=list(choices) if choices else None, help=help_text,
            )
    return parser


def _refuse_unknown_variables(cls: type[T], env_prefix: str, env: Mapping[str, str],
                              parser: argparse.ArgumentParser) -> None:
    """A variable with this service's prefix that names no setting stops start-up: a misspelt or
    renamed one would otherwise be ignored, and a security setting silently left off."""
    known = set()
    for field in dataclasses.fields(cls):  # type: ignore[arg-type]
        name = _env_name(env_prefix, field.name)
        known |= {name, name + "_FILE"} if field.metadata.get("secret") else {name}
    unknown = sorted(name for name in env if name.startswith(env_prefix + "_") and name not in known)
    if unknown:
        parser.error(f"environment variable {unknown[0]} is not a setting of this service (misspelt, or renamed: "
                     "--help lists them all)")


def load_settings(
    cls: type[T],
    argv: Sequence[str] | None,
    env_prefix: str,
    description: str,
    env: Mapping[str, str] | None = None,
    prog: str | None = None,
) -> T:
    """Parse flags (and the environment) into an instance of the settings dataclass."""
    env = os.environ if env is None else env
    parser = build_parser(cls, env_prefix, description, env, prog)
    values = vars(parser.parse_args(argv))
    for field in dataclasses.fields(cls):  # type: ignore[arg-type]
        if field.metadata.get("secret"):
            values[field.name] = _read_secret(parser, values.pop(field.name + "_file"),
                                              env.get(_env_name(env_prefix, field.name), ""))
    return cls(**values)


def _read_secret(parser: argparse.ArgumentParser, path: str, from_env: str) -> str:
    if not path:
        return from_env.strip()
    try:
        return Path(path).read_text(encoding="utf-8").strip()
    except OSError as exc:
        parser.error(f"cannot read the secret file {path}: {exc.strerror}")
