//! Printing an error with its causes: the crate's one way of turning a `source()` chain into
//! a line of text, shared with the crates above it.

/// Displays an error and its `source()` chain, `: `-separated, as grpc-go's `connection
/// error: desc = ...` names the cause: for logs, and for the messages that report a failure
/// (a `tonic::Status` made from a stack error, an xDS server's failure). A source whose
/// message is already there is left out (tonic's transport error and the connect error
/// inside it both say "Connection refused"); at most 16 levels, in case a chain is cyclic.
///
/// ```
/// use meshwork_xds::ErrorChain;
/// let io = std::io::Error::other("connection refused");
/// let err = std::io::Error::new(std::io::ErrorKind::Other, io);
/// assert_eq!(ErrorChain(&err).to_string(), "connection refused");
/// ```
#[derive(Clone, Copy)]
pub struct ErrorChain<'a>(pub &'a (dyn std::error::Error + 'static));

impl std::fmt::Debug for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut message = self.0.to_string();
        let mut source = self.0.source();
        for _ in 0..16 {
            let Some(e) = source else { break };
            let next = e.to_string();
            if !message.contains(&next) {
                message.push_str(": ");
                message.push_str(&next);
            }
            source = e.source();
        }
        f.write_str(&message)
    }
}
