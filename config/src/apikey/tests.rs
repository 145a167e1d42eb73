use proptest::prelude::*;

use super::*;

/// Every character a substitution tries: base62, and a few that are never valid.
const SUBSTITUTES: &str =
    "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz-_ +/=.é\0";
const BASE62: &str = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// A valid key with a fixed body, so the mutation tests are deterministic.
fn key_with_body(body: &str) -> String {
    let signed = format!("{API_KEY_PREFIX}{body}");
    let sum = checksum(signed.as_bytes());
    format!("{signed}{}", str::from_utf8(&sum).unwrap())
}

/// A mixed-alphabet body built at run time (no key-shaped literal is committed).
fn mixed_body() -> String {
    (0..24)
        .map(|i| char::from(BASE62.as_bytes()[(i * 37 + 11) % 62]))
        .collect()
}

fn fixed_keys() -> Vec<String> {
    vec![
        key_with_body("000000000000000000000000"),
        key_with_body("zzzzzzzzzzzzzzzzzzzzzzzz"),
        key_with_body(&mixed_body()),
    ]
}

fn api_key_secret(bytes: &[u8]) -> ApiKeySecret {
    ApiKeySecret::from_checked(Zeroizing::new(bytes.to_vec()))
}

/// Reference checksum written independently: SHA-256, big-endian u32, base62 by u64
/// arithmetic over the alphabet string.
fn reference_checksum(signed: &str) -> String {
    let hash = digest::digest(&SHA256, signed.as_bytes());
    let h = hash.as_ref();
    let mut n = u64::from(u32::from_be_bytes([h[0], h[1], h[2], h[3]]));
    let mut digits = Vec::new();
    for _ in 0..6 {
        digits.push(BASE62.as_bytes()[(n % 62) as usize]);
        n /= 62;
    }
    digits.reverse();
    String::from_utf8(digits).unwrap()
}

#[test]
fn generate_then_parse_round_trips() {
    for _ in 0..50 {
        let key = ApiKey::generate().unwrap();
        let text = key.expose_secret();
        assert_eq!(text.len(), API_KEY_LEN);
        assert_eq!(API_KEY_LEN, 41);
        assert!(text.starts_with(API_KEY_PREFIX));
        let parsed = ApiKey::parse(text).unwrap();
        assert_eq!(parsed.expose_secret(), text);
    }
}

#[test]
fn generated_keys_differ_and_use_the_whole_alphabet() {
    let mut seen = std::collections::BTreeSet::new();
    let mut keys = std::collections::BTreeSet::new();
    for _ in 0..200 {
        let key = ApiKey::generate().unwrap();
        let body = &key.expose_secret()[API_KEY_PREFIX.len()..][..BODY_LEN];
        seen.extend(body.chars());
        keys.insert(key.expose_secret().to_owned());
    }
    assert_eq!(keys.len(), 200);
    // 4,800 draws from 62 characters: missing any one has odds around 62 × e^-77.
    assert_eq!(seen.len(), 62);
}

#[test]
fn checksum_matches_the_reference_and_a_pinned_value() {
    for key in fixed_keys() {
        let (signed, sum) = key.split_at(API_KEY_LEN - CHECKSUM_LEN);
        assert_eq!(sum, reference_checksum(signed));
    }
    // Pinned so the format cannot drift: the checksum was computed with Python's hashlib.
    let key = key_with_body(&mixed_body());
    assert_eq!(&key[..API_KEY_PREFIX.len()], "sk-krouter-");
    assert_eq!(&key[API_KEY_LEN - CHECKSUM_LEN..], "0JYp7L");
}

#[test]
fn every_single_substitution_fails() {
    for key in fixed_keys() {
        ApiKey::parse(&key).unwrap();
        for (pos, original) in key.char_indices() {
            for sub in SUBSTITUTES.chars().filter(|&c| c != original) {
                let mut mutated = key.clone();
                mutated.replace_range(pos..pos + 1, sub.encode_utf8(&mut [0; 4]));
                assert!(
                    ApiKey::parse(&mutated).is_err(),
                    "substituting {sub:?} at {pos} was accepted"
                );
            }
        }
    }
}

#[test]
fn every_single_deletion_fails() {
    for key in fixed_keys() {
        for pos in 0..key.len() {
            let mut mutated = key.clone();
            mutated.remove(pos);
            let err = ApiKey::parse(&mutated).unwrap_err();
            let expected = if pos < API_KEY_PREFIX.len() {
                ApiKeyError::WrongPrefix
            } else {
                ApiKeyError::WrongLength
            };
            assert_eq!(err, expected, "deleting at {pos}");
        }
    }
}

