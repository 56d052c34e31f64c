"""Docs are tested: every config key and every CLI command is documented."""

from __future__ import annotations

import typing
from pathlib import Path

import pytest
from pydantic import BaseModel

from edgeagent import config
from edgeagent.cli import build_parser
from edgeagent.fleet.settings import FleetConfig, FleetHttpConfig, FleetMqttConfig
from edgeagent.rules.config import ActionConfig, RuleConfig, SubjectsConfig

ROOT = Path(__file__).resolve().parents[1]
CONFIG_DOC = (ROOT / "docs" / "configuration.md").read_text()
README = (ROOT / "README.md").read_text()


def _fields(model: type[BaseModel], prefix: str = "") -> list[str]:
    out = []
    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel) and prefix == "" and name == "asset":
            out.extend(_fields(ann, "asset."))
        else:
            out.append(prefix + name)
    return out


def _models(tp: object) -> list[type[BaseModel]]:
    """The models behind a config type, unwrapping Annotated[...] and unions."""
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return [tp]
    return [m for arg in typing.get_args(tp) for m in _models(arg)]


SECTIONS = [
    m
    for tp in (
        config.GatewayConfig,
        config.StoreConfig,
        config.WebConfig,
        config.DeviceConfig,
        config.BusConfig,
        config.UplinkConfig,
        FleetConfig,
        FleetMqttConfig,
        FleetHttpConfig,
        RuleConfig,
        ActionConfig,
        SubjectsConfig,
    )
    for m in _models(tp)
]


@pytest.mark.parametrize("model", SECTIONS, ids=lambda m: m.__name__)
def test_every_config_key_is_documented(model: type[BaseModel]) -> None:
    missing = [f for f in _fields(model) if f"`{f}`" not in CONFIG_DOC and f"`{f.split('.')[-1]}`" not in CONFIG_DOC]
    assert not missing, f"{model.__name__}: undocumented keys {missing}"


def test_every_cli_command_is_in_the_readme() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    missing = [name for name in sub.choices if f"`edgeagent {name}" not in README]
    assert not missing, f"commands missing from README: {missing}"
