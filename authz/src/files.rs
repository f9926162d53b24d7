//! What a bundle is made of, and what can be wrong with it: the types every compile step
//! shares (reading sources, folding, checking builtins and input use, aligning with OPA),
//! kept apart from [`crate::bundle`], which runs those steps.

use std::fmt;
use std::path::Path;

/// One file of a bundle: a Rego module or a JSON/YAML data document.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyFile {
    /// Path relative to the bundle root, with `/` separators.
    pub path: String,
    /// The file's text.
    pub contents: String,
}

/// One compile problem, displayed as `file:line:col: message`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompileProblem {
    /// The file, relative to the bundle root.
    pub file: String,
    /// 1-based line (0 when regorus gave no location).
    pub line: u32,
    /// 1-based column (0 when regorus gave no location).
    pub column: u32,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for CompileProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file, self.line, self.column, self.message
        )
    }
}

/// Why a bundle could not be read, compiled or run by the CLI helpers.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// A file or directory could not be read (or CLI output could not be written).
    #[error("{path}: {source}")]
    Io {
        /// The path involved.
        path: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A module does not parse or compile.
    #[error("{file}:{line}:{column}: {message}")]
    Compile {
        /// The file, relative to the bundle root.
        file: String,
        /// 1-based line.
        line: u32,
        /// 1-based column.
        column: u32,
        /// What is wrong.
        message: String,
    },
    /// Several modules do not parse; one problem per line.
    #[error("{}", join_lines(.0))]
    Problems(Vec<CompileProblem>),
    /// No module defines the decision rule.
    #[error("rule {0} is not defined by any module in the bundle")]
    MissingRule(String),
    /// A data file does not parse or conflicts with other data or rules.
    #[error("{file}: {message}")]
    Data {
        /// The data file, relative to the bundle root.
        file: String,
        /// What is wrong.
        message: String,
    },
    /// Input given to a CLI helper is invalid (bad JSON, bad header name).
    #[error("invalid input: {0}")]
    Input(String),
}

fn join_lines(problems: &[CompileProblem]) -> String {
    problems
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

impl BundleError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        BundleError::Io {
            path: path.display().to_string(),
            source,
        }
    }

    pub(crate) fn output(source: std::io::Error) -> Self {
        BundleError::Io {
            path: "<output>".to_string(),
            source,
        }
    }

    pub(crate) fn from_problems(mut problems: Vec<CompileProblem>) -> Self {
        if problems.len() == 1 {
            let p = problems.remove(0);
            BundleError::Compile {
                file: p.file,
                line: p.line,
                column: p.column,
                message: p.message,
            }
        } else {
            BundleError::Problems(problems)
        }
    }

    /// Every problem as `file:line:col: message` entries (empty for non-compile errors).
    pub fn problems(&self) -> Vec<CompileProblem> {
        match self {
            BundleError::Compile {
                file,
                line,
                column,
                message,
            } => vec![CompileProblem {
                file: file.clone(),
                line: *line,
                column: *column,
                message: message.clone(),
            }],
            BundleError::Problems(p) => p.clone(),
            _ => Vec::new(),
        }
    }
}
