//! Measurements of `prometheus` checks: an instant query of the Prometheus HTTP API
//! (`GET <address>/api/v1/query`) that yields one sample. Whatever is no number (the server
//! unreachable or failing, an empty result, several samples, NaN) is no signal, never a failure
//! (see `plan::checks`).

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde_json::Value;

use crate::api::PrometheusCheck;
use crate::plan::checks::Signal;

/// How long one query may take: a slow Prometheus is no signal, not a stalled sync.
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(5);

/// The HTTP client of the checks.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder().timeout(QUERY_TIMEOUT).build().expect("an HTTP client with rustls")
}

/// Measures `check` now, its query already substituted.
pub async fn measure(http: &reqwest::Client, check: &PrometheusCheck, query: &str, now: &Time) -> Signal {
    let url = format!("{}/api/v1/query", check.address.trim_end_matches('/'));
    let time = format!("{:.3}", now.0.as_millisecond() as f64 / 1000.0);
    let response = match http.get(&url).query(&[("query", query), ("time", time.as_str())]).send().await {
        Ok(response) => response,
        Err(error) => return Signal::Unavailable(format!("{url}: {}", error_text(&error))),
    };
    let status = response.status();
    match response.json::<Value>().await {
        Ok(body) => signal(&body),
        Err(_) => Signal::Unavailable(format!("{url} answered {status} without a JSON body")),
    }
}

/// The error and its sources, which say why (refused, timed out, a DNS failure).
fn error_text(error: &reqwest::Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The value of a query's answer: a vector of one sample, or a scalar.
pub fn signal(body: &Value) -> Signal {
    if body["status"] != "success" {
        let error = body["error"].as_str().unwrap_or("no error given");
        return Signal::Unavailable(format!("the query failed: {error}"));
    }
    let data = &body["data"];
    let sample = match data["resultType"].as_str() {
        Some("vector") => match data["result"].as_array().map(Vec::as_slice) {
            Some([one]) => &one["value"],
            Some([]) => return Signal::Unavailable("an empty result".into()),
            Some(many) => return Signal::Unavailable(format!("{} samples, not one", many.len())),
            None => return Signal::Unavailable("a vector without a result".into()),
        },
        Some("scalar") => &data["result"],
        other => return Signal::Unavailable(format!("a result of type {}", other.unwrap_or("none"))),
    };
    match sample[1].as_str().map(str::parse::<f64>) {
        Some(Ok(value)) if value.is_finite() => Signal::Value(value),
        Some(Ok(value)) => Signal::Unavailable(format!("the value {value}")),
        _ => Signal::Unavailable("a sample without a value".into()),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn vector(values: &[&str]) -> Value {
        let result: Vec<Value> = values.iter().map(|v| json!({"metric": {}, "value": [1.7e9, v]})).collect();
        json!({"status": "success", "data": {"resultType": "vector", "result": result}})
    }

    #[test]
    fn one_sample_is_a_value_anything_else_is_no_signal() {
        assert_eq!(signal(&vector(&["0.25"])), Signal::Value(0.25));
        let scalar = json!({"status": "success", "data": {"resultType": "scalar", "result": [1.7e9, "3"]}});
        assert_eq!(signal(&scalar), Signal::Value(3.0));
        for (body, why) in [
            (vector(&[]), "an empty result"),
            (vector(&["1", "2"]), "2 samples"),
            (vector(&["NaN"]), "NaN"),
            (vector(&["+Inf"]), "inf"),
            (json!({"status": "error", "error": "parse error"}), "parse error"),
        ] {
            let Signal::Unavailable(message) = signal(&body) else { panic!("{body}") };
            assert!(message.contains(why), "{message}");
        }
    }
}
