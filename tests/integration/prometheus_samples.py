"""Parses an OpenMetrics text exposition on stdin with the reference Python parser
(prometheus_client, Debian's python3-prometheus-client) and prints every sample as one JSON
list of [name, {labels}, value]. A malformed exposition raises, so the test fails on it."""

import json
import sys

from prometheus_client.openmetrics.parser import text_string_to_metric_families

samples = []
for family in text_string_to_metric_families(sys.stdin.read()):
    for sample in family.samples:
        samples.append([sample.name, sample.labels, sample.value])
print(json.dumps(samples))
