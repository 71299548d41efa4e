"""gRPC's reference xDS client (grpcio, C-core) as a differential oracle.

Opens one grpcio channel per `xds:///TARGET` (a TARGET that is a URI already, such as
`xds://authority/name` for federation, gRFC A47, as it is), lets each resolve through the
ADS server named by GRPC_XDS_BOOTSTRAP, then reads grpcio's own view of every xDS resource
through its in-process CSDS service (grpcio-csds) and prints it as one JSON array:
[{"type": TYPE_URL, "name": NAME, "version": V, "status": "ACKED"|"NACKED"|...}].

usage: grpcio_csds_dump.py --targets a,b,c [--wait SECONDS]
It polls until no resource is REQUESTED and the view has not changed for --quiet seconds
(or --wait passes), so it reports a settled view: between a Listener's ACK and the
subscription to its RouteConfiguration (and from there to clusters and endpoints) there are
moments with nothing REQUESTED, which a busy machine can stretch.
"""
import argparse
import json
import sys
import time
from concurrent import futures

import grpc
import grpc_csds
from envoy.service.status.v3 import csds_pb2, csds_pb2_grpc

STATUS = {0: "UNKNOWN", 1: "REQUESTED", 2: "DOES_NOT_EXIST", 3: "ACKED", 4: "NACKED",
          5: "RECEIVED_ERROR", 6: "TIMEOUT"}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--targets", required=True)
    ap.add_argument("--wait", type=float, default=20.0)
    ap.add_argument("--quiet", type=float, default=1.0)
    a = ap.parse_args()

    channels = []
    for target in a.targets.split(","):
        ch = grpc.insecure_channel(target if "://" in target else "xds:///" + target)
        # Subscribing with try_to_connect starts name resolution, i.e. the xDS watches.
        ch.subscribe(lambda _state: None, try_to_connect=True)
        channels.append(ch)

    srv = grpc.server(futures.ThreadPoolExecutor(2))
    grpc_csds.add_csds_servicer(srv)
    port = srv.add_insecure_port("127.0.0.1:0")
    srv.start()
    stub = csds_pb2_grpc.ClientStatusDiscoveryServiceStub(grpc.insecure_channel(f"127.0.0.1:{port}"))

    deadline = time.time() + a.wait
    rows = []
    last, same_since = None, time.time()
    while True:
        resp = stub.FetchClientStatus(csds_pb2.ClientStatusRequest(), timeout=5)
        rows = []
        for cfg in resp.config:
            for gc in cfg.generic_xds_configs:
                rows.append({
                    "type": gc.type_url,
                    "name": gc.name,
                    "version": gc.version_info,
                    "status": STATUS.get(gc.client_status, str(gc.client_status)),
                    "error": gc.error_state.details if gc.HasField("error_state") else None,
                })
        now = time.time()
        view = sorted((r["type"], r["name"], r["version"], r["status"]) for r in rows)
        if view != last:
            last, same_since = view, now
        settled = rows and all(r["status"] != "REQUESTED" for r in rows)
        if (settled and now - same_since >= a.quiet) or now > deadline:
            break
        time.sleep(0.1)
    json.dump(rows, sys.stdout)
    sys.stdout.write("\n")
    sys.stdout.flush()
    srv.stop(0)
    for ch in channels:
        ch.close()


if __name__ == "__main__":
    main()
