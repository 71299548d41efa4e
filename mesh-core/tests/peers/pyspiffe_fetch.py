"""py-spiffe (the SPIFFE project's Python client) as the reference client for our Workload
API test server: fetch the X.509 context from a socket and print the SVID's SPIFFE ID, the
number of certificates in its chain and the trust domains in the bundle set, as JSON.

usage: pyspiffe_fetch.py unix:///path/to.sock
"""
import json
import sys

from spiffe import WorkloadApiClient

with WorkloadApiClient(sys.argv[1]) as client:
    ctx = client.fetch_x509_context()
    svid = ctx.default_svid
    print(json.dumps({
        "spiffe_id": str(svid.spiffe_id),
        "chain": len(svid.cert_chain),
        "trust_domains": sorted(str(b.trust_domain) for b in ctx.x509_bundle_set.bundles),
    }))
