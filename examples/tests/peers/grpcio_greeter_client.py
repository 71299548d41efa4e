"""gRPC's reference xDS client (grpcio, C-core) as greeter-client's twin.

usage: grpcio_greeter_client.py --target xds:///NAME --calls N [--header k:v]... [--mtls]
                                [--method NAME]

Makes N unary helloworld.Greeter/SayHello calls through grpcio's own xDS resolver and
balancers (GRPC_XDS_BOOTSTRAP names the ADS server) and prints one JSON line in
greeter-client's format: {"counts": {"A": 50, "B": 50}, "errors": 0}, counting replies by the
text before the first colon, and "statuses": how many calls ended with each status code
({"OK": 98, "UNAVAILABLE": 2}). --method calls another helloworld.Greeter method with the
same messages (a server without it answers UNIMPLEMENTED), for path-based policies. With
--mtls the channel uses xDS-managed credentials (gRFC A29: the cluster's UpstreamTlsContext
+ the bootstrap's certificate_providers), plaintext otherwise. The protobuf messages (one
string field each) are encoded by hand, so no generated code is needed.
"""
import argparse
import collections
import json

import grpc
import grpc.experimental


def encode_request(name: str) -> bytes:
    data = name.encode()
    return b"\x0a" + varint(len(data)) + data


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def decode_reply(data: bytes) -> str:
    """HelloReply.message (field 1); other fields are not expected."""
    i = 0
    while i < len(data):
        tag = data[i]
        i += 1
        length, shift = 0, 0
        while True:
            b = data[i]
            i += 1
            length |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                break
        if tag == 0x0A:
            return data[i:i + length].decode()
        i += length
    return ""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--target", required=True)
    ap.add_argument("--calls", type=int, default=10)
    ap.add_argument("--header", action="append", default=[])
    ap.add_argument("--mtls", action="store_true")
    ap.add_argument("--timeout", type=float, default=10.0)
    ap.add_argument("--method", default="SayHello")
    a = ap.parse_args()
    metadata = [tuple(s.strip() for s in h.split(":", 1)) for h in a.header]
    metadata = [(k.lower(), v) for k, v in metadata]
    if a.mtls:
        creds = grpc.xds_channel_credentials(
            fallback_credentials=grpc.experimental.insecure_channel_credentials())
        channel = grpc.secure_channel(a.target, creds)
    else:
        channel = grpc.insecure_channel(a.target)
    say_hello = channel.unary_unary(
        f"/helloworld.Greeter/{a.method}",
        request_serializer=lambda name: encode_request(name),
        response_deserializer=decode_reply,
    )
    counts = collections.Counter()
    statuses = collections.Counter()
    errors = 0
    samples = []
    with channel:
        for _ in range(a.calls):
            try:
                message = say_hello("grpcio", timeout=a.timeout, metadata=metadata or None)
                counts[message.split(":", 1)[0]] += 1
                statuses[grpc.StatusCode.OK.name] += 1
            except grpc.RpcError as e:
                errors += 1
                statuses[e.code().name] += 1
                if len(samples) < 3:
                    samples.append(f"{e.code()}: {e.details()}")
    print(json.dumps({
        "counts": dict(sorted(counts.items())),
        "errors": errors,
        "statuses": dict(sorted(statuses.items())),
        "samples": samples,
    }))


if __name__ == "__main__":
    main()
