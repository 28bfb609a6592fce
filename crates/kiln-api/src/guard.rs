//! The request guard, before any handler: body limit, caller, scope, rate
//! limits.
//!
//! In order, for every request ([`guard`]):
//! 1. a body announced larger than `api.max_body_bytes` is refused `413`,
//!    and every body is cut off at that size while it is read (so a chunked
//!    1 GB upload costs what the limit allows, on any route);
//! 2. the client's address: the peer's, or, when the peer is one of
//!    `api.limits.trusted_proxies`, the nearest untrusted address of its
//!    `X-Forwarded-For` ([`client_address`]);
//! 3. the caller ([`crate::auth`]): a token found in this process's cache,
//!    or looked up in Postgres after the address has paid for the lookup
//!    (so guessing tokens costs the guesser's own rate); an unknown token
//!    is `401 invalid_token`;
//! 4. the route's scope ([`crate::auth::required_scope`]): `401
//!    unauthorized` without a token where one is needed, `403
//!    insufficient_scope` with the wrong one;
//! 5. the rate limit: per token for requests with one, per address for the
//!    others (the bootstrap admin has none): `429 rate_limited` with
//!    `Retry-After`.
//!
//! The limiters are `governor`'s keyed GCRA limiters (requests per second
//! with a burst); keys not seen for a while are swept every minute. Every
//! refusal is counted in `kiln_http_rejections_total{reason}`, and answered
//! in the API's error shape, or the registry's on `/v2/`.
//!
//! The header side of a request (its size and how long a client may take to
//! send it) is limited by the server loop (`lib.rs`).

use std::net::{IpAddr, Ipv4Addr};
use std::num::NonZeroU32;

use axum::body::Body;
use axum::extract::Request;
use axum::extract::connect_info::ConnectInfo;
use axum::http::{HeaderMap, header};
use axum::response::Response;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use kiln_config::{ApiLimits, RateLimit};

use crate::AppState;
use crate::auth::{Caller, Identified, Rejection, Shape, required_scope};
use crate::zerocopy::Conn;

/// The rate limiters of one API process.
pub struct Limits {
    per_token: Option<DefaultKeyedRateLimiter<i64>>,
    per_address: Option<DefaultKeyedRateLimiter<IpAddr>>,
    trusted: Vec<ipnet::IpNet>,
}

impl std::fmt::Debug for Limits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limits").field("trusted", &self.trusted).finish_non_exhaustive()
    }
}

fn limiter<K: std::hash::Hash + Eq + Clone>(rate: RateLimit) -> Option<DefaultKeyedRateLimiter<K>> {
    let rps = NonZeroU32::new(rate.requests_per_second)?;
    let burst = NonZeroU32::new(rate.burst).unwrap_or(rps);
    Some(RateLimiter::keyed(Quota::per_second(rps).allow_burst(burst)))
}

/// Whole seconds until `limiter` allows `key` again (at least 1).
fn retry_after<K: std::hash::Hash + Eq + Clone>(limiter: &DefaultKeyedRateLimiter<K>, key: &K) -> Option<u64> {
    match limiter.check_key(key) {
        Ok(()) => None,
        Err(not_until) => {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            Some((wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1))
        }
    }
}

impl Limits {
    pub fn new(limits: &ApiLimits) -> Limits {
        Limits {
            per_token: limiter(limits.per_token),
            per_address: limiter(limits.per_address),
            trusted: limits.trusted_proxies.iter().filter_map(|p| kiln_config::parse_ip_net(p)).collect(),
        }
    }

    fn address(&self, addr: IpAddr) -> Result<(), Rejection> {
        match self.per_address.as_ref().and_then(|l| retry_after(l, &addr)) {
            Some(s) => Err(Rejection::rate_limited("rate_address", "address", s)),
            None => Ok(()),
        }
    }

    fn caller(&self, caller: &Caller, addr: IpAddr) -> Result<(), Rejection> {
        match caller {
            Caller::Admin => Ok(()),
            Caller::Token(t) => match self.per_token.as_ref().and_then(|l| retry_after(l, &t.id)) {
                Some(s) => Err(Rejection::rate_limited("rate_token", "token", s)),
                None => Ok(()),
            },
            Caller::Anonymous => self.address(addr),
        }
    }

    /// Forget keys that have been quiet long enough to be back at full burst.
    pub fn sweep(&self) {
        if let Some(l) = &self.per_token {
            l.retain_recent();
            l.shrink_to_fit();
        }
        if let Some(l) = &self.per_address {
            l.retain_recent();
            l.shrink_to_fit();
        }
    }

    fn trusts(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.trusted.iter().any(|n| n.contains(&ip))
    }
}

