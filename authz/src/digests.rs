//! OPA's `crypto.*` digest and HMAC builtins, which regorus's build for Vigil leaves out.
//!
//! Each is OPA's `topdown/crypto.go` over the RustCrypto hash crates: the string's UTF-8 bytes
//! in, lowercase hex out. `crypto.hmac.equal` compares in constant time, as Go's `hmac.Equal`.

use regorus::Value;
use sha2::Digest as _;
use subtle::ConstantTimeEq as _;

use crate::outcome::{string_operand, Outcome};

/// The builtins evaluated here, with their number of arguments.
pub(crate) const NAMES: &[(&str, u8)] = &[
    ("crypto.md5", 1),
    ("crypto.sha1", 1),
    ("crypto.sha256", 1),
    ("crypto.hmac.md5", 2),
    ("crypto.hmac.sha1", 2),
    ("crypto.hmac.sha256", 2),
    ("crypto.hmac.sha512", 2),
    ("crypto.hmac.equal", 2),
];

/// One call of a builtin of [`NAMES`]; `None` for a name that is not one.
pub(crate) fn evaluate(name: &str, args: &[Value]) -> Option<Outcome> {
    let arg = |i: usize| args.get(i).unwrap_or(&Value::Undefined);
    let digest = |hash: fn(&[u8]) -> Vec<u8>| -> Outcome {
        let text = string_operand(arg(0), 1)?;
        Ok(Value::from(hex::encode(hash(text.as_bytes()))))
    };
    let keyed = |mac: fn(&[u8], &[u8]) -> Vec<u8>| -> Outcome {
        let message = string_operand(arg(0), 1)?;
        let key = string_operand(arg(1), 2)?;
        Ok(Value::from(hex::encode(mac(
            key.as_bytes(),
            message.as_bytes(),
        ))))
    };
    Some(match name {
        "crypto.md5" => digest(|b| md5::Md5::digest(b).to_vec()),
        "crypto.sha1" => digest(|b| sha1::Sha1::digest(b).to_vec()),
        "crypto.sha256" => digest(|b| sha2::Sha256::digest(b).to_vec()),
        "crypto.hmac.md5" => keyed(hmac_of::<hmac::Hmac<md5::Md5>>),
        "crypto.hmac.sha1" => keyed(hmac_of::<hmac::Hmac<sha1::Sha1>>),
        "crypto.hmac.sha256" => keyed(hmac_of::<hmac::Hmac<sha2::Sha256>>),
        "crypto.hmac.sha512" => keyed(hmac_of::<hmac::Hmac<sha2::Sha512>>),
        "crypto.hmac.equal" => (|| {
            let a = string_operand(arg(0), 1)?;
            let b = string_operand(arg(1), 2)?;
            Ok(Value::from(bool::from(a.as_bytes().ct_eq(b.as_bytes()))))
        })(),
        _ => return None,
    })
}

fn hmac_of<M: hmac::Mac + hmac::digest::KeyInit>(key: &[u8], message: &[u8]) -> Vec<u8> {
    // HMAC takes keys of any length, so this never falls back.
    match <M as hmac::digest::KeyInit>::new_from_slice(key) {
        Ok(mut mac) => {
            mac.update(message);
            mac.finalize().into_bytes().to_vec()
        }
        Err(_) => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(name: &str, args: &[&str]) -> String {
        let args: Vec<Value> = args.iter().map(|a| Value::from(*a)).collect();
        let out = evaluate(name, &args).expect("known").expect("succeeds");
        out.as_string().expect("string").to_string()
    }

    #[test]
    fn digests_are_lowercase_hex() {
        assert_eq!(
            call("crypto.sha256", &["abc"]),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            call("crypto.md5", &[""]),
            "d41d8cd98f00b204e9800998ecf8427e"
        );
        assert_eq!(
            call(
                "crypto.hmac.sha256",
                &["The quick brown fox jumps over the lazy dog", "key"]
            ),
            "f7bc83f430538424b13298e6aa6fb143ef4d59a14946175997479dbc2d1a3cd8"
        );
    }
}
