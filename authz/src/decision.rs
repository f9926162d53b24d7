//! Interpreting the decision rule's value the way OPA-Envoy does.

use regorus::Value;
use serde::Serialize;

/// Dynamic metadata a decision hands to the proxy (OPA-Envoy's `dynamic_metadata`: any object).
pub type DynamicMetadata = serde_json::Map<String, serde_json::Value>;

/// The outcome of evaluating a bundle for one request or connection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "result", rename_all = "lowercase")]
pub enum Decision {
    /// Let the request through, changing it as the policy asked.
    Allow {
        /// Headers to add to the request sent upstream (the decision's `headers`).
        request_headers_to_add: Vec<(String, String)>,
        /// Headers to strip from the request sent upstream.
        request_headers_to_remove: Vec<String>,
        /// Headers to add to the response sent back to the client.
        response_headers_to_add: Vec<(String, String)>,
        /// Query parameters to drop from the request sent upstream, by (decoded) name.
        query_parameters_to_remove: Vec<String>,
        /// Query parameters to set on the request sent upstream, replacing any of the same
        /// name (for one name given several times, the last value wins, as in Envoy).
        query_parameters_to_set: Vec<(String, String)>,
        /// The policy's `dynamic_metadata`, for the decision log.
        #[serde(skip_serializing_if = "Option::is_none")]
        dynamic_metadata: Option<DynamicMetadata>,
    },
    /// Refuse the request with this response.
    Deny {
        /// HTTP status (403 unless the policy set `http_status`).
        status: u16,
        /// Response body.
        body: String,
        /// Response headers.
        headers: Vec<(String, String)>,
        /// Why, for logs: the policy's body, or which rule said no.
        reason: String,
        /// The policy's `dynamic_metadata`, for the decision log.
        #[serde(skip_serializing_if = "Option::is_none")]
        dynamic_metadata: Option<DynamicMetadata>,
    },
    /// Evaluation failed, the request could not be parsed, or the decision was undefined or
    /// malformed. The caller fails closed, with a status distinct from a denial (e.g. 500).
    Error {
        /// What went wrong.
        reason: String,
    },
}

impl Decision {
    /// An allow with no header changes.
    pub fn allow() -> Decision {
        Decision::Allow {
            request_headers_to_add: Vec::new(),
            request_headers_to_remove: Vec::new(),
            response_headers_to_add: Vec::new(),
            query_parameters_to_remove: Vec::new(),
            query_parameters_to_set: Vec::new(),
            dynamic_metadata: None,
        }
    }

    /// Whether the request may proceed.
    pub fn allowed(&self) -> bool {
        matches!(self, Decision::Allow { .. })
    }

