//! Input rules every store applies first: keys and holders of 1 to [`MAX_KEY_LEN`] bytes.
//!
//! A store calls [`validate`] (or [`validate_key`] for operations without a holder) before
//! anything else, so every store refuses the same input with the same message.

use crate::StoreError;

/// The longest key or holder, in bytes, that every store accepts.
pub const MAX_KEY_LEN: usize = 1024;

/// Checks a key and a holder against the contract's input rules: each is 1 to [`MAX_KEY_LEN`]
/// bytes. Any byte is allowed otherwise, including `/`, `{`, `}`, `:`, `%`, quotes, NUL and
/// non-ASCII characters.
///
/// # Errors
///
/// [`StoreErrorKind::InvalidInput`](crate::StoreErrorKind::InvalidInput) naming what is wrong.
pub fn validate(store: &'static str, key: &str, holder: &str) -> Result<(), StoreError> {
    validate_one(store, "key", key)?;
    validate_one(store, "holder", holder)
}

/// Checks a key alone against the contract's input rules (as [`validate`] does), for the
/// operations that take no holder (`inspect` and `break_lock` of
/// [`LeaseStore`](crate::LeaseStore)).
///
/// # Errors
///
/// [`StoreErrorKind::InvalidInput`](crate::StoreErrorKind::InvalidInput) naming what is wrong.
pub fn validate_key(store: &'static str, key: &str) -> Result<(), StoreError> {
    validate_one(store, "key", key)
}

fn validate_one(store: &'static str, what: &str, value: &str) -> Result<(), StoreError> {
    if value.is_empty() {
        return Err(StoreError::invalid_input(store, format!("{what} is empty")));
    }
    if value.len() > MAX_KEY_LEN {
        return Err(StoreError::invalid_input(
            store,
            format!(
                "{what} is {} bytes long, the limit is {MAX_KEY_LEN}",
                value.len()
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validate_names_what_is_wrong() {
        let e = validate("t", "", "h").unwrap_err();
        assert!(e.to_string().contains("key is empty"), "{e}");
        let long = "k".repeat(MAX_KEY_LEN + 1);
        let e = validate("t", "k", &long).unwrap_err();
        assert!(e.to_string().contains("holder is 1025 bytes"), "{e}");
        validate("t", &"k".repeat(MAX_KEY_LEN), "\0{}:%\"' é").unwrap();
    }
}
