"""JSON lists parsed a slice at a time equal one ``json.load``, whatever the text holds."""

from __future__ import annotations

import json
import random

import pytest

from pedcrowd.errors import PedcrowdError
from pedcrowd.fileio import json_list_chunks


def _entry(rng: random.Random) -> dict:
    """A detection-like object with traps for the cutter: ``}, {`` inside strings and nested lists of objects."""
    e = {"image_id": rng.randint(1, 9), "bbox": [rng.random() * 100 for _ in range(4)], "score": rng.random()}
    kind = rng.randrange(4)
    if kind == 1:
        e["file_name"] = 'a}, {"b": "c}  ,\n{' + str(rng.random())
    elif kind == 2:
        e["parts"] = [{"x": 1}, {"y": [{"z": 2}, {}]}]
    elif kind == 3:
        e["note"] = '\\"}, {'  # a backslash and a quote before the gap
    return e


@pytest.mark.parametrize("indent", [None, 1])
@pytest.mark.parametrize("chunk", [1, 40, 300, 1 << 22])
def test_slices_equal_one_load(tmp_path, indent, chunk):
    rng = random.Random(chunk)
    data = [_entry(rng) for _ in range(400)]
    path = tmp_path / "d.json"
    path.write_text(json.dumps(data, indent=indent))
    chunks = list(json_list_chunks(path, "detections", chunk_bytes=chunk))
    assert [x for c in chunks for x in c] == data
    if chunk == 300:
        assert len(chunks) > 10  # it did cut (and survived the traps)


def test_empty_errors_and_non_lists(tmp_path):
    path = tmp_path / "d.json"
    path.write_text(" [ ] ")
    assert list(json_list_chunks(path, "detections", chunk_bytes=1)) == []
    path.write_text('{"a": 1}')
    with pytest.raises(PedcrowdError, match="expected a JSON list of detections"):
        list(json_list_chunks(path, "detections"))
    path.write_text("[" + ", ".join(['{"a": 1}'] * 50) + ", {]")
    with pytest.raises(PedcrowdError, match=r"d.json: invalid JSON .* line 1 column"):
        list(json_list_chunks(path, "detections", chunk_bytes=10))
    path.write_text('[{"a": 1}] [{"b": 2}]')  # extra data after the list
    with pytest.raises(PedcrowdError, match="invalid JSON"):
        list(json_list_chunks(path, "detections", chunk_bytes=1))
