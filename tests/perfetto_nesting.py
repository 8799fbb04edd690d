#!/usr/bin/env python3
"""Reads a Perfetto trace with the protos the `perfetto` PyPI package ships
(no trace processor, no network) and prints its tracks, slices and instants
as JSON, nested the way a trace reader nests them: per track, events in
timestamp order (ties in file order), a SLICE_END closing the innermost open
slice. portsnoop's tests compare this with the JSON of the same run.

Usage: perfetto_nesting.py TRACE_FILE > nesting.json
"""

import json
import sys

try:
    from perfetto.protos.perfetto.trace.perfetto_trace_pb2 import Trace, TrackEvent
except ImportError as e:  # pragma: no cover
    sys.exit(f"perfetto_nesting.py: the perfetto Python package is missing ({e}): run scripts/setup.sh")


def annotation_value(a):
    kind = a.WhichOneof("value")
    return getattr(a, kind) if kind else None


def main(path):
    with open(path, "rb") as f:
        trace = Trace()
        trace.ParseFromString(f.read())

    out = {
        "packets": len(trace.packet),
        "errors": [],
        "clock_snapshot": None,
        "first_packet": None,
        "tracks": {},
        "slices": [],
        "instants": [],
    }
    events = {}  # track uuid -> [(ts, file order, event)]
    for i, p in enumerate(trace.packet):
        if i == 0:
            out["first_packet"] = {
                "sequence_id": p.trusted_packet_sequence_id,
                "sequence_flags": p.sequence_flags,
                "first_packet_on_sequence": p.first_packet_on_sequence,
            }
        if p.trusted_packet_sequence_id != 1:
            out["errors"].append(f"packet {i}: sequence id {p.trusted_packet_sequence_id}")
        if p.HasField("clock_snapshot"):
            cs = p.clock_snapshot
            out["clock_snapshot"] = {
                "primary_trace_clock": cs.primary_trace_clock,
                "clocks": {str(c.clock_id): c.timestamp for c in cs.clocks},
            }
        if p.HasField("track_descriptor"):
            d = p.track_descriptor
            t = {"name": d.name if d.HasField("name") else None}
            if d.HasField("thread"):
                t["pid"], t["tid"] = d.thread.pid, d.thread.tid
                t["parent"] = d.parent_uuid
            if d.HasField("process"):
                t["process"] = d.process.pid
            if str(d.uuid) in out["tracks"]:
                out["errors"].append(f"track {d.uuid} described twice")
            out["tracks"][str(d.uuid)] = t
        if p.HasField("track_event"):
            if p.timestamp_clock_id != 3:
                out["errors"].append(f"packet {i}: clock {p.timestamp_clock_id}, not MONOTONIC (3)")
            e = p.track_event
            events.setdefault(e.track_uuid, []).append((p.timestamp, i, e))

    for uuid, t in out["tracks"].items():
        if "tid" in t and not any(p.get("process") == t["pid"] for p in out["tracks"].values()):
            out["errors"].append(f"thread track {uuid}: no track for its process {t['pid']}")
        if "tid" in t and out["tracks"].get(str(t["parent"]), {}).get("process") != t["pid"]:
            out["errors"].append(f"thread track {uuid}: its parent is not its process's track")

    for uuid, evs in events.items():
        if str(uuid) not in out["tracks"]:
            out["errors"].append(f"events on undescribed track {uuid}")
        track = out["tracks"].get(str(uuid), {})
        evs.sort(key=lambda x: (x[0], x[1]))
        stack = []  # indexes into out["slices"]
        for ts, _, e in evs:
            args = {a.name: annotation_value(a) for a in e.debug_annotations}
            parent = stack[-1] if stack else None
            common = {
                "track": uuid,
                "pid": track.get("pid", track.get("process")),
                "tid": track.get("tid"),
                "name": e.name,
                "ts": ts,
                "depth": len(stack),
                "parent": parent,
                "args": args,
            }
            if e.type == TrackEvent.TYPE_SLICE_BEGIN:
                common["end"] = None
                out["slices"].append(common)
                stack.append(len(out["slices"]) - 1)
            elif e.type == TrackEvent.TYPE_SLICE_END:
                if not stack:
                    out["errors"].append(f"track {uuid}: end at {ts} with no open slice")
                    continue
                out["slices"][stack.pop()]["end"] = ts
            elif e.type == TrackEvent.TYPE_INSTANT:
                out["instants"].append(common)
            else:
                out["errors"].append(f"track {uuid}: event type {e.type}")
        for i in stack:
            out["errors"].append(f"track {uuid}: slice {out['slices'][i]['name']!r} never ends")
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