    /// `"allow"`, `"deny"` or `"error"`.
    pub fn outcome(&self) -> &'static str {
        match self {
            Decision::Allow { .. } => "allow",
            Decision::Deny { .. } => "deny",
            Decision::Error { .. } => "error",
        }
    }

    /// The denial's HTTP status, if this is a denial.
    pub fn http_status(&self) -> Option<u16> {
        match self {
            Decision::Deny { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The reason of a denial or error (empty for an allow).
    pub fn reason(&self) -> &str {
        match self {
            Decision::Allow { .. } => "",
            Decision::Deny { reason, .. } | Decision::Error { reason } => reason,
        }
    }

    /// Which rule a denial names, for metrics and replay reports: the rule-like word before
    /// the first `:` of its reason (the convention of reasons such as `allowed_callers: web
    /// may not call payments`), else the decision rule itself (a `false` or undefined
    /// `allow` is the default refusing). `None` unless this is a denial.
    pub fn denied_by<'r>(&'r self, rule: &'r str) -> Option<&'r str> {
        match self {
            Decision::Deny { reason, .. } => Some(rule_named_by(reason, rule)),
            _ => None,
        }
    }

    /// The policy's `dynamic_metadata`, if it gave one.
    pub fn dynamic_metadata(&self) -> Option<&DynamicMetadata> {
        match self {
            Decision::Allow {
                dynamic_metadata, ..
            }
            | Decision::Deny {
                dynamic_metadata, ..
            } => dynamic_metadata.as_ref(),
            Decision::Error { .. } => None,
        }
    }

    /// Interprets a decision value as OPA-Envoy does: a boolean, or an object `{allowed,
    /// http_status, body, headers, response_headers_to_add, request_headers_to_remove,
    /// query_parameters_to_remove, query_parameters_to_set, dynamic_metadata}`. Header fields
    /// are an object (values a string or an array of strings) or an array of such objects;
    /// `query_parameters_to_set` is an object of the same shape or an array of `{key, value}`
    /// objects. A field of the wrong type makes the decision an error, as in OPA-Envoy.
    pub fn from_value(value: &Value, rule: &str) -> Decision {
        match value {
            Value::Bool(true) => Decision::allow(),
            Value::Bool(false) => Decision::Deny {
                status: 403,
                body: String::new(),
                headers: Vec::new(),
                reason: format!("{rule} is false"),
                dynamic_metadata: None,
            },
            Value::Object(_) => from_object(value, rule).unwrap_or_else(|reason| Decision::Error {
                reason: format!("{rule}: {reason}"),
            }),
            Value::Undefined => Decision::Error {
                reason: format!("{rule} is undefined"),
            },
            other => Decision::Error {
                reason: format!(
                    "{rule} must be a boolean or an object, got {}",
                    type_name(other)
                ),
            },
        }
    }
}

/// The fields of an OPA-Envoy decision object (looked up in one pass: indexing a `Value` by
/// `&str` would allocate a key per lookup, on every request).
#[derive(Default)]
struct Fields<'a> {
    allowed: Option<&'a Value>,
    headers: Option<&'a Value>,
    request_headers_to_remove: Option<&'a Value>,
    response_headers_to_add: Option<&'a Value>,
    http_status: Option<&'a Value>,
    body: Option<&'a Value>,
    reason: Option<&'a Value>,
    query_parameters_to_remove: Option<&'a Value>,
    query_parameters_to_set: Option<&'a Value>,
    dynamic_metadata: Option<&'a Value>,
}

fn fields(value: &Value) -> Fields<'_> {
    let mut f = Fields::default();
    if let Value::Object(object) = value {
        for (key, v) in object.iter() {
            let Value::String(key) = key else { continue };
            let slot = match key.as_ref() {
                "allowed" => &mut f.allowed,
                "headers" => &mut f.headers,
                "request_headers_to_remove" => &mut f.request_headers_to_remove,
                "response_headers_to_add" => &mut f.response_headers_to_add,
                "http_status" => &mut f.http_status,
                "body" => &mut f.body,
                "reason" => &mut f.reason,
                "query_parameters_to_remove" => &mut f.query_parameters_to_remove,
                "query_parameters_to_set" => &mut f.query_parameters_to_set,
                "dynamic_metadata" => &mut f.dynamic_metadata,
                _ => continue,
            };
            *slot = Some(v);
        }
    }
    f
}

fn from_object(value: &Value, rule: &str) -> Result<Decision, String> {
    let f = fields(value);
    let field = |v: Option<&Value>| v.cloned().unwrap_or(Value::Undefined);
    let allowed = match field(f.allowed) {
        Value::Bool(b) => b,
        Value::Undefined => return Err("decision object has no \"allowed\" field".into()),
        other => {
            return Err(format!(
                "\"allowed\" must be a boolean, got {}",
                type_name(&other)
            ))
        }
    };
    let headers = header_pairs(&field(f.headers), "headers")?;
    let dynamic_metadata = match field(f.dynamic_metadata) {
        Value::Undefined => None,
        v @ Value::Object(_) => match serde_json::to_value(&v) {
            Ok(serde_json::Value::Object(map)) => Some(map),
            _ => return Err("\"dynamic_metadata\" cannot be represented as JSON".into()),
        },
        other => {
            return Err(format!(
                "\"dynamic_metadata\" must be an object, got {}",
                type_name(&other)
            ))
        }
    };
    if allowed {
        return Ok(Decision::Allow {
            request_headers_to_add: headers,
            request_headers_to_remove: strings(
                &field(f.request_headers_to_remove),
                "request_headers_to_remove",
            )?,
            response_headers_to_add: header_pairs(
                &field(f.response_headers_to_add),
                "response_headers_to_add",
            )?,
            query_parameters_to_remove: strings(
                &field(f.query_parameters_to_remove),
                "query_parameters_to_remove",
            )?,
            query_parameters_to_set: query_pairs(&field(f.query_parameters_to_set))?,
            dynamic_metadata,
        });
    }
    let status = match &field(f.http_status) {
        Value::Undefined => 403,
        v => match v.as_u64() {
            Ok(n) if (100..=599).contains(&n) => n as u16,
            _ => return Err(format!("\"http_status\" is not a valid HTTP status: {v}")),
        },
    };
    let body = match &field(f.body) {
        Value::Undefined => String::new(),
        v => string_of(v, "body")?,
    };
    // Not part of OPA-Envoy's object, but lets a policy give logs a reason apart from the body.
    let reason = match &field(f.reason) {
        Value::String(s) => s.to_string(),
        _ if !body.is_empty() => body.clone(),
        _ => format!("{rule} denied the request (status {status})"),
    };
    Ok(Decision::Deny {
        status,
        body,
        headers,
        reason,
        dynamic_metadata,
    })
}

