"""The /detect body parsers: the simdjson fast path reads exactly what the exact orjson path reads, and leaves every
other body to it (which accepts it or refuses it with its message)."""

import orjson
import numpy as np
import pytest


@pytest.mark.parametrize("body", [
    {"samples": [[1, 2.5, -3]] * 60},
    {"samples": [[float(i), i / 3, -i] for i in range(100)]},
    {"samples": [[18446744073709551615, 0, 1e-30]]},
])
def test_fast_json_rows_read_what_the_exact_parser_reads(body):
    from services.worker.parsing import fast_json_rows, parse_detect

    raw = orjson.dumps(body)
    fast = fast_json_rows(raw, 3, 10000)
    assert fast is not None
    np.testing.assert_array_equal(fast, parse_detect(raw, ["a", "b", "c"], 10000)[0])


@pytest.mark.parametrize("raw", [
    b'{"samples": [[1,2],[3,4,5,6]]}', b'{"samples": [[1,[2],3],[4,5,6]]}', b'{"samples": [[[1,2,3]],[4,5,6]]}',
    b'{"samples": [[1,2,3],7]}', b'{"samples": [[1,2,3],[4,5,true]]}', b'{"samples": [[1,2,3],[4,5,1e39]]}',
    b'{"samples": [[1,2,3],[4,5,NaN]]}', b'{"samples": [[1,2,3]], "samples": [[4,5,6]]}', b'[[1,2,3]]', b'',
    b'{"samples": [[],[1,2,3,4,5,6]]}', b'{"samples": [[1,2,3],{"a":1,"b":2,"c":3}]}',
    b'{"samples": [[1,2,3]], "baseline": [[1,2,3],[1,2,3]]}',
    orjson.dumps({"samples": [[1.0, 2.0, 3.0]] * 50 + [[1.0, 2.0], [1.0, 2.0, 3.0, 4.0]]}),
    orjson.dumps({"samples": [[1.0, 2.0, 3.0]] * 50 + [[[1.0, 2.0, 3.0]]]}),
])
def test_fast_json_rows_leave_everything_else_to_the_exact_parser(raw):
    from services.worker.parsing import fast_json_rows

    assert fast_json_rows(raw, 3, 10000) is None