/// IPv4-mapped IPv6 addresses as IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// The client's address: the peer's, unless the peer is a trusted proxy;
/// then the rightmost address of `X-Forwarded-For` that is not a trusted
/// proxy itself (the leftmost when all are). Entries a client could have
/// forged (those left of the first untrusted one) are never believed.
pub fn client_address(limits: &Limits, peer: Option<IpAddr>, headers: &HeaderMap) -> IpAddr {
    let peer = canonical(peer.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)));
    if !limits.trusts(peer) {
        return peer;
    }
    let hops: Vec<IpAddr> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .map(|h| h.parse::<IpAddr>().ok().map(canonical))
        .collect::<Option<Vec<_>>>()
        .unwrap_or_default();
    let mut client = peer;
    for hop in hops.into_iter().rev() {
        client = hop;
        if !limits.trusts(hop) {
            break;
        }
    }
    client
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers.get(header::CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

/// The guard (see the module's documentation): the request to run, or the
/// refusal to answer. `path` is the matched route, if any. Called by the
/// per-request layer ([`crate::middleware::per_request`]), inside the
/// request's span.
pub(crate) async fn guard(state: &AppState, req: Request, path: Option<&str>) -> Result<Request, Response> {
    let shape = Shape::of(path.unwrap_or(req.uri().path()));
    admit(state, req, path).await.map_err(|r| {
        state.metrics().rejected(r.reason);
        tracing::info!(status = r.status.as_u16(), code = r.code, "refused");
        r.render(shape)
    })
}

async fn admit(state: &AppState, req: Request, path: Option<&str>) -> Result<Request, Rejection> {
    let max = state.config().api.max_body_bytes;
    if content_length(req.headers()).is_some_and(|n| n > max as u64) {
        return Err(Rejection::body_too_large(max));
    }
    let mut req = req.map(|b| Body::new(http_body_util::Limited::new(b, max)));
    let peer = req.extensions().get::<ConnectInfo<Conn>>().and_then(|c| c.0.peer()).map(|a| a.ip());
    let limits = state.limits();
    let addr = client_address(limits, peer, req.headers());
    let caller = match state.auth().identify(req.headers(), state.queue())? {
        Identified::Caller(c) => c,
        Identified::Lookup { hash, generation } => {
            limits.address(addr)?;
            state.auth().lookup(state.queue(), hash, generation).await?
        }
    };
    if let Caller::Token(t) = &caller {
        tracing::Span::current().record("token", t.id);
    }
    let scope = path.and_then(|p| required_scope(req.method(), p));
    if let Some(scope) = scope {
        caller.check(state.config().api.auth.mode, scope)?;
    }
    limits.caller(&caller, addr)?;
    req.extensions_mut().insert(caller);
    Ok(req)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(trusted: &[&str]) -> Limits {
        Limits::new(&ApiLimits {
            trusted_proxies: trusted.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        })
    }

    fn xff(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", v.parse().unwrap());
        h
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let none = limits(&[]);
        assert_eq!(client_address(&none, Some(ip("10.0.0.5")), &xff("1.2.3.4")), ip("10.0.0.5"));
        let l = limits(&["10.0.0.0/8", "127.0.0.1"]);
        assert_eq!(client_address(&l, Some(ip("10.0.0.5")), &xff("1.2.3.4")), ip("1.2.3.4"));
        // A client's own forged entries, left of the real one, are ignored.
        assert_eq!(client_address(&l, Some(ip("10.0.0.5")), &xff("6.6.6.6, 1.2.3.4, 10.0.0.9")), ip("1.2.3.4"));
        assert_eq!(client_address(&l, Some(ip("::ffff:127.0.0.1")), &xff("1.2.3.4")), ip("1.2.3.4"));
        // An untrusted peer's header is ignored; garbage falls back to the peer.
        assert_eq!(client_address(&l, Some(ip("8.8.8.8")), &xff("1.2.3.4")), ip("8.8.8.8"));
        assert_eq!(client_address(&l, Some(ip("10.0.0.5")), &xff("bogus")), ip("10.0.0.5"));
        assert_eq!(client_address(&l, Some(ip("10.0.0.5")), &HeaderMap::new()), ip("10.0.0.5"));
    }

    #[test]
    fn a_burst_past_the_limit_is_told_when_to_retry() {
        let l: DefaultKeyedRateLimiter<i64> = limiter(RateLimit { requests_per_second: 1, burst: 3 }).unwrap();
        for _ in 0..3 {
            assert_eq!(retry_after(&l, &1), None);
        }
        assert_eq!(retry_after(&l, &1), Some(1));
        assert_eq!(retry_after(&l, &2), None, "another key has its own budget");
        assert!(limiter::<i64>(RateLimit::default()).is_none());
    }
}
