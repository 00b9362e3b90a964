"""Categorical columns whose states come spelt several ways (``0``, ``false  ``, ``Off`` in one export): ``levels``
maps each state to its spellings, optionally ignoring case and spaces; an unknown spelling is refused with its
file:line, and a config whose spellings are ambiguous is refused before any file is read."""

from __future__ import annotations

import csv
import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from support import REPO

from services.config import ConfigError, load_settings
from services.data.source import DataError
from services.data.sources import load_node

OWN_DATA = REPO / "examples" / "own-data"
SPELLINGS = {"on": ["1", "true  ", " ON", "On "], "off": ["0", "false  ", "Off", " off"]}


def respell(source: Path, target: Path, column: str, spellings: dict[str, list[str]]) -> None:
    """``source`` with each cell of ``column`` replaced by one of its state's spellings, in turn."""
    text = source.read_text(encoding="utf-8-sig")
    rows = list(csv.reader(io.StringIO(text)))
    index = rows[0].index(column)
    for n, row in enumerate(rows[1:]):
        if row:  # a blank line stays one
            state = row[index].strip()
            row[index] = spellings[state][n % len(spellings[state])]
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(rows)
    target.write_text(out.getvalue())


def config_with(tmp_path: Path, categorical: dict) -> Path:
    """The own-data example's config reading ``tmp_path``'s files, with ``categorical`` as its compressor column."""
    raw = yaml.safe_load((OWN_DATA / "config.yaml").read_text())
    raw["data"]["source"].update(dir=str(tmp_path), categorical={"compressor": categorical})
    for w in raw["workers"]:
        w["state_dir"] = str(tmp_path / "state" / w["id"])
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_every_spelling_of_a_state_reads_as_that_state(tmp_path):
    respell(OWN_DATA / "data" / "room-a.csv", tmp_path / "room-a.csv", "compressor", SPELLINGS)
    assert {" ON", "false  ", "0"} <= set((tmp_path / "room-a.csv").read_text().replace("\n", ",").split(","))
    settings = load_settings(config_with(tmp_path, {"levels": {"off": ["0", "false"], "on": ["1", "true"]},
                                                    "ignore_case": True}), environ={})
    original = load_settings(OWN_DATA / "config.yaml", environ={})
    (mine,) = load_node(settings, settings.worker("room-a")).runs
    (theirs,) = load_node(original, original.worker("room-a")).runs
    np.testing.assert_array_equal(mine.values, theirs.values)  # the same codes: off 0, on 1
    assert (theirs.values[:, 3] == 1).sum() == 502


def test_case_is_compared_only_when_asked(tmp_path):
    respell(OWN_DATA / "data" / "room-a.csv", tmp_path / "room-a.csv", "compressor", SPELLINGS)
    settings = load_settings(config_with(tmp_path, {"levels": {"off": ["0", "false"], "on": ["1", "true"]}}),
                             environ={})
    with pytest.raises(DataError) as refused:
        load_node(settings, settings.worker("room-a"))
    lines = str(refused.value).splitlines()
    assert lines[0] == ("room-a.csv:4: column 'compressor' holds ' ON', not a spelling of its levels "
                        "{'off': ['off', '0', 'false'], 'on': ['on', '1', 'true']}")


def test_spaces_inside_a_spelling_are_ignored_when_asked(tmp_path):
    respell(OWN_DATA / "data" / "room-a.csv", tmp_path / "room-a.csv", "compressor",
            {"on": ["stand by"], "off": ["o f f"]})
    settings = load_settings(config_with(tmp_path, {"levels": {"off": [], "on": ["standby"]},
                                                    "ignore_spaces": True}), environ={})
    (run,) = load_node(settings, settings.worker("room-a")).runs
    assert (run.values[:, 3] == 1).sum() == 502


def test_an_unknown_spelling_is_refused_with_its_place_by_data_check(tmp_path):
    respell(OWN_DATA / "data" / "room-a.csv", tmp_path / "room-a.csv", "compressor", SPELLINGS)
    lines = (tmp_path / "room-a.csv").read_text().splitlines()
    lines[211] = lines[211].rsplit(",", 2)[0] + ",maybe," + lines[211].rsplit(",", 1)[1]
    (tmp_path / "room-a.csv").write_text("\n".join(lines) + "\n")
    config = config_with(tmp_path, {"levels": {"off": ["0", "false"], "on": ["1", "true"]}, "ignore_case": True})
    done = subprocess.run([sys.executable, "-m", "services.cli", "--config", str(config), "data", "check",
                           "--worker", "room-a"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stdout + done.stderr
    assert ("room-a.csv:212: column 'compressor' holds 'maybe', not a spelling of its levels {'off': ['off', '0', "
            "'false'], 'on': ['on', '1', 'true']} (ignoring case)") in done.stdout, done.stdout


@pytest.mark.parametrize("categorical,message", [
    ({"levels": {"off": ["0"], "on": ["0"]}}, "the spelling '0' names two states, 'off' and 'on'"),
    ({"levels": {"off": ["OFF"], "on": ["off"]}, "ignore_case": True},
     "the spelling 'off' names two states, 'off' and 'on' \\(compared ignoring case/spaces\\)"),
    ({"levels": ["off", "on", "off"]}, "levels repeat a value"),
    ("{levels: [off, on]}", "YAML read a state or spelling as the boolean False: quote it"),
    ("{levels: {\"on\": [yes]}}", "YAML read a state or spelling as the boolean True"),
])
def test_ambiguous_or_unquoted_spellings_are_refused_by_the_config(tmp_path, categorical, message):
    path = config_with(tmp_path, {"levels": ["off", "on"]})
    raw = path.read_text()
    if isinstance(categorical, str):  # written as a user would type it, unquoted
        raw = raw.replace("compressor:\n        levels:\n        - 'off'\n        - 'on'",
                          f"compressor: {categorical}")
        assert f"compressor: {categorical}" in raw
    else:
        raw = yaml.safe_dump({**yaml.safe_load(raw), "data": {**yaml.safe_load(raw)["data"], "source": {
            **yaml.safe_load(raw)["data"]["source"], "categorical": {"compressor": categorical}}}})
    path.write_text(raw)
    with pytest.raises(ConfigError, match=f"data.source.categorical.compressor.*{message}"):
        load_settings(path, environ={})
