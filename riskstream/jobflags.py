"""Job settings on a command line: one flag per ``JobConfig`` field, with ``RISKSTREAM_<FIELD>`` as fallback.

Shared by the ``riskstream`` command and the job's own entry point (``pipelines/decision_job.py main()``,
what ``flink run -py`` starts), so both take the same flags, read the same variables and refuse the same
invalid values. Precedence everywhere: flag, else environment variable, else the ``JobConfig`` default.
"""

from __future__ import annotations

import argparse
import os

from pydantic import ValidationError

from .config import JobConfig

ENV_PREFIX = "RISKSTREAM_"


def env_name(name: str) -> str:
    return f"{ENV_PREFIX}{name.upper()}"


def env_or(name: str, default):
    """``RISKSTREAM_<NAME>`` if it is set, else ``default``."""
    return os.environ.get(env_name(name), default)


def setting_default(name: str):
    """What a job setting is when no flag gives it: its ``RISKSTREAM_*`` variable, else ``JobConfig``'s
    default. Commands that take one setting (a topic, the bootstrap servers) use this as their default, so
    every command agrees with the job on them."""
    field = JobConfig.model_fields[name]
    return env_or(name, field.get_default(call_default_factory=True))


def add_setting(p, name: str, flag: str | None = None, help: str | None = None) -> None:
    """One job setting as an option of a command that is not the job (``--topic`` of ``consume``, say): its
    default is :func:`setting_default`, so the command and the job agree on it."""
    field = JobConfig.model_fields[name]
    default = setting_default(name)
    p.add_argument(flag or "--" + name.replace("_", "-"), dest=None if flag else name, default=default,
                   help=f"{help or field.description} [env {env_name(name)}; default {default}]")


def add_job_flags(p: argparse.ArgumentParser, skip: tuple[str, ...] = (), only: tuple[str, ...] | None = None,
                  title: str = "job configuration (flag, else environment variable, else default)") -> None:
    """A ``--field-name`` flag per ``JobConfig`` field (all of them, or ``only`` these, minus ``skip``)."""
    g = p.add_argument_group(title)
    for name, field in JobConfig.model_fields.items():
        if name in skip or (only is not None and name not in only):
            continue
        env = env_name(name)
        default = field.get_default(call_default_factory=True)
        shown = "***" if name == "sasl_password" else default
        helptext = f"{field.description} [env {env}; default {shown}]"
        flag = "--" + name.replace("_", "-")
        if field.annotation is bool or field.annotation == (bool | None):  # --x / --no-x (unset: None)
            g.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=None, help=helptext)
        elif getattr(field.annotation, "__origin__", None) is tuple:  # repeatable: --flink-conf K=V --flink-conf ...
            g.add_argument(flag, dest=name, action="append", default=None, metavar="KEY=VALUE", help=helptext)
        else:
            g.add_argument(flag, dest=name, default=None, metavar=name.upper(), help=helptext)


def job_config(args: argparse.Namespace, **overrides) -> JobConfig:
    """Flags beat environment variables beat defaults; invalid values exit with what to fix."""
    values = {}
    for name in JobConfig.model_fields:
        v = getattr(args, name, None)
        if v is None:
            v = os.environ.get(env_name(name))
        if v is not None:
            values[name] = v
    if "bootstrap_servers" not in values and os.environ.get(env_name("kafka_port")):
        # the local broker on another port, as `stack`, `demo`, `generate` and `review` take it
        values["bootstrap_servers"] = f"127.0.0.1:{os.environ[env_name('kafka_port')]}"
    values.update(overrides)
    try:
        return JobConfig(**values)
    except ValidationError as e:
        msgs = "\n".join(f"  --{'-'.join(str(x) for x in err['loc']).replace('_', '-') or 'config'}: {err['msg']}"
                         for err in e.errors())
        raise SystemExit(f"riskstream: invalid configuration:\n{msgs}")
