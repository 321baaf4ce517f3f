#!/usr/bin/env python3
"""Following student-service's enrollment events on NATS JetStream, as a consumer should.

The service publishes every committed enrollment change once or more (at least once), in
sequence order, to <prefix>.created and <prefix>.deleted, as a protobuf school.v1.EnrollmentEvent
in CloudEvents binary mode (ce-* headers). A consumer therefore:
  * deduplicates on the event id (ce-id, the same as EnrollmentEvent.id): a re-publish after a
    crash of the service carries the same id;
  * keeps the last sequence it handled (ce-sequence, EnrollmentEvent.sequence): the sequence has
    no gaps, so a jump means events were lost (by retention on the stream, say);
  * acknowledges a message only after handling it.

Needs: python3 -m pip install nats-py protobuf grpcio-tools (grpcio-tools only to make the stubs)
Run:   python3 examples/python/events_consumer.py --nats nats://127.0.0.1:4222 --count 3
It reads from the start of the stream (an ephemeral pull consumer), prints one line per event,
and stops after --count new events (or --timeout seconds without one). Last line:
"events-consumer: N events, sequences A..B, no gap" ; exits 1 on a gap, a bad message, or fewer
than --count events. It pulls no more messages than it still needs, so it prints and acknowledges
exactly --count events (a re-publish it skips is acknowledged too, and not counted).
"""

import argparse
import asyncio
import atexit
import glob
import importlib
import os
import shutil
import sys
import tempfile

import nats
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")


def event_type():
    """school.v1.EnrollmentEvent, from stubs generated into a temporary directory."""
    from grpc_tools import protoc

    out = tempfile.mkdtemp(prefix="school-v1-stubs-")
    atexit.register(shutil.rmtree, out, ignore_errors=True)
    proto_dir = os.path.join(ROOT, "proto")
    well_known = os.path.join(os.path.dirname(protoc.__file__), "_proto")
    protos = sorted(glob.glob(os.path.join(proto_dir, "school", "v1", "*.proto")))
    if protoc.main(["protoc", f"-I{proto_dir}", f"-I{well_known}", f"--python_out={out}", *protos]) != 0:
        sys.exit("grpcio-tools could not compile the protos")
    sys.path.insert(0, out)
    return importlib.import_module("school.v1.enrollment_event_service_pb2").EnrollmentEvent


async def follow(args, EnrollmentEvent):
    connection = await nats.connect(args.nats)
    jetstream = connection.jetstream()
    config = ConsumerConfig(deliver_policy=DeliverPolicy.ALL, ack_policy=AckPolicy.EXPLICIT)
    subscription = await jetstream.pull_subscribe(
        f"{args.subject_prefix}.>", stream=args.stream, config=config)
    seen, first, last = set(), None, None
    try:
        while len(seen) < args.count:
            # Pull no more than the events still wanted: a message pulled is delivered to this
            # consumer, and one not handled would be left unacknowledged until JetStream's
            # ack wait runs out. (A re-publish makes the batch short by one; the loop pulls again.)
            try:
                messages = await subscription.fetch(
                    batch=min(100, args.count - len(seen)), timeout=args.timeout)
            except nats.errors.TimeoutError:
                break
            for message in messages:
                headers = message.headers or {}
                event_id = headers.get("ce-id")
                if event_id in seen:  # a re-publish: already handled
                    await message.ack()
                    continue
                event = EnrollmentEvent.FromString(message.data)
                if event.id != event_id or int(headers.get("ce-sequence", "0")) != event.sequence:
                    print(f"headers and payload disagree: {headers} {event}")
                    return 1
                if last is not None and event.sequence != last + 1:
                    print(f"gap: sequence {event.sequence} after {last}")
                    return 1
                kind = EnrollmentEvent.Type.Name(event.type)
                cause = EnrollmentEvent.Cause.Name(event.cause)
                print(f"{event.sequence:>6} {kind:<13} {cause:<22} student {event.student_id} "
                      f"course {event.course_id} ({headers.get('ce-time')})")
                # Handle the event here (bill, notify, sync), then acknowledge it.
                seen.add(event_id)
                first = event.sequence if first is None else first
                last = event.sequence
                await message.ack()
    finally:
        await connection.close()
    print(f"events-consumer: {len(seen)} events, sequences {first}..{last}, no gap")
    return 0 if len(seen) == args.count else 1


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nats", default="nats://127.0.0.1:4222")
    parser.add_argument("--stream", default="SCHOOL_ENROLLMENTS")
    parser.add_argument("--subject-prefix", default="school.v1.enrollment")
    parser.add_argument("--count", type=int, default=1, help="stop after this many events")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for one")
    args = parser.parse_args()
    if args.count < 1:
        parser.error("--count must be at least 1")
    sys.exit(asyncio.run(follow(args, event_type())))


if __name__ == "__main__":
    main()