/// An array (or set) of strings; absent is empty.
fn strings(value: &Value, field: &str) -> Result<Vec<String>, String> {
    match value {
        Value::Undefined => Ok(Vec::new()),
        Value::Array(items) => items.iter().map(|v| string_of(v, field)).collect(),
        Value::Set(items) => items.iter().map(|v| string_of(v, field)).collect(),
        other => Err(format!(
            "\"{field}\" must be an array of strings, got {}",
            type_name(other)
        )),
    }
}

/// Header fields: an object, or an array of objects, mapping names to a string or to an array
/// of strings (one header line each).
fn header_pairs(value: &Value, field: &str) -> Result<Vec<(String, String)>, String> {
    let mut pairs = Vec::new();
    match value {
        Value::Undefined => {}
        Value::Object(_) => name_value_pairs(value, field, &mut pairs)?,
        Value::Array(items) => {
            for item in items.iter() {
                name_value_pairs(item, field, &mut pairs)?;
            }
        }
        Value::Set(items) => {
            for item in items.iter() {
                name_value_pairs(item, field, &mut pairs)?;
            }
        }
        other => {
            return Err(format!(
                "\"{field}\" must be an object or an array of objects, got {}",
                type_name(other)
            ))
        }
    }
    Ok(pairs)
}

/// `query_parameters_to_set`: an object like a header field, or an array of `{"key": k,
/// "value": v}` objects (Envoy's `QueryParameter`).
fn query_pairs(value: &Value) -> Result<Vec<(String, String)>, String> {
    let field = "query_parameters_to_set";
    let key_value = |item: &Value| -> Result<(String, String), String> {
        match (&item["key"], &item["value"]) {
            (Value::String(k), Value::String(v)) => Ok((k.to_string(), v.to_string())),
            _ => Err(format!(
                "\"{field}\" array items must be {{\"key\": string, \"value\": string}} objects"
            )),
        }
    };
    match value {
        Value::Array(items) => items.iter().map(key_value).collect(),
        Value::Set(items) => items.iter().map(key_value).collect(),
        Value::Object(_) => {
            let mut pairs = Vec::new();
            name_value_pairs(value, field, &mut pairs)?;
            Ok(pairs)
        }
        Value::Undefined => Ok(Vec::new()),
        other => Err(format!(
            "\"{field}\" must be an object or an array, got {}",
            type_name(other)
        )),
    }
}

/// One object of names to a string or an array (or set) of strings.
fn name_value_pairs(
    value: &Value,
    field: &str,
    pairs: &mut Vec<(String, String)>,
) -> Result<(), String> {
    let Value::Object(object) = value else {
        return Err(format!(
            "\"{field}\" must hold objects, got {}",
            type_name(value)
        ));
    };
    for (name, v) in object.iter_sorted() {
        let name = string_of(name, field)?;
        match v {
            Value::Array(values) => {
                for v in values.iter() {
                    pairs.push((name.clone(), string_of(v, field)?));
                }
            }
            Value::Set(values) => {
                for v in values.iter() {
                    pairs.push((name.clone(), string_of(v, field)?));
                }
            }
            v => pairs.push((name, string_of(v, field)?)),
        }
    }
    Ok(())
}

fn string_of(value: &Value, field: &str) -> Result<String, String> {
    match value {
        Value::String(s) => Ok(s.to_string()),
        other => Err(format!(
            "\"{field}\" must hold strings, got {}",
            type_name(other)
        )),
    }
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Set(_) => "set",
        Value::Object(_) => "object",
        Value::Undefined => "undefined",
    }
}

/// The rule a denial's reason names (see [`Decision::denied_by`]).
pub fn rule_named_by<'r>(reason: &'r str, rule: &'r str) -> &'r str {
    match reason.split_once(':') {
        Some((head, _))
            if !head.is_empty()
                && head.len() <= 64
                && head
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_.-[]\"".contains(&b)) =>
        {
            head
        }
        _ => rule,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_denial_is_counted_under_the_rule_its_reason_names() {
        let rule = "data.vigil.authz.allow";
        assert_eq!(
            rule_named_by("allowed_callers: web may not call payments", rule),
            "allowed_callers"
        );
        assert_eq!(rule_named_by("data.vigil.authz.allow is false", rule), rule);
        assert_eq!(
            rule_named_by("a caller in ns x: no", rule),
            rule,
            "not a rule name"
        );
        assert_eq!(rule_named_by(": nothing before", rule), rule);
    }
}
