//! Compat requests already resolved, by their query string.
//!
//! A compat request is parsed, validated, resolved ("latest" to absolute
//! versions) and hashed into a build key before anything else; a cache hit
//! then costs one hash-map lookup of the build. [`Resolutions`] remembers
//! the outcome per exact query string, so a repeated request skips all of
//! that work, until the *earliest* expiry of the version listings the
//! resolution used ([`crate::resolve::Resolver::spec_until`]): a new
//! "latest" is seen no later than without this cache. What a hit needs is
//! made once: the spec (to enqueue when the build is not there), the key,
//! and the header values of the answer.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::http::HeaderValue;
use kiln_domain::{BuildKey, BuildSpec};

use crate::state::FastMap;

/// The most query strings remembered.
const MAX_ENTRIES: usize = 16_384;
/// Longer query strings are resolved every time.
const MAX_QUERY: usize = 4096;

/// One resolved compat request.
#[derive(Debug)]
pub struct Resolved {
    pub spec: BuildSpec,
    pub key: BuildKey,
    /// Until when the resolution holds.
    pub until: Instant,
    /// `attachment; filename=<binary>_<os>_<arch>_custom`.
    pub disposition: HeaderValue,
    /// The immutable URL of the binary (the `Location` of a `HEAD`).
    pub binary_url: Option<HeaderValue>,
}

impl Resolved {
    /// Whole seconds left of its lifetime (for `Cache-Control: max-age`).
    pub fn secs_left(&self, now: Instant) -> u64 {
        self.until.saturating_duration_since(now).as_secs()
    }
}

/// Query string → resolution, each until it expires.
#[derive(Debug, Default)]
pub struct Resolutions {
    map: Mutex<FastMap<Box<str>, Arc<Resolved>>>,
}

impl Resolutions {
    /// The resolution of `query`, if one is remembered and still holds.
    pub fn get(&self, query: &str) -> Option<Arc<Resolved>> {
        let map = self.map.lock().expect("resolutions lock");
        map.get(query).filter(|r| r.until > Instant::now()).cloned()
    }

    /// Remember `resolved` for `query` (unless the query is too long).
    pub fn insert(&self, query: &str, resolved: Resolved) -> Arc<Resolved> {
        let resolved = Arc::new(resolved);
        if query.len() > MAX_QUERY {
            return resolved;
        }
        let mut map = self.map.lock().expect("resolutions lock");
        if map.len() >= MAX_ENTRIES {
            let now = Instant::now();
            map.retain(|_, r| r.until > now);
            if map.len() >= MAX_ENTRIES {
                map.clear();
            }
        }
        map.insert(query.into(), resolved.clone());
        resolved
    }

    /// Forget every resolution (tests; a changed configuration).
    pub fn clear(&self) {
        self.map.lock().expect("resolutions lock").clear();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn resolved(until: Instant) -> Resolved {
        let spec = BuildSpec {
            recipe: "r".into(),
            recipe_revision: "x".into(),
            version: kiln_domain::Version::parse("version", "v1.0.0").unwrap(),
            platform: "linux/amd64".parse().unwrap(),
            plugins: vec![],
            replacements: vec![],
        };
        Resolved {
            key: spec.key(),
            spec,
            until,
            disposition: HeaderValue::from_static("attachment; filename=r_linux_amd64_custom"),
            binary_url: None,
        }
    }

    #[test]
    fn a_resolution_holds_until_it_expires() {
        let r = Resolutions::default();
        let now = Instant::now();
        r.insert("os=linux", resolved(now + Duration::from_secs(60)));
        r.insert("os=darwin", resolved(now));
        assert!(r.get("os=linux").is_some());
        assert!(r.get("os=darwin").is_none(), "expired");
        assert!(r.get("os=linux&x=1").is_none(), "only the exact query string");
        assert_eq!(r.get("os=linux").unwrap().secs_left(now), 60);
        let long = "p=".repeat(MAX_QUERY);
        r.insert(&long, resolved(now + Duration::from_secs(60)));
        assert!(r.get(&long).is_none(), "too long to keep");
    }
}
