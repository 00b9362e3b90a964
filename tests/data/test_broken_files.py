"""A battery of broken files through `fedad data check` as a user runs it (a real subprocess): each is refused with
exit code 1 and a message naming file:line and the offending value; a worker refuses to train on the same problem
with the same message; a messy but valid export (byte-order mark, quoted header, date + time columns, on/off
states with stray spaces) passes."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
import yaml
from support import REPO


def write_setup(tmp_path, files: dict[str, bytes], features=("a", "b"), workers=None, **source) -> str:
    """A data folder holding ``files`` and a config whose workers read them; returns the config's path."""
    data = tmp_path / "data"
    data.mkdir()
    for name, body in files.items():
        (data / name).write_bytes(body)
    workers = workers or {"w1": sorted(files)}
    config = {
        "data": {"source": {"kind": "files", "dir": "data", **source},
                 "training": {"policy": "first_rows", "rows": 2},
                 "features": list(features), "window": 1, "window_stats": []},
        "model": {"hidden": [1]},
        "workers": [{"id": w, "partition": part, "port": 9001 + i, "state_dir": f"state/{w}", "token": f"token-{w}"}
                    for i, (w, part) in enumerate(workers.items())],
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def data_check(config: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "services.cli", "--config", config, "data", "check"], cwd=REPO,
                          capture_output=True, text=True, timeout=120, check=False)


BROKEN = [
    ("truncated line", {"x.csv": b"a,b,c\n1,2,3\n4,5\n6,7,8\n"}, {},
     ["x.csv:3: 2 field(s), the header has 3 (delimiter ','): '4,5'"]),
    ("stray quote", {"x.csv": b'a,b\n1,2\n"3,4\n5,6\n'}, {},
     ["x.csv:3: a quote opened here is never closed: '\"3,4'"]),
    ("mixed delimiters", {"x.csv": b"a;b;c\n1;2;3\n4,5,6\n"}, {},
     ["x.csv:3: 1 field(s), the header has 3 (delimiter ';'): '4,5,6'"]),
    ("empty file", {"x.csv": b""}, {}, ["x.csv: empty file (no header line)"]),
    ("blank lines only", {"x.csv": b"\n\n  \n"}, {}, ["x.csv: empty file (no header line)"]),
    ("header only", {"x.csv": b"a,b\n\n"}, {}, ["x.csv: header only, no data rows"]),
    ("duplicate column names", {"x.csv": b"a,b,a\n1,2,3\n"}, {},
     ["x.csv:1: column name 'a' appears 2 times (columns 1, 3)"]),
    ("non-UTF-8 bytes", {"x.csv": b"a,b\n1,2\n3,\xe94\n"}, {},
     ["x.csv:3: not UTF-8 text (byte 0xe9); save the file as UTF-8"]),
    ("text in a numeric column", {"x.csv": b"a,b\n1,2\n3,abc\n5,6\n"}, {},
     ["x.csv:3: column 'b' holds 'abc', not a number"]),
    ("NaN where refused", {"x.csv": b"a,b\n1,2\n3,NaN\n5,\n"}, {},
     ["x.csv:3: column 'b' is 'NaN' (data.source.missing is refuse; drop or ffill accept it)",
      "x.csv:4: column 'b' is empty (data.source.missing is refuse; drop or ffill accept it)"]),
    ("inf where refused", {"x.csv": b"a,b\n1,2\n-inf,4\n"}, {},
     ["x.csv:3: column 'a' is '-inf'"]),
    ("a missing column", {"x.csv": b"a,c\n1,2\n"}, {}, ["x.csv: no column(s) ['b']; the file has ['a', 'c']"]),
    ("an unknown state", {"x.csv": b"a,b\n1,on\n2,ON\n"}, {"categorical": {"b": {"levels": ["off", "on"]}}},
     ["x.csv:3: column 'b' holds 'ON', not one of its levels ['off', 'on']"]),
    ("a bad timestamp", {"x.csv": b"t,a,b\n2024-05-01 00:00:00,1,2\n2024-05-01 25:00:00,3,4\n"},
     {"timestamp": "t"}, ["x.csv:3: timestamp '2024-05-01 25:00:00' is not a date and time"]),
]


@pytest.mark.parametrize("files,source,messages", [case[1:] for case in BROKEN], ids=[case[0] for case in BROKEN])
def test_a_broken_file_is_refused_with_its_place_and_value(tmp_path, files, source, messages):
    done = data_check(write_setup(tmp_path, files, **source))
    assert done.returncode == 1, done.stdout + done.stderr
    for message in messages:
        assert message in done.stdout, done.stdout
    assert "data check FAILED for w1" in done.stdout
    assert "Traceback" not in done.stderr, done.stderr


