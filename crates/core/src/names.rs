//! Names that arrive from outside and end up in paths and command lines: what each may
//! hold, checked in one place for every layer that takes them.

/// One component of a ref or stateroot name: `[A-Za-z0-9_][A-Za-z0-9._-]*`, not ending
/// in `.lock`; so never `..`, empty, or a path.
pub fn valid_component(c: &str) -> bool {
    let mut chars = c.chars();
    matches!(chars.next(), Some(ch) if ch.is_ascii_alphanumeric() || ch == '_')
        && chars.all(|ch| ch.is_ascii_alphanumeric() || "._-".contains(ch))
        && !c.ends_with(".lock")
}

/// Debian policy §5.6.1: lower case letters, digits, `+ - .`, at least two long,
/// starting with an alphanumeric.
pub fn valid_package(name: &str) -> bool {
    let b = name.as_bytes();
    b.len() >= 2
        && b[0].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"+-.".contains(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["a", "x86_64", "a_b-c.d", "_x"] {
            assert!(valid_component(ok), "{ok}");
        }
        for bad in ["", "..", ".hidden", "a b", "x.lock", "a/b", "-x"] {
            assert!(!valid_component(bad), "{bad}");
        }
        assert!(valid_package("libc6") && valid_package("g++"));
        assert!(!valid_package("A") && !valid_package("x") && !valid_package("../x"));
    }
}
