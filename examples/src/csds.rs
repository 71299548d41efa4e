//! `--csds-port`: the xDS client's view of its resources (gRFC A40's CSDS), served in
//! plaintext on loopback for `grpcdebug`, `istioctl`-style tools and any CSDS client.

use std::net::{Ipv4Addr, SocketAddr};

use meshwork_xds::client::XdsClient;
use meshwork_xds::csds::CsdsService;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;

use crate::args::Error;

/// Serves CSDS for `client` on `127.0.0.1:port` (0: a free port) until the process ends, and
/// prints `csds: serving on ADDRESS` on stderr, so that a caller that asked for port 0 learns
/// which one it got. Loopback only: the dump names every resource the client holds, which is
/// for the operator, not the network.
///
/// # Errors
/// The port cannot be bound.
pub async fn serve(client: XdsClient, port: u16) -> Result<SocketAddr, Error> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, port))
        .await
        .map_err(|e| format!("--csds-port {port}: cannot listen on 127.0.0.1:{port}: {e}"))?;
    let addr = listener.local_addr()?;
    eprintln!("csds: serving on {addr}");
    let service = CsdsService::new(client).into_server();
    tokio::spawn(async move {
        let served = tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(TcpListenerStream::new(listener))
            .await;
        if let Err(e) = served {
            eprintln!("csds: stopped: {e}");
        }
    });
    Ok(addr)
}
