//! An error as the command line shows it: the library names options in its vocabulary, in
//! backticks (`` `batch_size` ``, see [`glowflow::error`]); here each becomes the flag that sets
//! it (`--batch-size`), or the alias the user typed (`--batch`). [`install`] makes the library's
//! own notes and warnings name flags the same way.

use std::ffi::OsString;

use clap::{Arg, Command, CommandFactory};

use super::Cli;

/// Options of the library whose flag has another name on some command: a vector model's
/// `context` width comes from `--context-columns`, its `features` from `--columns`.
const SYNONYMS: &[(&str, &str)] = &[("context", "context_columns"), ("features", "columns")];

/// Name options by their flags in everything the library writes in this process.
pub fn install(argv: &[OsString]) {
    let argv = strings(argv);
    glowflow::error::set_option_namer(move |option| {
        let root = Cli::command();
        let sub = subcommand(&root, &argv);
        flag_of(&root, sub, option, &argv)
    });
}

/// `e` with its causes, `: `-separated (as `{:#}` shows it), every backticked option name of
/// the command line's vocabulary written as its flag, and a flag the user typed by an alias
/// (`--batch`) named by that alias where the parser named it by its long name.
pub fn render(e: &anyhow::Error, argv: &[OsString]) -> String {
    let argv = strings(argv);
    let root = Cli::command();
    let sub = subcommand(&root, &argv);
    let flag = |option: &str| flag_of(&root, sub, option, &argv);
    let text = e
        .chain()
        .map(|cause| glowflow::error::with_option_names(&cause.to_string(), &flag))
        .collect::<Vec<_>>()
        .join(": ");
    let Some(sub) = sub else { return text };
    sub.get_arguments().fold(text, |text, arg| {
        match (arg.get_long(), typed_alias(arg, &argv)) {
            (Some(long), Some(alias)) => replace_flag(&text, long, alias),
            _ => text,
        }
    })
}

fn strings(argv: &[OsString]) -> Vec<String> {
    argv.iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect()
}

/// The command named on the command line (the first argument that names one).
fn subcommand<'a>(root: &'a Command, argv: &[String]) -> Option<&'a Command> {
    argv.iter().skip(1).find_map(|a| root.find_subcommand(a))
}

/// The alias of `arg` the user typed (`--batch` or `--batch=...`), if any.
fn typed_alias<'a>(arg: &'a Arg, argv: &[String]) -> Option<&'a str> {
    arg.get_all_aliases().into_iter().flatten().find(|alias| {
        let long = format!("--{alias}");
        argv.iter()
            .any(|a| *a == long || a.starts_with(&format!("{long}=")))
    })
}

/// `text` with the flag `--long` (not a longer flag it starts) written as `--alias`.
fn replace_flag(text: &str, long: &str, alias: &str) -> String {
    let (from, to) = (format!("--{long}"), format!("--{alias}"));
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find(&from) {
        let after = rest[i + from.len()..].chars().next();
        out.push_str(&rest[..i]);
        if after.is_some_and(|c| c == '-' || c == '_' || c.is_ascii_alphanumeric()) {
            out.push_str(&from);
        } else {
            out.push_str(&to);
        }
        rest = &rest[i + from.len()..];
    }
    out.push_str(rest);
    out
}

/// The flag of `option`: an argument of the command `sub` with that id (or its synonym's),
/// else of any command; as the user typed it when they gave one of its aliases.
fn flag_of(root: &Command, sub: Option<&Command>, option: &str, argv: &[String]) -> Option<String> {
    let find = |cmd: &Command, id: &str| -> Option<Arg> {
        cmd.get_arguments()
            .find(|a| a.get_id() == id && a.get_long().is_some())
            .cloned()
    };
    let synonym = SYNONYMS.iter().find(|(o, _)| *o == option).map(|(_, s)| *s);
    let arg = sub
        .and_then(|s| find(s, option).or_else(|| synonym.and_then(|id| find(s, id))))
        .or_else(|| root.get_subcommands().find_map(|s| find(s, option)))?;
    let name = typed_alias(&arg, argv).or(arg.get_long())?;
    Some(format!("--{name}"))
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_become_the_flags_typed() {
        let e = anyhow::Error::new(glowflow::error::InputError::option(
            "batch_size",
            0,
            "must be at least 1",
        ))
        .context("`flow_steps` and `batch_size` too large; see `state.json`");
        let argv = |v: &[&str]| v.iter().map(OsString::from).collect::<Vec<_>>();
        assert_eq!(
            render(&e, &argv(&["glowflow", "train2d", "--batch", "0"])),
            "--flow-steps and --batch too large; see `state.json`: --batch 0: must be at least 1"
        );
        assert_eq!(
            render(&e, &argv(&["glowflow", "train2d", "--layers=3", "--batch-size", "0"])),
            "--layers and --batch-size too large; see `state.json`: --batch-size 0: must be at least 1"
        );
        // The image command's alias of `net_width` is `--width`, the vector command's `--hidden`.
        let w = anyhow::anyhow!("`net_width` 0: must be at least 1");
        assert_eq!(
            render(&w, &argv(&["glowflow", "train", "--width", "0"])),
            "--width 0: must be at least 1"
        );
        assert_eq!(
            render(&w, &argv(&["glowflow", "train2d", "--hidden", "0"])),
            "--hidden 0: must be at least 1"
        );
        // The parser names a flag by its long name; the user reads the alias they typed.
        let usage = anyhow::anyhow!(
            "invalid value '-1' for '--steps-per-level <STEPS_PER_LEVEL>' (not --steps-per-level-x)"
        );
        assert_eq!(
            render(&usage, &argv(&["glowflow", "train", "--depth", "-1"])),
            "invalid value '-1' for '--depth <STEPS_PER_LEVEL>' (not --steps-per-level-x)"
        );
    }
}
