"""gRPC's reference server (grpcio, C-core) serving helloworld.Greeter, for interop tests.

usage: grpcio_greeter_server.py --id ID

Binds 127.0.0.1:0 (plaintext), prints "listening on 127.0.0.1:PORT" once it serves, and
answers SayHello with "<ID>: hello <name>", as meshwork's greeter-server does. The protobuf
messages (one string field each) are encoded by hand, so no generated code is needed. Runs
until killed.
"""
import argparse
import sys
from concurrent import futures

import grpc

from grpcio_greeter_client import decode_reply as decode_string_field
from grpcio_greeter_client import encode_request as encode_string_field


def greeter_handler(server_id):
    """helloworld.Greeter answering SayHello with "<server_id>: hello <name>"."""

    def say_hello(name, _context):
        return f"{server_id}: hello {name}"

    return grpc.method_handlers_generic_handler("helloworld.Greeter", {
        "SayHello": grpc.unary_unary_rpc_method_handler(
            say_hello,
            request_deserializer=decode_string_field,
            response_serializer=encode_string_field,
        ),
    })


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--id", required=True)
    a = ap.parse_args()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((greeter_handler(a.id),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(f"listening on 127.0.0.1:{port}", flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    sys.exit(main())
