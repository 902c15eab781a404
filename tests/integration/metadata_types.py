"""Checks that meta-data reads, from our drive, as PyYAML reads the operator's input.

Usage: metadata_types.py FORMAT INPUT OURS [CLOUD_INIT_JSON]
FORMAT is config-2 (OURS is meta_data.json, read with json as cloud-init does) or nocloud
(OURS is meta-data, read with yaml.safe_load as cloud-init does). INPUT is the operator's
meta-data YAML, read with yaml.safe_load: that is the truth. CLOUD_INIT_JSON, if given, is what
cloud_init_datasource.py printed for the same drive (cloud-init's own datasource code).
For every key of INPUT, prints each mismatch and exits 1 if there is one.
"""
import json
import sys

import yaml


def normalized(value):
    """What JSON can carry: dates as str(), keys as json.dumps writes them; NaN as text."""
    return json.dumps(json.loads(json.dumps(value, default=str)), sort_keys=True)


def same(a, b):
    """Equal Python objects of equal types (True is not 1), NaN equal to NaN, any dict order."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and a != a:
        return b != b
    return a == b


fmt, input_path, ours_path = sys.argv[1:4]
with open(input_path, "rb") as f:
    truth = yaml.safe_load(f)
with open(ours_path, "rb") as f:
    ours = json.load(f) if fmt == "config-2" else yaml.safe_load(f)

failures = []
for key, expected in truth.items():
    got = ours.get(key if fmt == "nocloud" else json.loads(json.dumps({key: 0})).popitem()[0])
    if fmt == "nocloud":
        # The very Python objects, dates and big integers included.
        equal = same(got, expected)
    else:
        equal = normalized(got) == normalized(expected)
    if not equal:
        failures.append("%s: PyYAML reads %r from the input, %s reads %r from our %s" % (
            key, expected, "yaml.safe_load" if fmt == "nocloud" else "json", got, ours_path))

if len(sys.argv) > 4:
    with open(sys.argv[4], "rb") as f:
        seen = json.load(f)["metadata"]
    for key, expected in truth.items():
        got = seen.get(json.loads(json.dumps({key: 0})).popitem()[0])
        if normalized(got) != normalized(expected):
            failures.append("%s: cloud-init's datasource reads %r, PyYAML reads %r from the input"
                            % (key, got, expected))

for failure in failures:
    print(failure)
sys.exit(1 if failures else 0)
