"""gRPC's CSDS client tooling reading a CSDS server: xds-protos' generated stubs over grpcio.

usage: csds_read.py HOST:PORT
Calls FetchClientStatus once, in plaintext, and prints one JSON object:
{"node": NODE_ID, "resources": [{"type", "name", "version", "status", "error", "config_type"}]}
where status is the ClientResourceStatus name as the protos spell it (ACKED, NACKED, ...),
error the NACK's details (or null) and config_type the type URL of xds_config (or null).
"""
import json
import sys

import grpc
from envoy.service.status.v3 import csds_pb2, csds_pb2_grpc


def main():
    target = sys.argv[1]
    with grpc.insecure_channel(target) as channel:
        stub = csds_pb2_grpc.ClientStatusDiscoveryServiceStub(channel)
        resp = stub.FetchClientStatus(csds_pb2.ClientStatusRequest(), timeout=10)
    if len(resp.config) != 1:
        sys.exit(f"expected one ClientConfig, got {len(resp.config)}")
    cfg = resp.config[0]
    rows = []
    for gc in cfg.generic_xds_configs:
        status = gc.DESCRIPTOR.fields_by_name["client_status"].enum_type
        rows.append({
            "type": gc.type_url,
            "name": gc.name,
            "version": gc.version_info,
            "status": status.values_by_number[gc.client_status].name,
            "error": gc.error_state.details if gc.HasField("error_state") else None,
            "config_type": gc.xds_config.type_url if gc.HasField("xds_config") else None,
        })
    json.dump({"node": cfg.node.id, "resources": rows}, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
