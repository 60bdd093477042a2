#!/usr/bin/env python3
"""A local OTLP/gRPC trace receiver that prints each span it is sent.

For trying the trace export without a collector: one line per span, with
its name, trace id, parent span id, the spans it links to and its
rendezvous.* attributes. Not a collector: it keeps nothing.

Usage: otlp-receiver.py [--listen 127.0.0.1:4317] [--spans N] [--count]

  --listen ADDR  where to listen (default 127.0.0.1:4317, OTLP/gRPC's port)
  --spans N      exit after printing N spans (default: run until stopped)
  --count        print nothing per span; on SIGTERM, how many came (for
                 scripts/bench-traces.sh)

Needs grpcio and opentelemetry-proto (scripts/otlp-receiver.txt pins them).
"""

import argparse
import signal
import sys
import threading
from concurrent import futures

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc


def value(any_value):
    kind = any_value.WhichOneof("value")
    return getattr(any_value, kind) if kind else None


def line(span, service):
    attributes = {a.key: value(a.value) for a in span.attributes}
    parts = [
        f"span {span.name!r}",
        f"service={service}",
        f"trace={span.trace_id.hex()}",
        f"span={span.span_id.hex()}",
        f"parent={span.parent_span_id.hex() or '-'}",
    ]
    parts += [f"linked to {link.trace_id.hex()}-{link.span_id.hex()}" for link in span.links]
    parts += [f"{k}={v}" for k, v in sorted(attributes.items()) if k.startswith("rendezvous.")]
    return " ".join(parts)


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, limit, done, quiet):
        self.limit, self.done, self.printed, self.quiet = limit, done, 0, quiet
        self.lock = threading.Lock()

    def Export(self, request, context):
        with self.lock:
            for resource_spans in request.resource_spans:
                service = next(
                    (value(a.value) for a in resource_spans.resource.attributes if a.key == "service.name"),
                    "?",
                )
                for scope in resource_spans.scope_spans:
                    for span in scope.spans:
                        if not self.quiet:
                            print(line(span, service), flush=True)
                        self.printed += 1
            if self.limit and self.printed >= self.limit:
                self.done.set()
        return trace_service_pb2.ExportTraceServiceResponse()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--listen", default="127.0.0.1:4317")
    parser.add_argument("--spans", type=int, default=0)
    parser.add_argument("--count", action="store_true")
    args = parser.parse_args()
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    receiver = Receiver(args.spans, done, args.count)
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(receiver, server)
    if server.add_insecure_port(args.listen) == 0:
        sys.exit(f"cannot listen on {args.listen}")
    server.start()
    print(f"receiving OTLP/gRPC traces on {args.listen}", file=sys.stderr, flush=True)
    try:
        done.wait()
    except KeyboardInterrupt:
        pass
    # Lets the last answer reach its sender before going.
    server.stop(grace=1).wait()
    if args.count:
        print(f"{receiver.printed} spans received", flush=True)


if __name__ == "__main__":
    main()
