//! One helper for the whole crate: an error and its `#[source]` chain on one log line.

/// `e` and its sources joined with ": ", for a one-line message.
pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot load config")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn every_source_is_joined_after_the_error() {
        let e = Outer(std::io::Error::other("disk gone"));
        assert_eq!(error_chain(&e), "cannot load config: disk gone");
    }
}
