//! One-line rendering of an error and its causes, for log lines and messages where only
//! one string fits.

use std::fmt;

/// Shows an error followed by its causes (`error: cause: cause`).
pub struct ErrorChain<'a>(pub &'a (dyn std::error::Error + 'a));

impl fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut cause = self.0.source();
        while let Some(c) = cause {
            write!(f, ": {c}")?;
            cause = c.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("failed to upload x")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn shows_every_cause_after_the_error() {
        let err = Outer(std::io::Error::other("connection reset"));
        assert_eq!(
            ErrorChain(&err).to_string(),
            "failed to upload x: connection reset"
        );
    }
}
