//! Why a remote could not be used, in the classes an operator acts on: a name that does not
//! resolve, a TCP connect that times out (a firewall dropping packets, a wrong address), a
//! connection refused or reset, a TLS or pin failure, credentials refused (401/403), an
//! overloaded or failing server. The first failure of a retried call is reported with its class
//! and the retry deadline at once, so a join that cannot work is known in seconds rather than
//! when its deadline passes.

use serde::Serialize;

/// The class of a failure to use a remote.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Cause {
    /// The host name does not resolve.
    Dns,
    /// The TCP connect timed out (packets dropped: a firewall, a security group, a wrong IP).
    TcpTimeout,
    /// The TCP connect was refused (nothing listens on that port).
    TcpRefused,
    /// The connection was reset or closed mid-way.
    TcpReset,
    /// No route to the host or network.
    Unreachable,
    /// The TLS handshake failed, or the certificate is not the pinned CA's.
    Tls,
    /// 401: the credentials (a bootstrap token) are unknown or expired.
    Unauthorized,
    /// 403: the credentials are valid but not allowed.
    Forbidden,
    /// 429: the server sheds load.
    Overloaded,
    /// 5xx: the server failed.
    ServerError,
    /// Connected, but no answer within the timeout.
    NoAnswer,
    /// Anything else.
    Other,
}

impl std::fmt::Display for Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Cause::Dns => "DNS: the name does not resolve",
            Cause::TcpTimeout => "TCP connect timed out (a firewall or security group dropping packets, or a wrong address)",
            Cause::TcpRefused => "TCP connection refused (nothing listens on that port)",
            Cause::TcpReset => "TCP connection reset",
            Cause::Unreachable => "no route to the host",
            Cause::Tls => "TLS or CA pin",
            Cause::Unauthorized => "401 Unauthorized: the token is unknown or has expired",
            Cause::Forbidden => "403 Forbidden",
            Cause::Overloaded => "429: the server sheds load",
            Cause::ServerError => "server error (5xx)",
            Cause::NoAnswer => "connected, but no answer in time",
            Cause::Other => "other",
        })
    }
}

impl Cause {
    /// The class of an HTTP status.
    pub fn of_status(status: u16) -> Cause {
        match status {
            401 => Cause::Unauthorized,
            403 => Cause::Forbidden,
            429 => Cause::Overloaded,
            500..=599 => Cause::ServerError,
            _ => Cause::Other,
        }
    }

    /// The class of a connection failure, from the OS error and the resolver's message in its
    /// source chain.
    pub fn of_connect_error(err: &(dyn std::error::Error + 'static)) -> Cause {
        use std::io::ErrorKind;
        let mut current = Some(err);
        let mut depth = 0;
        while let Some(e) = current {
            if let Some(io) = e.downcast_ref::<std::io::Error>() {
                match io.kind() {
                    ErrorKind::ConnectionRefused => return Cause::TcpRefused,
                    ErrorKind::ConnectionReset
                    | ErrorKind::ConnectionAborted
                    | ErrorKind::BrokenPipe
                    | ErrorKind::UnexpectedEof => return Cause::TcpReset,
                    ErrorKind::TimedOut => return Cause::TcpTimeout,
                    ErrorKind::HostUnreachable | ErrorKind::NetworkUnreachable => {
                        return Cause::Unreachable
                    }
                    _ => {}
                }
            }
            // hyper-util's resolver: "dns error: failed to lookup address information: …".
            let text = e.to_string();
            if text.starts_with("dns error") || text.contains("failed to lookup address") {
                return Cause::Dns;
            }
            depth += 1;
            current = if depth > 16 { None } else { e.source() };
        }
        Cause::Other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("client error (Connect)")]
    struct Wrapped(#[source] std::io::Error);

    #[test]
    fn os_errors_name_their_class_through_wrappers() {
        let wrapped = |kind| Wrapped(std::io::Error::from(kind));
        use std::io::ErrorKind::*;
        assert_eq!(
            Cause::of_connect_error(&wrapped(ConnectionRefused)),
            Cause::TcpRefused
        );
        assert_eq!(
            Cause::of_connect_error(&wrapped(ConnectionReset)),
            Cause::TcpReset
        );
        assert_eq!(
            Cause::of_connect_error(&wrapped(TimedOut)),
            Cause::TcpTimeout
        );
        assert_eq!(
            Cause::of_connect_error(&wrapped(HostUnreachable)),
            Cause::Unreachable
        );
        let dns = std::io::Error::other("dns error: failed to lookup address information");
        assert_eq!(Cause::of_connect_error(&Wrapped(dns)), Cause::Dns);
        assert_eq!(Cause::of_status(401), Cause::Unauthorized);
        assert_eq!(Cause::of_status(503), Cause::ServerError);
    }

    #[test]
    fn a_real_refused_connect_is_refused() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr").port()
        };
        let err = std::net::TcpStream::connect(("127.0.0.1", port)).expect_err("nobody listens");
        assert_eq!(Cause::of_connect_error(&err), Cause::TcpRefused);
    }
}
