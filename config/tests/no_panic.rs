//! Whatever the file holds, parsing returns a config or errors: it never panics.

use nodemesh_config::Config;
use proptest::prelude::*;

const EXAMPLE: &str = include_str!("../examples/standalone.yaml");

proptest! {
    #[test]
    fn arbitrary_text_never_panics(text in "[-a-zA-Z0-9 :{}\\[\\],./\"'\n#&*!|>~]{0,200}") {
        let _ = Config::from_yaml_str(&text, "/");
    }

    /// The example with one line dropped and another duplicated: still no panic, and when it is
    /// valid it round-trips.
    #[test]
    fn mangled_example_never_panics(drop in 0usize..120, dup in 0usize..120) {
        let lines: Vec<&str> = EXAMPLE.lines().collect();
        let mut mangled = Vec::new();
        for (i, line) in lines.iter().enumerate() {
            if i != drop % lines.len() {
                mangled.push(*line);
            }
            if i == dup % lines.len() {
                mangled.push(*line);
            }
        }
        if let Ok(config) = Config::from_yaml_str(&mangled.join("\n"), "/") {
            let yaml = config.to_yaml().map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(Config::from_yaml_str(&yaml, "/").ok(), Some(config));
        }
    }
}
