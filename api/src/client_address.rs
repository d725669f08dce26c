//! Who is asking: the client's address, for the limits kept per address.
//!
//! It is the connection's peer, unless that peer is one of `TRUSTED_PROXIES`:
//! then `X-Forwarded-For` is read from its right end, where each trusted proxy
//! appended the address it saw, back to the first address no trusted proxy owns.
//! From any other peer the header is ignored, or a client could name its own
//! address and with it its own allowance.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::HeaderValue;

use crate::error::ApiError;
use crate::state::AppState;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddress(pub IpAddr);

impl FromRequestParts<AppState> for ClientAddress {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |c| c.0.ip());
        let forwarded = parts.headers.get_all("x-forwarded-for");
        Ok(ClientAddress(client_address(
            peer,
            forwarded.iter(),
            &state.config.trusted_proxies,
        )))
    }
}

fn client_address<'a>(
    peer: IpAddr,
    forwarded: impl Iterator<Item = &'a HeaderValue>,
    trusted: &[IpAddr],
) -> IpAddr {
    let peer = peer.to_canonical();
    if !trusted.contains(&peer) {
        return peer;
    }
    // From the right: each trusted proxy appended what it saw; what a client
    // wrote further left (anything at all) is never reached past an untrusted hop.
    let hops: Vec<&str> = forwarded
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .collect();
    let mut address = peer;
    for hop in hops.into_iter().rev() {
        if !trusted.contains(&address) {
            break;
        }
        match hop.trim().parse::<IpAddr>() {
            Ok(hop) => address = hop.to_canonical(),
            Err(_) => break,
        }
    }
    address
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn forwarded_for_counts_only_from_a_trusted_proxy() {
        let header = [HeaderValue::from_static("6.6.6.6, 10.0.0.9")];
        let trusted = [ip("127.0.0.1")];
        // An untrusted peer cannot pick its address.
        assert_eq!(
            client_address(ip("203.0.113.5"), header.iter(), &trusted),
            ip("203.0.113.5")
        );
        // The trusted proxy appended what it saw: the rightmost entry.
        assert_eq!(
            client_address(ip("127.0.0.1"), header.iter(), &trusted),
            ip("10.0.0.9")
        );
        // Through two trusted proxies, back to the first untrusted address.
        let chain = [ip("127.0.0.1"), ip("10.0.0.9")];
        assert_eq!(
            client_address(ip("127.0.0.1"), header.iter(), &chain),
            ip("6.6.6.6")
        );
        // Garbage a client wrote to the left is never read.
        let garbage = [HeaderValue::from_static("unknown, 10.0.0.9")];
        assert_eq!(
            client_address(ip("127.0.0.1"), garbage.iter(), &trusted),
            ip("10.0.0.9")
        );
        // An IPv4 peer seen as IPv4-mapped IPv6 is the same peer.
        assert_eq!(
            client_address(ip("::ffff:127.0.0.1"), header.iter(), &trusted),
            ip("10.0.0.9")
        );
        // No header: the proxy itself.
        assert_eq!(
            client_address(ip("127.0.0.1"), std::iter::empty(), &trusted),
            ip("127.0.0.1")
        );
    }
}
