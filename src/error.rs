//! The errors a user can act on: a bad flag, a bad file (with its row or field), an interrupted
//! run, a model whose result is non-finite. Everything else is an internal failure. The command
//! line maps them to exit codes ([`exit_code`]): 2 for bad input, 3 for a non-finite result
//! that was asked to be whole, 130 for an interrupted run, 1 otherwise.

use std::path::PathBuf;

/// Input that glowflow refuses before (or instead of) using it, naming where it came from.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    /// A command-line flag: `flag` as typed (`--batch`), the value given, and what is wrong.
    #[error("{flag}{}: {reason}", if value.is_empty() { String::new() } else { format!(" {value}") })]
    Flag {
        /// The flag as typed, with its dashes (`--batch`).
        flag: String,
        /// The value given; empty when none, and then the message omits it.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A command-line usage error reported by the parser (it names the flag itself).
    #[error("{0}")]
    Usage(String),
    /// A file: its path, where in it (`row 12`, `field model.levels`, `header`), and what is
    /// wrong.
    #[error("{}{}: {reason}", path.display(), at.as_ref().map(|a| format!(" ({a})")).unwrap_or_default())]
    File {
        /// The file.
        path: PathBuf,
        /// Where in it (`row 12`, `field model.levels`, `header`); `None`: the whole file.
        at: Option<String>,
        /// What is wrong.
        reason: String,
    },
}

impl InputError {
    /// A flag error: `flag` (as typed, with its dashes), the value given, what is wrong.
    pub fn flag(flag: &str, value: impl std::fmt::Display, reason: impl Into<String>) -> Self {
        InputError::Flag {
            flag: flag.into(),
            value: value.to_string(),
            reason: reason.into(),
        }
    }

    /// A file error at `at` (a row, a field) or the whole file.
    pub fn file(path: impl Into<PathBuf>, at: Option<String>, reason: impl Into<String>) -> Self {
        InputError::File {
            path: path.into(),
            at,
            reason: reason.into(),
        }
    }
}

/// A configuration value that is out of its range, named both by its field (in `state.json`)
/// and by the flag that sets it, so the caller can blame whichever the value came from.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldError {
    /// The field in the saved configuration (`levels`, `hidden`, ...).
    pub field: &'static str,
    /// The command-line flag that sets it (`--levels`, `--width`, ...).
    pub flag: &'static str,
    /// The value given, as displayed.
    pub value: String,
    /// What is wrong with it (`must be at most 12`).
    pub reason: String,
}

impl FieldError {
    /// The error for the value `value` of `field` (set by `flag`), with what is wrong.
    pub fn new(
        field: &'static str,
        flag: &'static str,
        value: impl std::fmt::Display,
        reason: impl Into<String>,
    ) -> Self {
        FieldError {
            field,
            flag,
            value: value.to_string(),
            reason: reason.into(),
        }
    }

    /// As a flag error (the value came from the command line).
    pub fn on_flag(self) -> InputError {
        InputError::flag(self.flag, self.value, self.reason)
    }

    /// As an error in the file `path` (the value came from a saved configuration), under the
    /// section `section` of it (`model`, `options`).
    pub fn in_file(self, path: impl Into<PathBuf>, section: &str) -> InputError {
        InputError::file(
            path,
            Some(format!("field {section}.{} = {}", self.field, self.value)),
            self.reason,
        )
    }
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.flag, self.value, self.reason)
    }
}

impl std::error::Error for FieldError {}

/// A run stopped by SIGINT (Ctrl-C) or SIGTERM after finishing its step and saving.
#[derive(Debug, thiserror::Error)]
#[error("interrupted by {signal} after step {step}; {saved}")]
pub struct Interrupted {
    /// The signal as the message names it (the trainer reports `SIGINT/SIGTERM`).
    pub signal: &'static str,
    /// The step after which the run stopped and saved.
    pub step: usize,
    /// What was saved, and how to continue.
    pub saved: String,
}

/// A result the model computed from valid input holds non-finite values where the command
/// cannot leave them out (`sample --strict`, an edit whose every image is needed): what, how
/// many, and the first layer where one appeared. Exit code 3.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct NonFinite(pub String);

/// The process exit code for an error: 2 for input the user must fix ([`InputError`],
/// [`FieldError`]), 3 for a non-finite model result ([`NonFinite`]), 130 for an interrupted
/// run ([`Interrupted`]), 1 for anything else.
pub fn exit_code(e: &anyhow::Error) -> i32 {
    for cause in e.chain() {
        if cause.is::<InputError>() || cause.is::<FieldError>() {
            return 2;
        }
        if cause.is::<NonFinite>() {
            return 3;
        }
        if cause.is::<Interrupted>() {
            return 130;
        }
    }
    1
}
