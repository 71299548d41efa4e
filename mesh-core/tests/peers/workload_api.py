"""A SPIFFE Workload API server for meshwork's tests (a stand-in for a SPIRE agent).

Serves FetchX509SVID and FetchX509Bundles on one or more unix sockets, one SPIFFE ID per
socket, all issued by one in-memory CA set, using the workload.proto stubs py-spiffe ships.
Rotation is driven by commands on stdin, one per line, so tests decide when it happens:

  rotate       re-issue every SVID from the current CA
  add-ca       generate a new CA and add it to the bundle (SVIDs still from the old one)
  use-new-ca   re-issue every SVID from the newest CA
  drop-old-ca  remove every CA but the newest from the bundle

After startup it prints "ready", after each command "ok <generation>" (flushed). Like SPIRE
it requires the `workload.spiffe.io: true` header.

  python workload_api.py --trust-domain example.org \
      --socket /tmp/a.sock=spiffe://example.org/server --socket /tmp/b.sock=spiffe://example.org/client
"""
import argparse
import datetime as dt
import sys
import threading
from concurrent import futures

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from spiffe._proto import workload_pb2 as pb, workload_pb2_grpc as pb_grpc

DER = serialization.Encoding.DER


def now():
    return dt.datetime.now(dt.timezone.utc)


def key_usage(digital_signature=False, cert_sign=False):
    return x509.KeyUsage(digital_signature, False, False, False, False, cert_sign, cert_sign, False, False)


class State:
    """CAs, per-ID SVIDs and a generation counter, guarded by one condition variable."""

    def __init__(self, trust_domain, ids):
        self.td = trust_domain
        self.ids = ids
        self.cond = threading.Condition()
        self.generation = 0
        self.cas = [self._new_ca(1)]
        self.svids = {}
        with self.cond:
            self._issue_all()

    def _new_ca(self, n):
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"meshwork test Workload API CA {n}")])
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now() - dt.timedelta(hours=1)).not_valid_after(now() + dt.timedelta(days=1))
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .add_extension(key_usage(cert_sign=True), critical=True)
                .add_extension(x509.SubjectAlternativeName(
                    [x509.UniformResourceIdentifier(f"spiffe://{self.td}")]), critical=False)
                .sign(key, hashes.SHA256()))
        return cert, key

    def _issue(self, spiffe_id):
        ca_cert, ca_key = self.cas[-1] if self._use_newest else self.cas[0]
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "workload")]))
                .issuer_name(ca_cert.subject).public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now() - dt.timedelta(minutes=5)).not_valid_after(now() + dt.timedelta(hours=1))
                .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(spiffe_id)]), critical=False)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(key_usage(digital_signature=True), critical=True)
                .add_extension(x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
                .sign(ca_key, hashes.SHA256()))
        der_key = key.private_bytes(DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        return cert.public_bytes(DER), der_key

    _use_newest = False

    def _issue_all(self):
        self.svids = {i: self._issue(i) for i in self.ids}
        self.generation += 1
        self.cond.notify_all()

    def bundle(self):
        return b"".join(c.public_bytes(DER) for c, _ in self.cas)

    def command(self, cmd):
        with self.cond:
            if cmd == "rotate":
                self._issue_all()
            elif cmd == "add-ca":
                self.cas.append(self._new_ca(len(self.cas) + 1))
                self.generation += 1
                self.cond.notify_all()
            elif cmd == "use-new-ca":
                self._use_newest = True
                self._issue_all()
            elif cmd == "drop-old-ca":
                self.cas = self.cas[-1:]
                self._use_newest = False
                self.generation += 1
                self.cond.notify_all()
            else:
                raise ValueError(f"unknown command {cmd!r}")
            return self.generation

    def x509_response(self, spiffe_id):
        cert, key = self.svids[spiffe_id]
        return pb.X509SVIDResponse(svids=[pb.X509SVID(
            spiffe_id=spiffe_id, x509_svid=cert, x509_svid_key=key, bundle=self.bundle())])


class Api(pb_grpc.SpiffeWorkloadAPIServicer):
    def __init__(self, state, spiffe_id):
        self.state, self.id = state, spiffe_id

    def _stream(self, ctx, make):
        if dict(ctx.invocation_metadata()).get("workload.spiffe.io") != "true":
            ctx.abort(grpc.StatusCode.INVALID_ARGUMENT, "security header missing from request")
        seen = -1
        while ctx.is_active():
            with self.state.cond:
                self.state.cond.wait_for(lambda: self.state.generation != seen, timeout=0.5)
                if self.state.generation == seen:
                    continue
                seen = self.state.generation
                resp = make()
            yield resp

    def FetchX509SVID(self, request, ctx):
        return self._stream(ctx, lambda: self.state.x509_response(self.id))

    def FetchX509Bundles(self, request, ctx):
        return self._stream(ctx, lambda: pb.X509BundlesResponse(
            bundles={f"spiffe://{self.state.td}": self.state.bundle()}))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--trust-domain", default="example.org")
    ap.add_argument("--socket", action="append", required=True, help="PATH=SPIFFE_ID")
    a = ap.parse_args()
    pairs = [s.split("=", 1) for s in a.socket]
    state = State(a.trust_domain, [i for _, i in pairs])
    servers = []
    for path, spiffe_id in pairs:
        srv = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        pb_grpc.add_SpiffeWorkloadAPIServicer_to_server(Api(state, spiffe_id), srv)
        srv.add_insecure_port(f"unix://{path}")
        srv.start()
        servers.append(srv)
    print("ready", flush=True)
    for line in sys.stdin:
        cmd = line.strip()
        if cmd:
            print(f"ok {state.command(cmd)}", flush=True)
    for srv in servers:
        srv.stop(0)


if __name__ == "__main__":
    main()
