//! Topic names: the documented charset and length, checked once where a name enters the server.

/// Longest topic name, in bytes.
pub const MAX_TOPIC_LEN: usize = 128;

/// Why a topic name was refused (answered 400 before an upgrade, or an error reply on `/ws`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    /// Empty, or longer than [`MAX_TOPIC_LEN`] bytes.
    #[error("topic names are 1 to 128 bytes long")]
    Length,
    /// A byte outside `[A-Za-z0-9._:-]`.
    #[error("topic names may only contain A-Z a-z 0-9 . _ : -")]
    Charset,
}

/// Checks a topic name: 1..=128 bytes of `[A-Za-z0-9._:-]`.
pub fn validate(name: &str) -> Result<&str, TopicError> {
    if name.is_empty() || name.len() > MAX_TOPIC_LEN {
        return Err(TopicError::Length);
    }
    if !name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-')) {
        return Err(TopicError::Charset);
    }
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_documented_charset() {
        assert_eq!(validate("news.eu-west_1:prices"), Ok("news.eu-west_1:prices"));
        assert_eq!(validate(&"a".repeat(128)).map(str::len), Ok(128));
    }

    #[test]
    fn refuses_empty_long_and_foreign_names() {
        assert_eq!(validate(""), Err(TopicError::Length));
        assert_eq!(validate(&"a".repeat(129)), Err(TopicError::Length));
        for bad in ["a/b", "a b", "caf\u{e9}", "a%20", "*", "a\0"] {
            assert_eq!(validate(bad), Err(TopicError::Charset), "{bad:?}");
        }
    }
}
