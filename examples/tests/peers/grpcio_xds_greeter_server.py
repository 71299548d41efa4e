"""gRPC's reference xDS-enabled server (grpcio, C-core) serving helloworld.Greeter.

usage: grpcio_xds_greeter_server.py --id ID --port PORT

An xDS-enabled server (gRFC A36): `grpc.server(..., xds=True)` with
`grpc.xds_server_credentials` over an insecure fallback, so its filter chains, TLS
(gRFC A29, the bootstrap's certificate_providers) and RBAC (gRFC A41) all come from the
control plane GRPC_XDS_BOOTSTRAP names. The bootstrap's server_listener_resource_name_template
is expanded with "127.0.0.1:PORT". Answers SayHello with "<ID>: hello <name>", as
grpcio_greeter_server.py and meshwork's greeter-server do. Prints
"listening on 127.0.0.1:PORT" once the server has started.

What grpcio 1.85 does (facts the caller relies on):
- add_secure_port returns -1 on an xDS-enabled server, whatever the port, and with port 0
  it asks for the Listener "...127.0.0.1:0" and never learns its port. So the caller picks
  a free port and passes --port; the line printed names that port.
- The port is bound only while the server serves: until a valid Listener arrives, and
  after it is deleted, connecting is refused.
- A call to a method the server does not serve aborts the process (a C-core CHECK,
  "pipe.h:85 Check failed: has_value()"), with or without RBAC, where the plain server
  answers UNIMPLEMENTED: callers must only call SayHello, or be refused before dispatch.
- Python exposes no serving-status callback; C-core logs the changes ("xDS Listener
  resource obtained; will start serving on ...", "... not serving on ...") to stderr at
  INFO, which this script turns on unless GRPC_VERBOSITY is set.
Runs until killed.
"""
import argparse
import os
import sys
from concurrent import futures

os.environ.setdefault("GRPC_VERBOSITY", "INFO")

import grpc  # noqa: E402  (after GRPC_VERBOSITY, which C-core reads once)

from grpcio_greeter_server import greeter_handler  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--id", required=True)
    ap.add_argument("--port", type=int, required=True)
    a = ap.parse_args()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), xds=True)
    server.add_generic_rpc_handlers((greeter_handler(a.id),))
    creds = grpc.xds_server_credentials(grpc.insecure_server_credentials())
    # The returned port is -1 (see above), so it tells nothing.
    server.add_secure_port(f"127.0.0.1:{a.port}", creds)
    server.start()
    print(f"listening on 127.0.0.1:{a.port}", flush=True)
    server.wait_for_termination()
    return 0


if __name__ == "__main__":
    sys.exit(main())
