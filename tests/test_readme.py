"""The README's configuration table says what `--help` says, so it stays true."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest

from driftline.cli import build_parser
from driftline.cli.common import SETTING_FLAGS
from driftline.settings import Settings

README = Path(__file__).resolve().parents[1] / "README.md"
COMMANDS = ("run", "ingest", "actions serve")  # the commands whose flags the table lists


def table() -> list[tuple[list[str], list[str], set[str], str]]:
    """(flags, environment variables, commands, default) per row of the configuration table."""
    text = README.read_text()
    section = text[text.index("## Configuration\n") :]
    section = section[: section.index("\n## ", 1)]
    rows = []
    for line in section.splitlines():
        if not line.startswith("| `"):
            continue
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        flags = re.findall(r"`(--[a-z-]+)`", cells[0])
        envs = re.findall(r"`(DRIFTLINE_[A-Z_]+)`", cells[0])
        commands = {c.strip() for c in cells[1].split(",") if c.strip()}
        rows.append((flags, envs, commands, cells[2].strip("`")))
    assert len(rows) > 20, "the configuration table was not found"
    return rows


def help_of(command: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        build_parser().parse_args([*command.split(), "--help"])
    return out.getvalue()


def flags_in_help(command: str) -> set[str]:
    return set(re.findall(r"^\s+(--[a-z-]+)", help_of(command), re.MULTILINE)) & set(SETTING_FLAGS)


def test_every_setting_has_one_row_with_its_environment_variable() -> None:
    envs = [env for _, row_envs, _, _ in table() for env in row_envs]
    assert sorted(envs) == sorted(f"DRIFTLINE_{name.upper()}" for name in Settings.model_fields)


def test_each_flag_is_exactly_where_the_table_says() -> None:
    listed: dict[str, set[str]] = {command: set() for command in COMMANDS}
    for flags, envs, commands, _ in table():
        assert commands <= set(COMMANDS), commands
        for flag in flags:
            [env] = envs
            assert f"DRIFTLINE_{SETTING_FLAGS[flag][0].upper()}" == env  # flag and env agree
            for command in commands:
                listed[command].add(flag)
        assert bool(flags) == bool(commands), (flags, commands)
    for command in COMMANDS:
        assert flags_in_help(command) == listed[command], command


def test_numeric_defaults_are_the_settings_defaults() -> None:
    defaults = Settings.model_construct()  # the defaults, not this environment
    checked = 0
    for _, envs, _, default in table():
        field = envs[0].removeprefix("DRIFTLINE_").lower()
        if re.fullmatch(r"\d+(\.\d+)?", default):
            assert float(getattr(defaults, field)) == float(default), field
            checked += 1
        elif default in ("true", "false"):
            assert getattr(defaults, field) is (default == "true"), field
            checked += 1
    assert checked >= 12


def test_remediation_flags_reach_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    from driftline.cli.common import settings_of

    args = build_parser().parse_args(["run", "--actions-live", "--actions-interval", "5"])
    settings = settings_of(args)
    assert settings.actions_live is True and settings.actions_interval == 5
    monkeypatch.setenv("DRIFTLINE_ACTIONS_LIVE", "1")
    assert settings_of(build_parser().parse_args(["run"])).actions_live is True  # env kept
    monkeypatch.setenv("DRIFTLINE_ACTIONS_LIVE", "0")
    assert settings_of(build_parser().parse_args(["run"])).actions_live is False
