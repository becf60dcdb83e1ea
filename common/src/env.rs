//! Reading configuration from the environment, with one-line errors that name the variable.

use std::fmt;
use std::str::FromStr;

/// A configuration error: printed as one line, and the process exits non-zero.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

/// Where settings come from: the process environment, or a map in tests.
pub struct Env<F> {
    lookup: F,
}

impl<F> fmt::Debug for Env<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Env")
    }
}

impl Env<fn(&str) -> Option<String>> {
    pub fn process() -> Self {
        Self {
            lookup: |name| std::env::var(name).ok(),
        }
    }
}

impl<F: Fn(&str) -> Option<String>> Env<F> {
    pub fn from_lookup(lookup: F) -> Self {
        Self { lookup }
    }

    /// The variable's value; an empty value counts as unset, as it does for most tools.
    pub fn get(&self, name: &str) -> Option<String> {
        (self.lookup)(name).filter(|value| !value.trim().is_empty())
    }

    /// The variable parsed as `T`, or `default` when it is unset.
    pub fn parse_or<T: FromStr>(&self, name: &str, default: T) -> Result<T, ConfigError> {
        match self.get(name) {
            None => Ok(default),
            Some(raw) => raw.trim().parse().map_err(|_| {
                ConfigError(format!(
                    "{name}={raw:?} is not a valid {}",
                    type_label::<T>()
                ))
            }),
        }
    }
}

fn type_label<T>() -> &'static str {
    let full = std::any::type_name::<T>();
    match full {
        "bool" => "boolean (true or false)",
        "u16" | "u32" | "u64" | "usize" => "whole number",
        _ => full.rsplit("::").next().unwrap_or(full),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_defaults_and_names_the_variable_on_error() {
        let env = Env::from_lookup(|name| match name {
            "PORT" => Some("80x".to_owned()),
            "EMPTY" => Some("  ".to_owned()),
            "GOOD" => Some("42".to_owned()),
            _ => None,
        });
        assert_eq!(env.parse_or("UNSET", 7u16), Ok(7));
        assert_eq!(env.parse_or("EMPTY", 7u16), Ok(7));
        assert_eq!(env.parse_or("GOOD", 7u16), Ok(42));
        let error = env.parse_or("PORT", 5000u16).unwrap_err();
        assert_eq!(
            error.to_string(),
            r#"PORT="80x" is not a valid whole number"#
        );
    }
}
