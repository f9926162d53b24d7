//! What a builtin Vigil evaluates itself gives back, shared by every family of them
//! (`opa_builtins.rs`, `tokens.rs`, `digests.rs`, `cidr_merge.rs`).

use regorus::Value;

/// Why a call failed, as OPA's builtin would report it.
pub(crate) type Outcome = Result<Value, String>;

/// Starts the message of a failure that ends OPA's whole evaluation, not just the call (a Go
/// runtime error inside the builtin): Vigil's evaluation fails too, in any mode.
pub(crate) const ABORTS: &str = "runtime error: ";

/// A string operand, or OPA's error for operand `position` (counted from 1).
pub(crate) fn string_operand(value: &Value, position: usize) -> Result<&str, String> {
    value
        .as_string()
        .map(|s| s.as_ref())
        .map_err(|_| format!("operand {position} must be string"))
}
