//! Query strings parsed from raw bytes.
//!
//! The compat API repeats keys (`p=a&p=b`) and users paste anything into a
//! URL, so the query is split and percent-decoded here rather than by a
//! typed extractor: a value that is not UTF-8 after decoding, or a query
//! with absurdly many parameters, is a `400` naming the parameter.

use percent_encoding::percent_decode;

use crate::error::ApiError;

/// The most parameters one query may carry.
pub const MAX_PARAMS: usize = 16384;

/// A decoded query string: `(name, value)` pairs in order.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RawQuery {
    pairs: Vec<(String, String)>,
}

impl RawQuery {
    /// Split `query` (the part after `?`, if any) on `&` and `=`, decode `+`
    /// and `%XX`, and refuse what is not UTF-8.
    pub fn parse(query: Option<&str>) -> Result<Self, ApiError> {
        let mut pairs = Vec::new();
        for part in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            if pairs.len() == MAX_PARAMS {
                return Err(ApiError::bad_request(
                    "query",
                    "too_many_parameters",
                    format!("a query may carry at most {MAX_PARAMS} parameters"),
                ));
            }
            let (name, value) = part.split_once('=').unwrap_or((part, ""));
            let name = decode(name).map_err(|_| {
                ApiError::bad_request("query", "invalid_encoding", "a parameter name is not valid UTF-8")
            })?;
            let value = decode(value).map_err(|_| {
                ApiError::bad_request(
                    name.chars().take(32).collect::<String>(),
                    "invalid_encoding",
                    format!("the value of {:?} is not valid UTF-8 once percent-decoded", truncate(&name)),
                )
            })?;
            pairs.push((name, value));
        }
        Ok(Self { pairs })
    }

    /// The first value of `name`.
    pub fn first(&self, name: &str) -> Option<&str> {
        self.pairs.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// Every value of `name`, in order.
    pub fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.pairs.iter().filter(move |(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// A boolean flag: present and not `0`/`false`/`no`.
    pub fn flag(&self, name: &str) -> bool {
        self.first(name).is_some_and(|v| !matches!(v, "0" | "false" | "no"))
    }
}

fn decode(s: &str) -> Result<String, std::str::Utf8Error> {
    let plus = s.replace('+', " ");
    percent_decode(plus.as_bytes()).decode_utf8().map(|c| c.into_owned())
}

fn truncate(s: &str) -> String {
    s.chars().take(32).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_keys_plus_and_percent() {
        let q = RawQuery::parse(Some("p=a%2Fb&p=c+d&os=linux&flag&x=")).unwrap();
        assert_eq!(q.all("p").collect::<Vec<_>>(), ["a/b", "c d"]);
        assert_eq!(q.first("os"), Some("linux"));
        assert_eq!(q.first("flag"), Some(""));
        assert!(q.flag("flag"));
        assert!(!q.flag("missing"));
        assert_eq!(q.first("x"), Some(""));
    }

    #[test]
    fn non_utf8_is_a_400_naming_the_parameter() {
        let e = RawQuery::parse(Some("os=linux&p=%FF%FE")).unwrap_err();
        assert_eq!(e.status.as_u16(), 400);
        assert_eq!(e.field(), Some("p"));
        assert_eq!(e.code, "invalid_encoding");
        assert!(RawQuery::parse(Some("%C3%28=1")).is_err());
    }

    #[test]
    fn too_many_parameters() {
        let q = "p=x&".repeat(MAX_PARAMS + 1);
        assert_eq!(RawQuery::parse(Some(&q)).unwrap_err().code, "too_many_parameters");
    }
}