#[test]
fn every_adjacent_transposition_fails() {
    for key in fixed_keys() {
        let bytes = key.as_bytes();
        for pos in 0..key.len() - 1 {
            if bytes[pos] == bytes[pos + 1] {
                continue;
            }
            let mut mutated = bytes.to_vec();
            mutated.swap(pos, pos + 1);
            let mutated = String::from_utf8(mutated).unwrap();
            assert!(
                ApiKey::parse(&mutated).is_err(),
                "swapping {pos} and {} was accepted",
                pos + 1
            );
        }
    }
}

#[test]
fn parse_names_what_is_wrong() {
    let good = &fixed_keys()[2];
    let body = &good[API_KEY_PREFIX.len()..];
    let cases: Vec<(String, ApiKeyError)> = vec![
        (String::new(), ApiKeyError::WrongPrefix),
        ("sk-".to_owned(), ApiKeyError::WrongPrefix),
        (format!("sk-other-{body}"), ApiKeyError::WrongPrefix),
        (format!("SK-KROUTER-{body}"), ApiKeyError::WrongPrefix),
        (format!(" {good}"), ApiKeyError::WrongPrefix),
        (API_KEY_PREFIX.to_owned(), ApiKeyError::WrongLength),
        (format!("{good}\n"), ApiKeyError::WrongLength),
        (format!("{good}0"), ApiKeyError::WrongLength),
        (good[..API_KEY_LEN - 1].to_owned(), ApiKeyError::WrongLength),
        (
            format!("{API_KEY_PREFIX}{}-", &body[1..]),
            ApiKeyError::BadCharacter,
        ),
        (
            format!("{API_KEY_PREFIX}{}_{}", &body[..10], &body[11..]),
            ApiKeyError::BadCharacter,
        ),
        (
            format!("{API_KEY_PREFIX}{}", "0".repeat(30)),
            ApiKeyError::BadChecksum,
        ),
    ];
    for (text, expected) in cases {
        assert_eq!(ApiKey::parse(&text).unwrap_err(), expected, "{text:?}");
    }
}

#[test]
fn errors_never_contain_the_text() {
    let key = fixed_keys().remove(2);
    let mut typo = key.clone();
    typo.replace_range(20..21, "Z");
    for text in [typo, format!("{key}x"), format!("x{key}")] {
        let message = ApiKey::parse(&text).unwrap_err().to_string();
        assert!(!message.contains(&key[11..20]), "{message}");
        assert!(!message.contains('\n'), "{message}");
    }
}

#[test]
fn debug_of_a_key_is_redacted() {
    let key = ApiKey::generate().unwrap();
    let shown = format!("{key:?}");
    assert_eq!(shown, "ApiKey([redacted])");
    assert!(!shown.contains(&key.expose_secret()[API_KEY_PREFIX.len()..]));
    let alternate = format!("{key:#?}");
    assert!(!alternate.contains(&key.expose_secret()[API_KEY_PREFIX.len()..]));
}

#[test]
fn key_ids_round_trip_and_reject_other_shapes() {
    let id = KeyId::generate().unwrap();
    assert_eq!(id.as_str().len(), KEY_ID_LEN);
    assert_eq!(KeyId::parse(id.as_str()).unwrap(), id);
    assert_eq!(id.to_string(), id.as_str());
    assert_ne!(KeyId::generate().unwrap(), id);
    KeyId::parse("kid_0123456789Az").unwrap();
    for bad in [
        "",
        "kid_",
        "kid_0123456789A",
        "kid_0123456789Azz",
        "kid-0123456789Az",
        "KID_0123456789Az",
        "kid_0123456789A-",
        "kid_0123456789Aé",
        " kid_0123456789Az",
        "sk-krouter-0123456789Az",
    ] {
        assert_eq!(
            KeyId::parse(bad).unwrap_err(),
            ApiKeyError::BadKeyId,
            "{bad:?}"
        );
    }
}

#[test]
fn digest_depends_on_the_secret_and_the_key() {
    let secret = api_key_secret(b"0123456789abcdef0123456789abcdef");
    let other_secret = api_key_secret(b"0123456789abcdef0123456789abcdeF");
    let key = ApiKey::parse(&fixed_keys()[0]).unwrap();
    let other_key = ApiKey::parse(&fixed_keys()[1]).unwrap();
    let digest = KeyDigest::of(&secret, &key);
    assert_eq!(digest, KeyDigest::of(&secret, &key));
    assert!(digest.ct_eq(&KeyDigest::of(&secret, &key)));
    assert_ne!(digest, KeyDigest::of(&other_secret, &key));
    assert_ne!(digest, KeyDigest::of(&secret, &other_key));
    assert!(!digest.ct_eq(&KeyDigest::of(&secret, &other_key)));
}

