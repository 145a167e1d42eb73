//! The one way rows are MACed: HMAC-SHA256 under the store's audit key over a domain string
//! and each field length-prefixed, so no two different field lists share a MAC.

use ring::hmac;

/// Hex HMAC-SHA256 of `domain` and `fields` under `key`.
pub(crate) fn fields_mac(key: &[u8], domain: &[u8], fields: &[&str]) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, key);
    let mut ctx = hmac::Context::with_key(&key);
    ctx.update(domain);
    for field in fields {
        let len = u32::try_from(field.len()).unwrap_or(u32::MAX);
        ctx.update(&len.to_be_bytes());
        ctx.update(field.as_bytes());
    }
    ctx.sign()
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
