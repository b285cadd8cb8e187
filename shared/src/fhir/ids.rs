//! The one definition of the names a request may carry: FHIR logical ids and
//! `_container` folder names.

/// True if `value` is a valid `_container` name.
pub fn is_container_name(value: &str) -> bool {
    let b = value.as_bytes();
    let inner_ok = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-';
    let edge_ok = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    (3..=63).contains(&b.len())
        && b.first().is_some_and(edge_ok)
        && b.last().is_some_and(edge_ok)
        && b.iter().all(inner_ok)
}

/// True if `value` is a valid FHIR logical id.
pub fn is_fhir_id(value: &str) -> bool {
    // `..` matches the FHIR id pattern but is a path segment to any HTTP
    // server: ids made only of dots or containing `..` are refused.
    (1..=64).contains(&value.len())
        && value
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'.')
        && !value.contains("..")
        && value != "."
}
