//! Name resolution with the SSRF guard: every address a provider's host name resolves to is
//! checked with [`krouter_policy::ssrf::classify_ip`], and if any is refused (a metadata,
//! link-local, multicast or otherwise refused address) the whole name is refused, so a DNS
//! answer cannot steer krouter to an internal-only address. The connector then connects to
//! exactly the checked addresses. IP-literal hosts never reach the resolver; they were
//! checked when the policy was validated.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use hyper_util::client::legacy::connect::dns::Name;
use krouter_policy::ssrf::{Verdict, classify_ip};

/// The resolver: the system's (`getaddrinfo`, so `/etc/hosts` applies), then the guard.
#[derive(Debug, Clone, Copy, Default)]
pub struct SsrfResolver;

/// A host name refused because of an address it resolved to.
#[derive(Debug, thiserror::Error)]
#[error("{host} resolves to {address}, which the SSRF guard refuses ({reason})")]
pub struct Refused {
    host: String,
    address: std::net::IpAddr,
    reason: String,
}

type Resolving =
    Pin<Box<dyn Future<Output = Result<std::vec::IntoIter<SocketAddr>, io::Error>> + Send>>;

impl tower_service::Service<Name> for SsrfResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = io::Error;
    type Future = Resolving;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), io::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            checked(&host, found).map(Vec::into_iter)
        })
    }
}

/// `addresses` if every one is allowed; otherwise the first refusal as an error.
pub fn checked(host: &str, addresses: Vec<SocketAddr>) -> Result<Vec<SocketAddr>, io::Error> {
    for address in &addresses {
        if let Verdict::Refused(reason) = classify_ip(address.ip()) {
            tracing::warn!(
                host,
                address = %address.ip(),
                reason = %reason,
                "refused an upstream address (SSRF guard)"
            );
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                Refused {
                    host: host.to_owned(),
                    address: address.ip(),
                    reason: reason.to_string(),
                },
            ));
        }
    }
    if addresses.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("{host} resolved to no address"),
        ));
    }
    Ok(addresses)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    #[test]
    fn one_refused_address_refuses_the_name() {
        let ok = vec![addr("127.0.0.1:0"), addr("10.0.0.2:0"), addr("[::1]:0")];
        assert_eq!(checked("h", ok.clone()).unwrap(), ok);
        for bad in [
            "169.254.169.254:0",
            "[fe80::1]:0",
            "[ff02::1]:0",
            "0.0.0.0:0",
            "[::ffff:169.254.169.254]:0",
        ] {
            let err = checked("h", vec![addr("127.0.0.1:0"), addr(bad)]).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::PermissionDenied, "{bad}");
            assert!(err.get_ref().unwrap().is::<Refused>());
        }
        assert_eq!(
            checked("h", vec![]).unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
    }
}