def test_every_problem_of_every_node_is_listed(tmp_path):
    files = {"bad.csv": b"a,b\n1,2\n3\nx,4\n5,nan\n", "good.csv": b"a,b\n1,2\n3,4\n5,6\n",
             "worse.csv": b"a\n1\n"}
    done = data_check(write_setup(tmp_path, files, workers={"w1": ["bad.csv"], "w2": ["good.csv"],
                                                            "w3": ["worse.csv", "nothing.csv"]}))
    assert done.returncode == 1, done.stdout
    for message in ["bad.csv:3: 1 field(s), the header has 2", "bad.csv:4: column 'a' holds 'x', not a number",
                    "bad.csv:5: column 'b' is 'nan'", "partition entry 'nothing.csv': no such folder or file"]:
        assert message in done.stdout, done.stdout
    assert "data check FAILED for w1, w3" in done.stdout
    assert "node w2" in done.stdout and "usable" in done.stdout.split("node w2")[1].split("node w3")[0]


def test_many_bad_cells_are_listed_by_example_and_counted(tmp_path):
    body = b"a,b\n" + b"".join(b"%d,x%d\n" % (i, i) for i in range(40))
    done = data_check(write_setup(tmp_path, {"x.csv": body}))
    assert done.returncode == 1
    assert "x.csv:2: column 'b' holds 'x0', not a number" in done.stdout
    assert "x.csv:6: column 'b' holds 'x4', not a number" in done.stdout
    assert "x.csv:7:" not in done.stdout
    assert "x.csv: ... and 35 more like the above (text, column 'b')" in done.stdout


MESSY_EXPORT = ('\ufeff"Date","Time","Temp (°C)","Pump","Label"\r\n'
                "01.05.2024,00:00:00,4.1, off ,ok\r\n"
                "01.05.2024,00:00:30,4.0,on,ok\r\n"
                "01.05.2024,00:01:30,3.9,on ,ok\r\n"  # written before the row it follows: rows are ordered by time
                "01.05.2024,00:01:00,3.8,off,ok\r\n"
                "01.05.2024,00:02:00,9.5, on,fault\r\n"
                "\r\n\r\n").encode("utf-8")


def test_a_messy_but_valid_export_works(tmp_path):
    config = write_setup(tmp_path, {"room.csv": MESSY_EXPORT}, features=("Temp (°C)", "Pump"),
                         timestamp=["Date", "Time"], timestamp_format="%d.%m.%Y %H:%M:%S",
                         categorical={"Pump": {"levels": ["off", "on"], "encoding": "codes"}},
                         label={"column": "Label", "normal": ["ok"]})
    done = data_check(config)
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "runs    1, rows 5" in out
    assert "time    2024-05-01 00:00:00 → 2024-05-01 00:02:00, a row every 30 s (median)" in out
    assert "out-of-order rows: 1" in out
    assert "categorical (codes)" in out and "off 2, on 3" in out
    assert "label   Label: 4 normal, 1 anomalous (20.0 %)" in out
    assert "train   the first 2 rows labelled normal of each run (anomalous ones among them held out): 2 rows " \
           "train, 3 held out" in out
    assert "model   input width 2" in out
    assert "data check passed: 1 node(s) usable" in out


def test_a_worker_refuses_to_train_with_the_checks_message(tmp_path):
    """The worker service stops its federation loop on the same problem, with the same words, and says so on
    /v1/status instead of crashing."""
    import httpx
    from support import free_port

    config = write_setup(tmp_path, {"x.csv": b"a,b\n1,2\n3,abc\n"})
    port = free_port()
    env = {"PATH": "/usr/bin:/bin", "FEDAD__WORKERS__0__PORT": str(port),
           "FEDAD__AGGREGATOR__URL": f"http://127.0.0.1:{free_port()}"}
    proc = subprocess.Popen([sys.executable, "-m", "services.worker", "--id", "w1", "--config", config], cwd=REPO,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline, status = time.monotonic() + 90, None
        while time.monotonic() < deadline:
            try:
                status = httpx.get(f"http://127.0.0.1:{port}/v1/status", timeout=2).json()
                if status.get("phase") == "failed":
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None, proc.stdout.read()
            time.sleep(0.5)
        assert status and status["phase"] == "failed", status
        assert status["last_error"] == "x.csv:3: column 'b' holds 'abc', not a number"
    finally:
        proc.terminate()
        out = proc.communicate(timeout=30)[0]
    assert "stopped: x.csv:3: column 'b' holds 'abc', not a number" in out
    assert "Traceback" not in out
