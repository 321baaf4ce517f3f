#!/usr/bin/env python3
"""An OTLP/gRPC trace sink for benchmarks: answers every TraceService/Export with an empty
ExportTraceServiceResponse without decoding the request (a real collector runs on other
machines; decoding here would put its CPU cost on the machine being measured), and prints the
requests and bytes it received when stopped.

usage: otlp_sink.py PORT    (pip install grpcio)
"""

import signal
import sys
from concurrent import futures

import grpc

received = {"requests": 0, "bytes": 0}


def export(request, context):
    received["requests"] += 1
    received["bytes"] += len(request)
    return b""  # ExportTraceServiceResponse with no fields set


def main():
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    handler = grpc.unary_unary_rpc_method_handler(export)  # no (de)serializers: raw bytes
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(
        "opentelemetry.proto.collector.trace.v1.TraceService", {"Export": handler})])
    server.add_insecure_port(f"127.0.0.1:{sys.argv[1]}")
    server.start()
    signal.signal(signal.SIGTERM, lambda *_: server.stop(0))
    server.wait_for_termination()
    print(f"otlp-sink: {received['requests']} export requests, {received['bytes']} bytes", flush=True)


if __name__ == "__main__":
    main()
