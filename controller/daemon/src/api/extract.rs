//! The API's extractors: axum's `Path`, `Query` and `Json` with every rejection
//! answered as the documented error body (docs/API.md, "Errors"), and JSON bodies
//! refused when an object gives a key twice, at any depth (serde_json alone keeps the
//! last value, so `{"intent": {"mem": "1G", "mem": "8G"}}` would silently mean 8G).

use std::collections::HashSet;
use std::fmt;

use axum::body::Bytes;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::de::{self, DeserializeOwned, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde::{Deserializer, Serialize};

use super::ApiError;

/// A path parameter; a value that does not parse is a `bad_path` error.
#[derive(Debug)]
pub struct Path<T>(pub T);

impl<T, S> FromRequestParts<S> for Path<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let axum::extract::Path(v) = axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map_err(path_error)?;
        Ok(Path(v))
    }
}

/// A query string; an unknown field or a value that does not parse is `bad_query`.
#[derive(Debug)]
pub struct Query<T>(pub T);

impl<T, S> FromRequestParts<S> for Query<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let axum::extract::Query(v) = axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map_err(query_error)?;
        Ok(Query(v))
    }
}

/// A JSON body (content type `application/json` or `application/*+json`), or a JSON
/// reply. A body that is not JSON of the expected shape, or that gives a key twice,
/// is `bad_json`.
#[derive(Debug)]
pub struct Json<T>(pub T);

impl<T, S> FromRequest<S> for Json<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        if !is_json(req.headers()) {
            return Err(bad_json(
                "expected a request with `content-type: application/json`",
            ));
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(e.status(), "too_large", e.body_text())
            } else {
                bad_json(e.body_text())
            }
        })?;
        // The typed parse first: its messages name the field (unknown, wrong type).
        let axum::Json(value) =
            axum::Json::<T>::from_bytes(&bytes).map_err(|e| bad_json(e.body_text()))?;
        check_unique_keys(&bytes).map_err(bad_json)?;
        Ok(Json(value))
    }
}

impl<T: Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

fn bad_json(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "bad_json", message)
}

fn path_error(e: PathRejection) -> ApiError {
    // A route whose handler asks for parameters it does not have is our bug, not the
    // client's (axum says 500); anything else is a parameter that did not parse.
    if e.status().is_server_error() {
        ApiError::new(e.status(), "internal", e.body_text())
    } else {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_path", e.body_text())
    }
}

fn query_error(e: QueryRejection) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "bad_query", e.body_text())
}

/// `application/json`, or a `+json` subtype of `application/`; parameters ignored.
fn is_json(headers: &HeaderMap) -> bool {
    let Some(value) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = value
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || essence
            .strip_prefix("application/")
            .is_some_and(|sub| sub.ends_with("+json"))
}

/// Fails on the first object that gives a key twice, naming the key and where it is
/// (`key `mem` given twice in `intent``).
pub fn check_unique_keys(body: &[u8]) -> Result<(), String> {
    let mut de = serde_json::Deserializer::from_slice(body);
    UniqueKeys { at: String::new() }
        .deserialize(&mut de)
        .and_then(|()| de.end())
        .map_err(|e| e.to_string())
}

/// Walks one JSON value; `at` is where it sits (`intent`, `command[2]`), for errors.
struct UniqueKeys {
    at: String,
}

impl UniqueKeys {
    fn child(&self, step: fmt::Arguments<'_>) -> UniqueKeys {
        let at = if self.at.is_empty() {
            step.to_string()
        } else {
            format!("{}.{step}", self.at)
        };
        UniqueKeys { at }
    }
}

impl<'de> DeserializeSeed<'de> for UniqueKeys {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for UniqueKeys {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }

    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }

    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }

    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }

    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }

    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut i = 0usize;
        while seq
            .next_element_seed(UniqueKeys {
                at: format!("{}[{i}]", self.at),
            })?
            .is_some()
        {
            i += 1;
        }
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut seen = HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            let child = self.child(format_args!("{key}"));
            if !seen.insert(key) {
                let shown: String = child.at.chars().take(200).collect();
                return Err(de::Error::custom(format!("key `{shown}` given twice")));
            }
            map.next_value_seed(child)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicate_keys_are_found_at_any_depth() {
        let ok = [
            r#"{"a": 1, "b": {"a": 1}}"#,
            r#"[{"a": 1}, {"a": 2}]"#,
            r#"{"intent": {"mem": "1G", "pids": 3}, "command": ["x", "x"]}"#,
            "null",
        ];
        for text in ok {
            assert_eq!(check_unique_keys(text.as_bytes()), Ok(()), "{text}");
        }
        let twice = [
            (r#"{"a": 1, "a": 1}"#, "key `a` given twice"),
            (
                r#"{"intent": {"mem": "1G", "mem": "8G"}}"#,
                "key `intent.mem` given twice",
            ),
            (
                r#"{"l": [0, {"x": {"k": 1, "k": 2}}]}"#,
                "key `l[1].x.k` given twice",
            ),
        ];
        for (text, needle) in twice {
            let err = check_unique_keys(text.as_bytes()).expect_err(text);
            assert!(err.contains(needle), "{text} → {err}");
        }
        assert!(check_unique_keys(b"{\"a\": 1} trailing").is_err());
    }

    #[test]
    fn json_content_types() {
        let with = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::CONTENT_TYPE, v.parse().unwrap());
            h
        };
        for ok in [
            "application/json",
            "application/json; charset=utf-8",
            "Application/JSON",
            "application/problem+json",
        ] {
            assert!(is_json(&with(ok)), "{ok}");
        }
        for bad in [
            "text/plain",
            "application/jsonx",
            "text/json",
            "application/x-www-form-urlencoded",
        ] {
            assert!(!is_json(&with(bad)), "{bad}");
        }
        assert!(!is_json(&HeaderMap::new()));
    }
}
