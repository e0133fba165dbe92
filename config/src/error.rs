//! Errors: each names the path of the offending value, and all of a file's errors travel together.

use std::fmt;
use std::path::PathBuf;

/// One mistake in a standalone config, at the path of the offending value.
///
/// Displays as `path: reason`, e.g. `workloads[3].node: no node "node-z"`. An error about the
/// document as a whole (a YAML syntax error, a root that is not a mapping) has an empty path and
/// displays as its reason alone.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    /// Where the mistake is: `nodes[0].address`, `namespaces[1].labels["app"]`, or empty for the
    /// whole document.
    pub path: String,
    /// What is wrong there.
    pub reason: String,
}

impl ConfigError {
    /// An error at `path` (may be empty for the document itself).
    pub fn new(path: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            reason: reason.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.reason)
        } else {
            write!(f, "{}: {}", self.path, self.reason)
        }
    }
}

/// Every mistake found in one standalone config, in document order (never empty).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl ConfigErrors {
    /// The errors, in the order they were found.
    pub fn errors(&self) -> &[ConfigError] {
        &self.0
    }

    /// How many errors there are.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none (a `ConfigErrors` returned by this crate never is).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for ConfigErrors {
    /// One error a line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl IntoIterator for ConfigErrors {
    type Item = ConfigError;
    type IntoIter = std::vec::IntoIter<ConfigError>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

/// Why a standalone config file could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    /// The file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        /// The file we tried to read.
        path: PathBuf,
        /// What the operating system said.
        #[source]
        source: std::io::Error,
    },
    /// The file was read but is not a valid config.
    #[error("{} is not a valid nodemesh config:\n{errors}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Everything wrong with it.
        errors: ConfigErrors,
    },
}

impl LoadError {
    /// Every problem as one line without the file name, as `nodemesh config check` prints them
    /// after it: each `path: reason` of an invalid file, or `cannot read: <cause>`.
    pub fn lines(&self) -> Vec<String> {
        match self {
            LoadError::Io { source, .. } => vec![format!("cannot read: {source}")],
            LoadError::Invalid { errors, .. } => {
                errors.errors().iter().map(ToString::to_string).collect()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_one_problem_each_without_the_file() {
        let invalid = LoadError::Invalid {
            path: "c.yaml".into(),
            errors: ConfigErrors(vec![
                ConfigError::new("workloads[0].node", "no node \"z\""),
                ConfigError::new("", "not a mapping"),
            ]),
        };
        assert_eq!(
            invalid.lines(),
            ["workloads[0].node: no node \"z\"", "not a mapping"]
        );
        let io = LoadError::Io {
            path: "c.yaml".into(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "gone"),
        };
        assert_eq!(io.lines(), ["cannot read: gone"]);
    }
}
