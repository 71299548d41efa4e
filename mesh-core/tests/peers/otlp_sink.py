"""A real OTLP/gRPC receiver for meshwork's telemetry tests: oteltest's GrpcSink.

Each export request it receives is appended to --out as one JSON line
{"kind": "traces"|"metrics"|"logs", "request": <the request as protobuf JSON>}.
It prints "ready" once listening, and stops when its stdin closes.

  python otlp_sink.py --port 4317 --out received.jsonl
"""
import argparse
import json
import logging
import sys
import threading

from google.protobuf.json_format import MessageToDict
from oteltest.sink import GrpcSink
from oteltest.sink.handler import RequestHandler


class JsonLines(RequestHandler):
    def __init__(self, path):
        self.path, self.lock = path, threading.Lock()

    def _write(self, kind, request):
        line = json.dumps({"kind": kind, "request": MessageToDict(request)})
        with self.lock, open(self.path, "a") as f:
            f.write(line + "\n")

    def handle_trace(self, request, headers):
        self._write("traces", request)

    def handle_metrics(self, request, headers):
        self._write("metrics", request)

    def handle_logs(self, request, headers):
        self._write("logs", request)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    sink = GrpcSink(JsonLines(a.out), logging.getLogger("otlp_sink"), port=a.port)
    sink.start()
    print("ready", flush=True)
    sys.stdin.read()  # the test holds our stdin; EOF means it is done
    sink.stop()


main()
