//! The errors a user can act on: a bad option, a bad file (with its row or field), an interrupted
//! run, a model whose result is non-finite. Everything else is an internal failure. The command
//! line maps them to exit codes ([`exit_code`]): 2 for bad input, 3 for a non-finite result
//! that was asked to be whole, 130 for an interrupted run, 1 otherwise.
//!
//! # Options, not flags
//! The library names a setting by its option name, the one vocabulary of config fields,
//! `state.json` keys, [`crate::train::FitOptions`] fields and the Python keyword arguments
//! (`batch_size`, `flow_steps`, `net_width`, ...), written in backticks inside free text
//! (`` use fewer columns (`columns`) or `flow_steps` ``). The command line shows each as the
//! flag that sets it (`--batch-size`, or the alias the user typed); no library message spells a
//! flag.

use std::path::PathBuf;
use std::sync::OnceLock;

/// How a front end names an option: `Some(name)` for the options it knows (the command line:
/// the flag, `--batch-size`), `None` to keep the backticked option name.
type OptionNamer = Box<dyn Fn(&str) -> Option<String> + Send + Sync>;

static OPTION_NAMER: OnceLock<OptionNamer> = OnceLock::new();

/// Set, once per process, how text the library writes itself (notes and warnings on stderr,
/// `summary.json`'s `warnings`) names options; a later call is ignored. Without it the text
/// keeps the backticked option names (`` `dequantize` ``). The command line sets its flags.
pub fn set_option_namer(namer: impl Fn(&str) -> Option<String> + Send + Sync + 'static) {
    let _ = OPTION_NAMER.set(Box::new(namer));
}

/// `text` with each backticked option name written as the process's front end names it
/// ([`set_option_namer`]); unchanged when none is set.
pub fn name_options(text: &str) -> String {
    match OPTION_NAMER.get() {
        Some(namer) => with_option_names(text, namer),
        None => text.to_string(),
    }
}

/// `text` with each `` `name` `` (lower-case letters, digits and `_`) that `namer` knows
/// replaced by its name there; other backticked text (file names, code) is kept as written.
pub fn with_option_names(text: &str, namer: &dyn Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(open) = rest.find('`') {
        let Some(len) = rest[open + 1..].find('`') else {
            break;
        };
        let name = &rest[open + 1..open + 1 + len];
        out.push_str(&rest[..open]);
        let is_option = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        match is_option.then(|| namer(name)).flatten() {
            Some(n) => out.push_str(&n),
            None => out.push_str(&rest[open..open + len + 2]),
        }
        rest = &rest[open + len + 2..];
    }
    out.push_str(rest);
    out
}

/// Print `warning: TEXT` on stderr with the options named by the front end, and return that
/// text (for a summary's `warnings`).
pub fn warn(text: &str) -> String {
    let named = name_options(text);
    eprintln!("warning: {named}");
    named
}

/// Input that glowflow refuses before (or instead of) using it, naming where it came from.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    /// An option (a setting of a model, a fit or a command): its name in the library's
    /// vocabulary (`batch_size`), the value given, and what is wrong. Shown as
    /// `` `batch_size` 0: must be at least 1 ``; the command line shows the flag instead.
    #[error("`{option}`{}: {reason}", if value.is_empty() { String::new() } else { format!(" {value}") })]
    Option {
        /// The option's name (`batch_size`, `data`, `context_columns`).
        option: String,
        /// The value given; empty when none, and then the message omits it.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
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
    /// An option error: `option` (its name in the library's vocabulary, no dashes), the value
    /// given, what is wrong.
    pub fn option(option: &str, value: impl std::fmt::Display, reason: impl Into<String>) -> Self {
        InputError::Option {
            option: option.into(),
            value: value.to_string(),
            reason: reason.into(),
        }
    }

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
/// and by the option that sets it, so the caller can blame whichever the value came from.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldError {
    /// The field in the saved configuration (`levels`, `net_width`, ...).
    pub field: &'static str,
    /// The option that sets it (`levels`, `pad` for an image's height, ...): usually the
    /// field's own name.
    pub option: &'static str,
    /// The value given, as displayed.
    pub value: String,
    /// What is wrong with it (`must be at most 12`).
    pub reason: String,
}

impl FieldError {
    /// The error for the value `value` of `field` (set by `option`), with what is wrong.
    pub fn new(
        field: &'static str,
        option: &'static str,
        value: impl std::fmt::Display,
        reason: impl Into<String>,
    ) -> Self {
        FieldError {
            field,
            option,
            value: value.to_string(),
            reason: reason.into(),
        }
    }

    /// As an option error (the value came from the caller: a fit's options, a flag).
    pub fn on_option(self) -> InputError {
        InputError::option(self.option, self.value, self.reason)
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
        write!(f, "`{}` {}: {}", self.option, self.value, self.reason)
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
