//! Arbitrary text as a standalone config: parsing and validation must never panic, and a config
//! that loads must round-trip through its YAML form.

#![no_main]

use libfuzzer_sys::fuzz_target;
use nodemesh_config::Config;

fuzz_target!(|text: &str| {
    if let Ok(config) = Config::from_yaml_str(text, "/") {
        let yaml = config.to_yaml().expect("a valid config serializes");
        let again = Config::from_yaml_str(&yaml, "/").expect("its YAML loads again");
        assert_eq!(again, config);
    }
});
