//! `HOST:PORT` to a socket address, once, at start.

use std::net::{SocketAddr, ToSocketAddrs};

use thiserror::Error;

/// Why an address could not be resolved.
#[derive(Debug, Error)]
pub enum ResolveError {
    /// The name lookup failed (or the text is not `HOST:PORT`).
    #[error("cannot resolve {text:?}: {source}")]
    Lookup {
        /// What was given.
        text: String,
        /// The resolver's error.
        source: std::io::Error,
    },
    /// The name resolves to no address.
    #[error("{0:?} resolves to no address")]
    NoAddress(String),
}

/// Resolves `HOST:PORT`; an IP literal needs no name lookup at all. The first address wins.
pub fn resolve(text: &str) -> Result<SocketAddr, ResolveError> {
    if let Ok(addr) = text.parse() {
        return Ok(addr);
    }
    text.to_socket_addrs()
        .map_err(|source| ResolveError::Lookup {
            text: text.to_owned(),
            source,
        })?
        .next()
        .ok_or_else(|| ResolveError::NoAddress(text.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_resolve_without_a_lookup_and_nonsense_is_an_error() {
        assert_eq!(
            resolve("127.0.0.1:9").unwrap(),
            "127.0.0.1:9".parse().unwrap()
        );
        assert_eq!(resolve("[::1]:9").unwrap(), "[::1]:9".parse().unwrap());
        assert!(matches!(
            resolve("no port here"),
            Err(ResolveError::Lookup { .. })
        ));
    }
}