#[test]
fn digest_is_domain_separated_hmac_sha256() {
    let secret = api_key_secret(b"0123456789abcdef0123456789abcdef");
    let key = ApiKey::parse(&fixed_keys()[2]).unwrap();
    // Computed with Python: hmac.new(secret, b"krouter-api-key-v1\0" + key, sha256).
    assert_eq!(
        KeyDigest::of(&secret, &key).to_hex(),
        "ef686d755c845a7b0460ce37ac7c9b618d4de72ffcc1b83d68a7f501975b50b5"
    );
    // The domain prefix is really there: a bare HMAC of the key differs.
    let bare = hmac::sign(
        &hmac::Key::new(hmac::HMAC_SHA256, secret.expose_secret()),
        key.expose_secret().as_bytes(),
    );
    assert_ne!(KeyDigest::of(&secret, &key).0.as_slice(), bare.as_ref());
}

#[test]
fn a_kept_digest_key_gives_the_same_digests_and_does_not_print() {
    let secret = api_key_secret(b"0123456789abcdef0123456789abcdef");
    let kept = DigestKey::new(&secret);
    for text in fixed_keys() {
        let key = ApiKey::parse(&text).unwrap();
        assert_eq!(kept.digest(&key), KeyDigest::of(&secret, &key));
    }
    assert_eq!(format!("{kept:?}"), "DigestKey(..)");
}

#[test]
fn digest_hex_round_trips_and_rejects_bad_input() {
    let secret = api_key_secret(b"0123456789abcdef0123456789abcdef");
    let digest = KeyDigest::of(&secret, &ApiKey::generate().unwrap());
    let hex = digest.to_hex();
    assert_eq!(hex.len(), 64);
    assert_eq!(KeyDigest::from_hex(&hex).unwrap(), digest);
    assert_eq!(KeyDigest::from_hex(&hex.to_uppercase()).unwrap(), digest);
    let bad = [
        String::new(),
        hex[..63].to_owned(),
        format!("{hex}0"),
        format!("{}g", &hex[..63]),
        format!("{}+1", &hex[..62]),
        format!("{}é", &hex[..62]),
        format!(" {}", &hex[..63]),
    ];
    for text in bad {
        assert_eq!(
            KeyDigest::from_hex(&text).unwrap_err(),
            ApiKeyError::BadDigest
        );
    }
}

#[test]
fn digest_debug_shows_only_a_prefix() {
    let digest = KeyDigest::from_hex(&"ab".repeat(32)).unwrap();
    assert_eq!(format!("{digest:?}"), "KeyDigest(abababab…)");
}

#[test]
fn fuzz_entry_point_accepts_anything() {
    fuzz_parse(b"");
    fuzz_parse(b"\xff\xfe");
    fuzz_parse(fixed_keys()[0].as_bytes());
    fuzz_parse("sk-krouter-ééééééééééééééé".as_bytes());
}

fn base62_string(len: usize) -> impl Strategy<Value = String> {
    proptest::collection::vec(proptest::sample::select(BASE62.as_bytes().to_vec()), len)
        .prop_map(|bytes| String::from_utf8(bytes).unwrap())
}

proptest! {
    #[test]
    fn parse_never_panics(text in any::<String>()) {
        let _outcome = ApiKey::parse(&text);
    }

    #[test]
    fn parse_never_panics_after_the_prefix(rest in any::<String>()) {
        let _outcome = ApiKey::parse(&format!("{API_KEY_PREFIX}{rest}"));
    }

    #[test]
    fn a_key_with_its_checksum_is_accepted(body in base62_string(BODY_LEN)) {
        let signed = format!("{API_KEY_PREFIX}{body}");
        let text = format!("{signed}{}", reference_checksum(&signed));
        let key = ApiKey::parse(&text).unwrap();
        prop_assert_eq!(key.expose_secret(), text.as_str());
    }

    #[test]
    fn parse_accepts_exactly_the_matching_checksum(
        body in base62_string(BODY_LEN),
        sum in base62_string(CHECKSUM_LEN),
    ) {
        let signed = format!("{API_KEY_PREFIX}{body}");
        let text = format!("{signed}{sum}");
        let matches = sum == reference_checksum(&signed);
        match ApiKey::parse(&text) {
            Ok(_) => prop_assert!(matches),
            Err(err) => {
                prop_assert!(!matches);
                prop_assert_eq!(err, ApiKeyError::BadChecksum);
            }
        }
    }
}
